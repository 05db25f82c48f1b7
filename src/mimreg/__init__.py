"""mimreg: self-supervised ViT pretraining with representation regularizers."""

__version__ = "0.1.0"
