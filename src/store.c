// placeholder: store (being written)
