"""sslvit: self-supervised pretraining of Vision Transformers, and evaluation with few labels."""

__version__ = "0.1.0"
