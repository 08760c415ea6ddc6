// placeholder: forward_cpu (being written)
