"""DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
https://arxiv.org/abs/2104.14294).

Self-distillation without labels: a student ViT sees 2 global and several small local crops, a
teacher (an EMA of the student, momentum 0.996 rising to 1) sees only the 2 global crops, and
the student's output distribution over `out_dim` prototypes is trained to match the teacher's
centred, sharpened distribution for every other view. The centre is an EMA of the teacher's
batch means, all-reduced across processes.
"""

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sslvit.data.views import MultiView, augmented_view
from sslvit.methods.base import CheckedConfig, Method, scale_limit
from sslvit.methods.common import (
    CollapseMonitor,
    all_reduce_mean_,
    augment_limits,
    view_augment,
)
from sslvit.methods.registry import register
from sslvit.methods.teacher import EMATeacher, cosine_momentum
from sslvit.models.heads import DINOHead
from sslvit.models.vit import forward_tokens

log = logging.getLogger("sslvit")


@dataclass
class DINOConfig(CheckedConfig):
    """DINO's ViT defaults (the paper's ViT-S/16 recipe).

    Crops: 2 global crops of the training size (scale 0.4-1) and `local_crops` local crops
    (scale 0.05-0.4) of `local_size` pixels; None scales the paper's 96/224 with the image size
    and rounds up to whole patches (16 px for 32 px images with 4 px patches). Augmentations as
    BYOL: blur p 1.0 / 0.1 / 0.5 (global 1, global 2, locals), solarisation p 0.2 on global 2.
    `head_bn` puts BatchNorm in the head's MLP (the official code's `use_bn_in_head`, off in
    its ViT recipe).
    """

    name: str = "dino"
    pool: str = "cls"
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True
    head_bn: bool = False
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30.0
    center_momentum: float = 0.9
    momentum: float = 0.996
    freeze_last_layer_epochs: float = 1.0
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    local_crops: int = 8
    local_size: int | None = None
    hflip: bool = True
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    collapse_patience: int = 20

    def limits(self) -> list:
        """`(field, ok, rule)` for every field with a range (see `check`)."""
        return augment_limits(self) + [
            ("out_dim", self.out_dim >= 1, "at least 1"),
            ("hidden_dim", self.hidden_dim >= 1, "at least 1"),
            ("bottleneck_dim", self.bottleneck_dim >= 1, "at least 1"),
            ("head_layers", self.head_layers >= 1, "at least 1"),
            ("student_temp", 0 < self.student_temp < math.inf, "a finite number above 0"),
            ("teacher_temp", 0 < self.teacher_temp < math.inf, "a finite number above 0"),
            (
                "warmup_teacher_temp",
                0 < self.warmup_teacher_temp < math.inf,
                "a finite number above 0",
            ),
            (
                "warmup_teacher_temp_epochs",
                0 <= self.warmup_teacher_temp_epochs < math.inf,
                "a finite number, at least 0",
            ),
            ("center_momentum", 0 <= self.center_momentum <= 1, "in [0, 1]"),
            ("momentum", 0 <= self.momentum <= 1, "in [0, 1]"),
            (
                "freeze_last_layer_epochs",
                0 <= self.freeze_last_layer_epochs < math.inf,
                "a finite number, at least 0",
            ),
            scale_limit(self, "global_crop_scale"),
            scale_limit(self, "local_crop_scale"),
            ("local_crops", self.local_crops >= 0, "at least 0"),
            ("local_size", self.local_size is None or self.local_size >= 1, "at least 1 (or null)"),
        ]


def local_crop_size(img_size: int, patch_size: int) -> int:
    """The paper's 96/224 of the image size, rounded up to whole patches."""
    patches = math.ceil(img_size * 96 / 224 / patch_size - 1e-6)
    return max(1, patches) * patch_size


