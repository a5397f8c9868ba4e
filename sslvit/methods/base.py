"""What every pretraining method provides to the training loop."""

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sslvit.data.views import train_transform
from sslvit.methods.registry import method_class
from sslvit.train.optim import param_groups


def check_limits(section: str, config, limits) -> None:
    """Fail on the first `(field, ok, rule)` whose `ok` is False, naming `section.field`, its
    value and the rule (a config's `check()` lists its limits; run before any work)."""
    for name, ok, rule in limits:
        if not ok:
            raise ValueError(f"{section}.{name} = {getattr(config, name)}: must be {rule}")


class CheckedConfig:
    """Base of a method's config dataclass: `limits()` lists `(field, ok, rule)` for its fields
    with a range, and `check()` fails on the first one broken, before any work."""

    def limits(self) -> list:
        return []

    def check(self) -> None:
        check_limits("method", self, self.limits())


def pool_limit(config) -> tuple:
    """The `pool` field: the feature the probes and exports read."""
    return ("pool", config.pool in ("cls", "mean"), "cls or mean")


def scale_limit(config, name: str) -> tuple:
    """A (low, high) area-scale field inside (0, 1], such as a crop scale."""
    pair = tuple(getattr(config, name))
    ok = len(pair) == 2 and 0 < pair[0] <= pair[1] <= 1
    return (name, ok, "[low, high], 0 < low <= high <= 1")


def aspect_limit(config, name: str) -> tuple:
    """A (low, high) aspect-ratio field, such as a block mask's."""
    pair = tuple(getattr(config, name))
    ok = len(pair) == 2 and 0 < pair[0] <= pair[1] < math.inf
    return (name, ok, "[low, high], 0 < low <= high")


class Method(nn.Module):
    """A pretraining method: owns its encoder (and decoder, heads, teacher) and its loss.

    Subclasses set `config_class` (a dataclass with a `name` field), `pool` (the feature
    pooling recommended for evaluating the encoder), and implement `forward`.

    Attributes:
        encoder: The ViT whose weights are the product of pretraining.
    """

    name: str = ""
    config_class: type = None
    pool: str = "cls"
    # True: views keep invalid (no-data) pixels as NaN and the method leaves them out itself
    # (MAE's loss); False: they arrive as the band's mean, 0 after normalisation
    keeps_invalid_pixels: bool = False

    def __init__(self, config, encoder: VisionTransformer):
        super().__init__()
        self.config = config
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """One batch of views to a scalar loss and a few named numbers to log.

        Args:
            images: Normalised views `[B, C, H, W]`, or a list of such batches for methods
                whose `views_transform` returns several views per image.

        Returns:
            `(loss, logs)`; `logs` maps names to floats (the loss itself is logged by the loop).
        """
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Names (or name suffixes) of parameters that take no weight decay besides 1-D ones."""
        return {"pos_embed", "cls_token", "mask_token", "group_embed", "decoder_group_embed"}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The optimiser's parameter groups: decayed and not (see `param_groups`); a method
        whose parts train on another schedule splits them further."""
        return param_groups(self, weight_decay, self.no_weight_decay())

    def start_step(
        self, step: int, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0
    ) -> None:
        """Called before the forward passes of each optimiser step (per-step schedules such
        as a teacher temperature read their position here; `warmup_steps` is the length of the
        learning-rate warm-up)."""

    def adjust_gradients(self, step: int) -> None:
        """Called after the backward passes of a step, before clipping and the optimiser
        (DINO drops its last layer's gradients during the first epoch here)."""

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimiser step (momentum teachers update here)."""

    def views_transform(self, data_config, mean: list[float], std: list[float]):
        """The augmentation that turns one image `[C, H, W]` into this method's input."""
        return train_transform(
            data_config.img_size, mean, std, scale=data_config.crop_scale, hflip=data_config.hflip
        )


def build_method(config, encoder: VisionTransformer) -> Method:
    """Instantiate the method named by `config.name` around `encoder`."""
    return method_class(config.name)(config, encoder)
