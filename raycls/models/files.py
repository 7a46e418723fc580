"""The files of a model directory (what `save_model` writes and `load_model`, classify and the
sweep export read). No torch import: drivers that only look at the files use these names."""

CONFIG_FILE = "config.json"  # written last: its presence marks a complete model
WEIGHTS_FILE = "model.safetensors"
TEXT_DIR = "text_encoder"  # the text encoder's Hugging Face config and tokenizer, if any
