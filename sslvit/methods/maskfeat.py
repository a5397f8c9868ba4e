"""MaskFeat (Wei et al., "Masked Feature Prediction for Self-Supervised Visual Pre-Training",
CVPR 2022, https://arxiv.org/abs/2112.09133).

The encoder sees every patch position, the masked ones (block-wise, 40 %) replaced by a learned
mask token; a linear head predicts the histogram of oriented gradients (HOG) of the original
image for each masked patch, and the loss is the mean squared error on the masked patches only.

HOG as in the paper: gradients from Sobel filters on each channel, unsigned orientations in 9
bins, magnitudes weighted by a Gaussian window over each patch and summed in cells of half the
patch side (8x8 cells in 16x16 patches; a patch under 8 px is one cell, see
`default_cell_size`), and the histograms of each patch and channel L2-normalised together.
The target of a patch is `channels * bins * (p / cell)^2` long.
"""

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sslvit.methods.base import CheckedConfig, Method, aspect_limit, check_limits, pool_limit
from sslvit.methods.common import CollapseMonitor, all_reduce_mean_
from sslvit.methods.masking import block_masks
from sslvit.methods.registry import register
from sslvit.models.vit import forward_tokens, pool_tokens

log = logging.getLogger("sslvit")


@dataclass
class MaskFeatConfig(CheckedConfig):
    """MaskFeat's ViT defaults: block-wise masking of 40 %, HOG with 9 bins and cells of half
    the patch side. `cell_size` None scales the paper's 8 px cells with the patch size, down to
    `MIN_CELL` px: below that one cell covers the whole patch (see `default_cell_size`).

    `pool` is the feature the probes and exports read. The loss reaches only the patch tokens,
    so the default is their mean; the class token is trained by nothing but attention. Measured
    on CIFAR-10 after one pass (bench.methods, kNN / linear): mean 36.31 / 50.19, class token
    29.93 / 47.25 (seed 0; the mean with seeds 1 and 2: 33.59 / 49.74, 35.78 / 51.14)."""

    name: str = "maskfeat"
    pool: str = "mean"
    mask_ratio: float = 0.4
    min_block: int = 4
    mask_aspect: tuple[float, float] = (0.3, 1 / 0.3)
    hog_bins: int = 9
    cell_size: int | None = None

    def limits(self) -> list:
        return [
            pool_limit(self),
            ("mask_ratio", 0 < self.mask_ratio < 1, "in (0, 1)"),
            ("min_block", self.min_block >= 1, "at least 1"),
            aspect_limit(self, "mask_aspect"),
            ("hog_bins", self.hog_bins >= 1, "at least 1"),
            ("cell_size", self.cell_size is None or self.cell_size >= 1, "at least 1 (or null)"),
        ]


# Smallest default cell side: a histogram of 9 bins over fewer than 4x4 gradients is mostly
# empty. Measured on CIFAR-10 with 4 px patches (bench.methods, one pass): 2 px cells gave kNN
# 31.76 / linear 45.59, one 4 px cell per patch 35.04 / 47.00.
MIN_CELL = 4


def default_cell_size(patch_size: int) -> int:
    """Half the patch side (the paper's 8 px cells in 16 px patches), or the whole patch when
    half would be under `MIN_CELL` px: 16 -> 8, 8 -> 4, 4 -> 4, 2 -> 2."""
    half = patch_size // 2
    return half if half >= MIN_CELL else patch_size


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g[:, None] * g[None, :]


