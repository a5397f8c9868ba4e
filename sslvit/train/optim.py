"""Optimiser parameter groups and the per-step schedules."""

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, no_decay_names: set[str]) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Norm weights, biases (every 1-D parameter) and parameters whose name ends with one of
    `no_decay_names` (position embeddings, class and mask tokens) take no weight decay.

    Returns:
        Two AdamW groups; each carries `base_weight_decay` so schedules can scale it.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if param.ndim <= 1 or leaf in no_decay_names:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "base_weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "base_weight_decay": 0.0},
    ]


def cosine_schedule(
    step: int, total_steps: int, warmup_steps: int, peak: float, final: float = 0.0
) -> float:
    """Linear warm-up from 0 to `peak`, then a half cosine from `peak` down to `final`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
