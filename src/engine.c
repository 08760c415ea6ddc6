// placeholder: engine (being written)
