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
        (no_decay if skips_weight_decay(name, param, no_decay_names) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "base_weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "base_weight_decay": 0.0},
    ]


def skips_weight_decay(name: str, param: torch.Tensor, no_decay_names: set[str]) -> bool:
    """Whether a parameter is exempt from weight decay: 1-D, or its last name part is listed."""
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in no_decay_names


def cosine_schedule(
    step: int, total_steps: int, warmup_steps: int, peak: float, final: float = 0.0
) -> float:
    """Linear warm-up from 0 to `peak`, then a half cosine from `peak` down to `final`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(
    optimizer: torch.optim.Optimizer, lr: float, held: float | None = None
) -> None:
    """Set every group's learning rate to `lr` times the group's `lr_scale` (default 1).

    A group marked `hold_lr` (SimSiam's predictor) takes `held` instead when it is given: the
    trainer passes the peak rate once warm-up is over, so that group never decays.
    """
    for group in optimizer.param_groups:
        rate = held if held is not None and group.get("hold_lr") else lr
        group["lr"] = rate * group.get("lr_scale", 1.0)


def layer_decay_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_names: set[str],
    layer_of,
    n_layers: int,
    layer_decay: float,
) -> list[dict]:
    """Parameter groups with layer-wise learning-rate decay (BEiT, Bao et al., 2022).

    A parameter in layer `l` (0 = input, `n_layers` = top) trains at `layer_decay ** (n_layers
    - l)` times the scheduled learning rate, so layers near the input move least. Weight decay
    follows `skips_weight_decay`, as in `param_groups`.

    Args:
        model: The network.
        weight_decay: Decay of the parameters that take it.
        no_decay_names: Last name parts exempt from decay (see `skips_weight_decay`).
        layer_of: Maps a parameter name to its layer, 0..n_layers.
        n_layers: Index of the top layer.
        layer_decay: Factor per layer, in (0, 1]; 1 gives every layer the same rate.

    Returns:
        One AdamW group per (layer, decayed or not) that has parameters; each carries
        `lr_scale` (read by `set_learning_rate`), `layer` and `base_weight_decay`.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer decay {layer_decay}: must lie in (0, 1]")
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_of(name)
        if not 0 <= layer <= n_layers:
            raise ValueError(f"parameter {name}: layer {layer} is outside 0..{n_layers}")
        decayed = not skips_weight_decay(name, param, no_decay_names)
        wd = weight_decay if decayed else 0.0
        group = groups.setdefault(
            (layer, decayed),
            {
                "params": [],
                "weight_decay": wd,
                "base_weight_decay": wd,
                "lr_scale": layer_decay ** (n_layers - layer),
                "layer": layer,
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]
