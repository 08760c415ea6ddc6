// placeholder: dataset (being written)
