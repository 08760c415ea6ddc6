// placeholder: backend (being written)
