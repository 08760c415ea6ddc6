// placeholder: backend_nocuda (being written)
