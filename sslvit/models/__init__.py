"""Vision Transformer encoders, position embeddings and encoder files."""

from sslvit.models.io import EncoderInfo, load_encoder, save_encoder
from sslvit.models.vit import MODELS, create_vit, patch_grid, pooled_features

__all__ = [
    "MODELS",
    "EncoderInfo",
    "create_vit",
    "load_encoder",
    "patch_grid",
    "pooled_features",
    "save_encoder",
]
