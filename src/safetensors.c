// placeholder: safetensors (being written)
