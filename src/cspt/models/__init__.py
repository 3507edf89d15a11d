"""Models: the ViT encoder and the masked autoencoder built on it."""

from cspt.models.mae import MaskedAutoencoderViT, Reconstruction
from cspt.models.vit import VIT_PRESETS, ArchConfig

__all__ = ["ArchConfig", "MaskedAutoencoderViT", "Reconstruction", "VIT_PRESETS"]