def dino_loss(
    student_out: list[torch.Tensor],
    teacher_out: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
) -> torch.Tensor:
    """DINO's cross-entropy between teacher and student over every pair of different views.

    Args:
        student_out: Logits `[B, K]` for each student view; the first `len(teacher_out)` are
            the global views in the teacher's order.
        teacher_out: Logits `[B, K]` of the teacher for the global views.
        center: `[1, K]` subtracted from the teacher's logits.

    Returns:
        The mean over pairs (teacher view t, student view s != t) of
        `-sum_k softmax((t - c) / T_t)_k log softmax(s / T_s)_k`, averaged over the batch.
    """
    targets = [F.softmax((t.float() - center) / teacher_temp, dim=-1) for t in teacher_out]
    logs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_out]
    total, pairs = 0.0, 0
    for ti, target in enumerate(targets):
        for si, log_p in enumerate(logs):
            if si == ti:
                continue
            total = total + (-(target * log_p).sum(dim=-1)).mean()
            pairs += 1
    return total / pairs


class DistributionMonitor:
    """DINO's collapse diagnostics on the teacher's output distribution.

    Logs the mean entropy of the teacher's (centred, sharpened) distributions, next to its
    maximum ln(K), and the KL divergence of their batch mean from the uniform distribution.
    Uniform collapse drives the entropy and the loss to ln(K); one-prototype collapse drives the
    KL to ln(K). The warning fires when the loss stays within 2 % of ln(K) for `patience` steps.

    Steps count only while `judging`, which the method clears during the learning-rate
    warm-up: a fresh network starts at ln(K) by construction (its weight-normalised last layer
    sees nearly the same embedding for every image), and with the recipe's 65,536 prototypes
    a healthy run sits within 2 % of ln(K) for its first tens of steps.
    """

    def __init__(self, out_dim: int, patience: int = 20, loss_name: str = "the loss"):
        self.log_k = math.log(out_dim)
        self.loss_name = loss_name
        self.patience = patience
        self.flat_steps = 0
        self.warned = False
        self.judging = True

    def __call__(self, probs: torch.Tensor, loss: float) -> dict[str, float]:
        probs = probs.detach().float()
        entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())
        mean = probs.mean(0)
        kl = float(self.log_k + (mean * mean.clamp_min(1e-12).log()).sum())
        if not self.judging:
            self.flat_steps = 0
        elif abs(loss - self.log_k) < 0.02 * self.log_k:
            self.flat_steps += 1
        else:
            self.flat_steps, self.warned = 0, False
        if self.flat_steps >= self.patience and not self.warned:
            self.warned = True
            log.warning(
                "collapse: %s %.4f has sat at ln(%d) = %.4f for %d steps (teacher entropy "
                "%.3f, KL to uniform %.3f): student and teacher output the uniform distribution",
                self.loss_name,
                loss,
                round(math.exp(self.log_k)),
                self.log_k,
                self.flat_steps,
                entropy,
                kl,
            )
        return {"teacher_entropy": entropy, "ln_k": self.log_k, "kl_uniform": kl}

    @property
    def collapsed(self) -> bool:
        return self.warned

    can_warn = True


def linear_ramp(value: float, start: float, end: float, span: float) -> float:
    """Linear ramp from `start` to `end` over `span`, then `end` (DINO's temperature warm-up)."""
    if span <= 0 or value >= span:
        return end
    return start + (end - start) * value / span


