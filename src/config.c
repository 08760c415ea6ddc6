// placeholder: config (being written)
