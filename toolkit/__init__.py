"""Edge-deployment toolkit for EfficientSAM3 (RepViT-M0.9 image encoder + MobileCLIP-S1 text encoder)."""

__version__ = "0.1.0"