def hog_targets(images: torch.Tensor, patch_size: int, cell_size: int, bins: int = 9):
    """HOG features of each patch of each image, per channel: `[B, N, C * bins * cells]`.

    Args:
        images: `[B, C, H, W]`; H and W divisible by `patch_size`, which `cell_size` divides.
        patch_size: Patch side p; the Gaussian window spans a patch (sigma p / 2).
        cell_size: Side of a histogram cell.
        bins: Orientation bins over [0, pi).

    Returns:
        `[B, N, C * bins * (p / cell)^2]` in the patch order of `patchify`; inside a patch the
        values run over channels, then bins, then cells (row-major); each (patch, channel)
        block has unit L2 norm (or is 0 where the patch is flat).
    """
    if patch_size % cell_size:
        raise ValueError(f"cell size {cell_size} does not divide the patch size {patch_size}")
    b, c, h, w = images.shape
    x = images.float().reshape(b * c, 1, h, w)
    sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    kernels = torch.stack([sobel, sobel.T]).unsqueeze(1).to(x.device)  # d/dx, d/dy
    grads = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernels)  # [BC, 2, H, W]
    gx, gy = grads[:, 0], grads[:, 1]
    magnitude = torch.sqrt(gx**2 + gy**2)
    orientation = torch.remainder(torch.atan2(gy, gx), math.pi)  # unsigned, [0, pi)
    # an angle a rounding error below pi is the same unsigned orientation as 0 (flat rows at
    # reflected borders give exactly such gradients)
    index = torch.floor(orientation / math.pi * bins + 1e-4).long() % bins
    window = _gaussian_window(patch_size, patch_size / 2).to(x.device)
    magnitude = magnitude * window.repeat(h // patch_size, w // patch_size)
    hist = torch.zeros(b * c, bins, h, w, device=x.device)
    hist.scatter_(1, index.unsqueeze(1), magnitude.unsqueeze(1))
    cells = F.avg_pool2d(hist, cell_size) * cell_size**2  # sums per cell: [BC, bins, h/s, w/s]
    per = patch_size // cell_size
    gh, gw = h // patch_size, w // patch_size
    cells = cells.reshape(b, c, bins, gh, per, gw, per)
    feats = cells.permute(0, 3, 5, 1, 2, 4, 6).reshape(b, gh * gw, c, bins * per * per)
    feats = F.normalize(feats, dim=-1)
    return feats.reshape(b, gh * gw, c * bins * per * per)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the features of the masked patches: `[B, N, D]` twice and a
    `[B, N]` 0/1 mask (`pred` may be one `[D]` vector for every patch)."""
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


def masked_mean(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean `[D]` of the `[B, N, D]` targets over the patches where the `[B, N]` mask is 1."""
    weights = mask.unsqueeze(-1)
    return (target * weights).sum(dim=(0, 1)) / weights.sum().clamp_min(1)


@torch.no_grad()
def target_fit(loss: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How much of the masked targets' variance the prediction explains.

    `target_var` is the loss of predicting the batch's mean target for every masked patch;
    `explained` is 1 - loss / target_var: 0 for a model that has learnt only the mean HOG
    (its loss then looks low but carries nothing about the image), 1 for a perfect one.
    """
    mean = masked_mean(target, mask)
    var = float(masked_mse(mean, target, mask))
    return {"target_var": var, "explained": 1 - float(loss.detach()) / var if var > 0 else 0.0}


@register("maskfeat")
class MaskFeat(Method):
    """Mask-token ViT + linear head regressing the HOG features of the masked patches."""

    config_class = MaskFeatConfig

    def __init__(self, config: MaskFeatConfig, encoder: VisionTransformer):
        config.check()
        super().__init__(config, encoder)
        self.pool = config.pool
        self.patch_size = encoder.patch_embed.patch_size[0]
        self.cell_size = config.cell_size or default_cell_size(self.patch_size)
        patches = math.prod(encoder.patch_embed.grid_size)
        check_limits(
            "method",
            config,
            [
                (
                    "cell_size",
                    self.patch_size % self.cell_size == 0,
                    f"a divisor of the patch size {self.patch_size}",
                ),
                ("min_block", config.min_block <= patches, f"at most the {patches} patches"),
            ],
        )
        if config.pool == "cls":
            log.warning(
                "MaskFeat with method.pool=cls: the probes and exports read the class token, "
                "which its loss never reaches (it learns only through attention); mean is the "
                "feature MaskFeat trains"
            )
        in_chans = encoder.patch_embed.proj.in_channels
        per = self.patch_size // self.cell_size
        self.target_dim = in_chans * config.hog_bins * per * per
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        # The head starts at zero weights and, on the first training step, a bias equal to
        # that batch's mean target (averaged over processes): the first prediction is the mean
        # HOG, and training spends its steps on the part of the target the image explains.
        # With nn.Linear's default init the first loss on CIFAR-10 was 0.42, 6.8 times the
        # mean predictor's 0.062, and AdamW spent ~250 of a one-pass run's 390 steps getting
        # back down to the mean (bench.methods: 0.0644 at step 50, explained ~0 at the end).
        self.head = nn.Linear(encoder.embed_dim, self.target_dim)
        nn.init.zeros_(self.head.weight)
        self._fit_head_bias = False
        self.monitor = CollapseMonitor("pooled patch tokens", threshold=0.0)
        # the images reaching `forward` are normalised; HOG is taken on them as they are,
        # which only rescales each channel before the per-patch normalisation

    def start_step(
        self, step: int, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0
    ) -> None:
        self._fit_head_bias = step == 0  # a resumed run keeps the bias it has learnt

    @torch.no_grad()
    def _start_at_mean_target(self, target: torch.Tensor, mask: torch.Tensor) -> None:
        self.head.bias.copy_(all_reduce_mean_(masked_mean(target, mask)))
        self._fit_head_bias = False

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        b = images.shape[0]
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        mask = block_masks(b, grid, [c.mask_ratio] * b, c.min_block, tuple(c.mask_aspect)).to(
            images.device
        )
        with torch.no_grad():
            target = hog_targets(images, self.patch_size, self.cell_size, c.hog_bins)
        m = mask.float()
        if self.training and self._fit_head_bias:
            self._start_at_mean_target(target, m)
        tokens = forward_tokens(self.encoder, images, mask, self.mask_token)
        pred = self.head(tokens[:, 1:])
        loss = masked_mse(pred, target, m)
        pooled = pool_tokens(tokens.detach(), self.pool)
        return loss, {"emb_std": self.monitor(pooled), **target_fit(loss, target, m)}
