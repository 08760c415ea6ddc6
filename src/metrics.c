// placeholder: metrics (being written)
