// placeholder: model (being written)