@register("dino")
class DINO(Method):
    """Student ViT + DINO head against an EMA teacher on multi-crop views."""

    config_class = DINOConfig

    def __init__(self, config: DINOConfig, encoder: VisionTransformer):
        config.check()
        size, patch = encoder.patch_embed.img_size[0], encoder.patch_embed.patch_size[0]
        if config.local_size and (config.local_size % patch or config.local_size > size):
            raise ValueError(
                f"method.local_size = {config.local_size}: local crops must be whole patches "
                f"({patch} px) and at most the image size ({size} px)"
            )
        super().__init__(config, encoder)
        self.pool = config.pool
        self.head = self.make_head(encoder.embed_dim)
        self.teacher = EMATeacher(self._student())
        self.register_buffer("center", torch.zeros(1, config.out_dim))
        self.monitor = DistributionMonitor(config.out_dim, config.collapse_patience)
        # logged only: raw ViT class tokens share a large common direction, so their spread is
        # low even when healthy; DINO's warning comes from the loss sitting at ln(K)
        self.spread = CollapseMonitor("teacher class token", threshold=0.0)
        self.momentum = config.momentum
        self.epoch = 0.0

    def make_head(self, in_dim: int) -> nn.Module:
        c = self.config
        return DINOHead(
            in_dim,
            c.out_dim,
            c.hidden_dim,
            c.bottleneck_dim,
            c.head_layers,
            c.norm_last_layer,
            c.head_bn,
        )

    def _student(self) -> nn.ModuleDict:
        return nn.ModuleDict({"encoder": self.encoder, "head": self.head})

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"last_g"}

    def views_transform(self, data_config, mean, std):
        c = self.config
        size = data_config.img_size
        patch = self.encoder.patch_embed.patch_size[0]
        local = c.local_size or local_crop_size(size, patch)

        def view(crop, scale, blur, solarize):
            return augmented_view(crop, mean, std, view_augment(c, scale, blur, solarize))

        views = [
            view(size, c.global_crop_scale, 1.0, 0.0),
            view(size, c.global_crop_scale, 0.1, 0.2),
        ]
        views += [view(local, c.local_crop_scale, 0.5, 0.0) for _ in range(c.local_crops)]
        return MultiView(views)

    def start_step(
        self, step: int, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0
    ) -> None:
        self.epoch = step / steps_per_epoch
        self.total_steps = total_steps
        self.monitor.judging = step >= warmup_steps
        # the momentum this step is logged with (the previous step's update; right on resume)
        self.momentum = cosine_momentum(step, total_steps, self.config.momentum)

    def teacher_temp(self) -> float:
        c = self.config
        return linear_ramp(
            self.epoch, c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_epochs
        )

    def encode(self, encoder: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Class tokens of each view, one forward per crop size (same-size views batched)."""
        out: list[torch.Tensor | None] = [None] * len(views)
        sizes = sorted({v.shape[-1] for v in views}, reverse=True)
        for size in sizes:
            idx = [i for i, v in enumerate(views) if v.shape[-1] == size]
            cls = forward_tokens(encoder, torch.cat([views[i] for i in idx]))[:, 0]
            for i, chunk in zip(idx, cls.chunk(len(idx)), strict=True):
                out[i] = chunk
        return out

    def forward(self, views) -> tuple[torch.Tensor, dict[str, float]]:
        if not isinstance(views, (list, tuple)) or len(views) < 2:
            raise ValueError("DINO expects a list of views: 2 global crops, then local crops")
        globals_ = list(views[:2])
        # every view's class token through the head in one batch: one large product, not ten
        student = list(
            self.head(torch.cat(self.encode(self.encoder, list(views)))).chunk(len(views))
        )
        with torch.no_grad():
            t = self.teacher.net
            t_cls = self.encode(t["encoder"], globals_)
            teacher = list(t["head"](torch.cat(t_cls)).chunk(len(t_cls)))
        temp = self.teacher_temp()
        loss = dino_loss(student, teacher, self.center, self.config.student_temp, temp)
        with torch.no_grad():
            t_all = torch.cat(teacher).float()
            probs = F.softmax((t_all - self.center) / temp, dim=-1)
            self.update_center(t_all)
        logs = self.monitor(probs, float(loss.detach()))
        logs["emb_std"] = self.spread(torch.cat(t_cls))
        logs["teacher_temp"] = temp
        logs["momentum"] = self.momentum
        return loss, logs

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean of the teacher's logits over the global batch."""
        batch_center = all_reduce_mean_(teacher_logits.mean(dim=0, keepdim=True))
        m = self.config.center_momentum
        self.center.mul_(m).add_(batch_center, alpha=1 - m)

    def adjust_gradients(self, step: int) -> None:
        if self.epoch < self.config.freeze_last_layer_epochs:
            for name, param in self.head.named_parameters():
                if name.rsplit(".", 1)[-1].startswith("last_"):
                    param.grad = None

    def after_step(self, step: int, total_steps: int) -> None:
        self.momentum = cosine_momentum(step + 1, total_steps, self.config.momentum)
        self.teacher.update(self._student(), self.momentum)
