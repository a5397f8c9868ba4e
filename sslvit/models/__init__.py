"""Vision Transformer encoders, position embeddings and encoder files."""

from sslvit.models.io import EncoderInfo, load_encoder, save_encoder
from sslvit.models.vit import (
    MODELS,
    create_vit,
    patch_grid,
    pooled_features,
    select_attention_kernel,
)

__all__ = [
    "MODELS",
    "EncoderInfo",
    "create_vit",
    "load_encoder",
    "patch_grid",
    "pooled_features",
    "save_encoder",
    "select_attention_kernel",
]
