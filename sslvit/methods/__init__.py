"""Pretraining methods: one file each, registered by their command-line name."""

from sslvit.methods import (  # noqa: F401  (registers them)
    byol,
    dino,
    ibot,
    mae,
    maskfeat,
    mocov3,
    simclr,
    simsiam,
)
from sslvit.methods.base import Method, build_method
from sslvit.methods.registry import method_class, method_config_class, method_names, register

__all__ = [
    "Method",
    "build_method",
    "method_class",
    "method_config_class",
    "method_names",
    "register",
]
