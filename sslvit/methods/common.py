"""Pieces shared by the view-matching methods: gathering across processes, the collapse
monitor, and the view configuration that every two-view method's config inherits."""

import logging
import math
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sslvit.data.views import MultiView, ViewAugment, augmented_view
from sslvit.methods.base import CheckedConfig, Method, pool_limit, scale_limit
from sslvit.methods.teacher import EMATeacher, cosine_momentum
from sslvit.models.vit import pooled_features

log = logging.getLogger("sslvit")


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Average `tensor` over processes in place (no-op in one process)."""
    _, size = world()
    if size > 1:
        dist.all_reduce(tensor)
        tensor /= size
    return tensor


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every process and keeps its own slice.

    With DDP averaging parameter gradients, this makes the gradient of the mean of the
    per-process losses equal to the gradient of the loss on the concatenated global batch.
    """

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        grad = torch.stack(grads)
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def gather(x: torch.Tensor, with_grad: bool) -> torch.Tensor:
    """Concatenate `x` `[n, ...]` from every process in rank order: `[world * n, ...]`.

    Args:
        x: This process's tensor; every process must pass the same shape.
        with_grad: Let gradients flow back to every process's `x` (SimCLR's negatives);
            without it the result is detached (MoCo's keys).
    """
    _, size = world()
    if size == 1:
        return x if with_grad else x.detach()
    if with_grad:
        return torch.cat(_GatherWithGrad.apply(x))
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def embedding_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of the L2-normalised embeddings.

    About 1/sqrt(d) for healthy d-dimensional embeddings spread over the sphere; near 0 when
    every input maps to the same point (the collapse measure of the SimSiam paper).
    """
    z = F.normalize(z.detach().float(), dim=1)
    return float(z.std(dim=0).mean())


class CollapseMonitor:
    """Watches `embedding_std` and warns in the log when it stays collapsed.

    The embedding counts as collapsed when the mean of its std over the last `patience` steps
    falls below `threshold / sqrt(d)`. Averaging over a window rather than counting consecutive
    steps keeps one noisy step of a collapsing run from hiding it. The warning goes to the log
    once, and again only after the embedding has recovered and collapsed anew.

    Args:
        name: What is watched, for the message ("projector output").
        threshold: Fraction of the healthy value 1/sqrt(d) below which it counts as collapsed
            (0 logs the std and never warns).
        patience: Steps in the window.
    """

    def __init__(self, name: str, threshold: float = 0.1, patience: int = 20):
        self.name, self.threshold, self.patience = name, threshold, patience
        self.window: deque[float] = deque(maxlen=max(1, patience))
        self.warned = False
        self.dim = 0

    def __call__(self, z: torch.Tensor) -> float:
        """Measure one batch of embeddings `[B, d]`; returns the std to log."""
        std = embedding_std(z)
        self.dim = z.shape[1]
        self.window.append(std)
        healthy = 1.0 / math.sqrt(self.dim)
        if len(self.window) < self.window.maxlen:
            return std
        mean = sum(self.window) / len(self.window)
        if mean >= self.threshold * healthy:
            self.warned = False
        elif not self.warned:
            self.warned = True
            log.warning(
                "collapse: the %s std has averaged %.2g over the last %d steps, below %.2g (a "
                "fraction %.2f of the healthy 1/sqrt(%d) = %.3g): the embeddings are collapsing "
                "to a point",
                self.name,
                mean,
                len(self.window),
                self.threshold * healthy,
                self.threshold,
                self.dim,
                healthy,
            )
        return std

    @property
    def collapsed(self) -> bool:
        return self.warned

    @property
    def can_warn(self) -> bool:
        return self.threshold > 0


@dataclass
class TwoViewConfig(CheckedConfig):
    """Settings every two-view method shares: its two views' augmentations and pooling.

    `*_prob` pairs give the probability for view 1 and view 2 (BYOL's asymmetric blur and
    solarisation). Colour jitter strengths are those of the method's paper.
    `freeze_patch_embed` keeps the encoder's patch projection at its random initialisation, the
    stability measure of the MoCo v3 paper (Chen, Xie and He, ICCV 2021), which it reports
    helps SimCLR and BYOL on ViTs as well; on in the MoCo v3 recipe, off elsewhere. The collapse
    monitor warns when the watched embedding's spread averages less than `collapse_threshold`
    times the healthy 1/sqrt(d) over `collapse_patience` steps: healthy runs measured here stay
    above 0.6 of it, and SimSiam without its stop-gradient falls to 0.1-0.2 within 100 steps.
    """

    name: str = ""
    pool: str = "cls"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: tuple[float, float] = (1.0, 0.1)
    solarize_prob: tuple[float, float] = (0.0, 0.2)
    freeze_patch_embed: bool = False
    collapse_threshold: float = 0.25
    collapse_patience: int = 20

    def limits(self) -> list:
        """`(field, ok, rule)` for every field with a range (see `check`)."""
        return augment_limits(self) + [
            scale_limit(self, "crop_scale"),
            ("blur_prob", probabilities(self.blur_prob), "two probabilities in [0, 1]"),
            ("solarize_prob", probabilities(self.solarize_prob), "two probabilities in [0, 1]"),
            ("collapse_threshold", 0 <= self.collapse_threshold < math.inf, "at least 0"),
        ]


def probabilities(values) -> bool:
    return len(values) == 2 and all(0 <= v <= 1 for v in values)


def augment_limits(config) -> list:
    """The ranges of the pooling, colour and monitor fields that the two-view and multi-crop
    configs share (see `view_augment`)."""
    return [
        pool_limit(config),
        ("jitter_prob", 0 <= config.jitter_prob <= 1, "in [0, 1]"),
        ("grayscale_prob", 0 <= config.grayscale_prob <= 1, "in [0, 1]"),
        ("brightness", 0 <= config.brightness < math.inf, "a finite number, at least 0"),
        ("contrast", 0 <= config.contrast < math.inf, "a finite number, at least 0"),
        ("saturation", 0 <= config.saturation < math.inf, "a finite number, at least 0"),
        ("hue", 0 <= config.hue <= 0.5, "in [0, 0.5]"),
        ("collapse_patience", config.collapse_patience >= 1, "at least 1"),
    ]


def view_augment(config, crop_scale, blur_prob: float, solarize_prob: float) -> ViewAugment:
    """One view's `ViewAugment` from a method config's flip and colour fields."""
    return ViewAugment(
        crop_scale=tuple(crop_scale),
        hflip=config.hflip,
        jitter_prob=config.jitter_prob,
        brightness=config.brightness,
        contrast=config.contrast,
        saturation=config.saturation,
        hue=config.hue,
        grayscale_prob=config.grayscale_prob,
        blur_prob=blur_prob,
        solarize_prob=solarize_prob,
    )


def two_views(config: TwoViewConfig, img_size: int, mean, std) -> MultiView:
    """The two augmented views that `config` describes."""
    return MultiView(
        [
            augmented_view(
                img_size,
                mean,
                std,
                view_augment(
                    config, config.crop_scale, config.blur_prob[k], config.solarize_prob[k]
                ),
            )
            for k in range(2)
        ]
    )


class TwoViewMethod(Method):
    """Base of the methods that match two augmented views of each image.

    Subclasses build their heads in `__init__` and implement `forward(views)` with `views` the
    list of two normalised batches. `watched` names the tensor their collapse monitor watches.
    """

    config_class = TwoViewConfig
    watched = "projector output"

    def __init__(self, config: TwoViewConfig, encoder: VisionTransformer):
        config.check()
        super().__init__(config, encoder)
        self.pool = config.pool
        if config.freeze_patch_embed:
            encoder.patch_embed.proj.weight.requires_grad_(False)
            encoder.patch_embed.proj.bias.requires_grad_(False)
        self.monitor = CollapseMonitor(
            self.watched, config.collapse_threshold, config.collapse_patience
        )

    def views_transform(self, data_config, mean, std):
        return two_views(self.config, data_config.img_size, mean, std)

    def features(self, images: torch.Tensor, encoder: VisionTransformer | None = None):
        """Pooled encoder features `[B, D]` (of `encoder`, default the student's)."""
        return pooled_features(encoder or self.encoder, images, self.pool)

    @staticmethod
    def check_views(views) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(views, (list, tuple)) or len(views) != 2:
            raise ValueError("this method expects a list of two batches of views")
        if views[0].shape[0] < 2:
            raise ValueError("BatchNorm in the heads needs at least 2 images per batch")
        return views[0], views[1]


class MomentumTwoViewMethod(TwoViewMethod):
    """A two-view method with an EMA teacher of its encoder and projector (MoCo v3, BYOL).

    Subclasses set `self.projector` before calling `init_teacher()`.
    """

    def init_teacher(self) -> None:
        self.teacher = EMATeacher(self._student())
        self.momentum = self.config.momentum

    def _student(self) -> nn.ModuleDict:
        return nn.ModuleDict({"encoder": self.encoder, "head": self.projector})

    @torch.no_grad()
    def teacher_project(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's projection of one batch of views."""
        t = self.teacher.net
        return t["head"](self.features(images, t["encoder"]))

    def start_step(
        self, step: int, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0
    ) -> None:
        super().start_step(step, total_steps, steps_per_epoch, warmup_steps)
        # the momentum this step is logged with (the previous step's update; right on resume)
        self.momentum = cosine_momentum(step, total_steps, self.config.momentum)

    def after_step(self, step: int, total_steps: int) -> None:
        self.momentum = cosine_momentum(step + 1, total_steps, self.config.momentum)
        self.teacher.update(self._student(), self.momentum)
