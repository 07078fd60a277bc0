"""One module per DVC stage: load + validate config, call the flower_model library, write outs."""
