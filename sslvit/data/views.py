"""Augmented views of images with any number of channels, reproducible per sample.

The transforms work on float tensors `[C, H, W]` in native units and end with a per-channel
`Normalize`, so the same pipeline serves RGB photos, 1-channel scans and 13-band rasters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from sslvit.data.arrays import ImageSet


def train_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] = (0.2, 1.0),
    hflip: bool = True,
) -> v2.Compose:
    """Random resized crop, horizontal flip and normalisation: `[C, H, W]` -> `[C, S, S]`.

    The crop is resized with bicubic interpolation and antialiasing, so an image smaller than
    `img_size` is upscaled rather than rejected.

    Args:
        img_size: Side S of the output view, in pixels.
        mean: Per-channel mean in the images' units (from `channel_stats`), length C.
        std: Per-channel std, length C.
        scale: Range of the crop's area as a fraction of the image's area.
        hflip: Flip horizontally with probability 0.5.

    Returns:
        A callable on float tensors `[C, H, W]`.
    """
    _check_stats(mean, std)
    geometric = [
        v2.RandomResizedCrop(
            img_size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True
        )
    ]
    if hflip:
        geometric.append(v2.RandomHorizontalFlip())
    # Colour operations belong between the geometric steps and Normalize, and only when C == 3.
    return v2.Compose([*geometric, v2.Normalize(list(mean), list(std))])


@dataclass(frozen=True)
class ViewAugment:
    """The augmentations of one view of a view-matching method (SimCLR, BYOL, MoCo, DINO...).

    Probabilities are per image. Colour jitter, random grey and the hue/saturation parts only
    apply to 3-channel images; other channel counts get an independent brightness/contrast
    jitter per channel instead (same probability and strengths). Blur applies to every channel
    count; solarisation to grey and RGB images only (it inverts intensities above half the
    image's maximum, which has no meaning across the bands of a multi-band raster).
    Blur sigma is given in pixels at 224 px (the papers' setting) and scaled with the view size.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0


class _InUnitRange(torch.nn.Module):
    """Run `ops` on the image divided by its maximum, so [0, 1]-range ops fit any units."""

    def __init__(self, ops: list):
        super().__init__()
        self.ops = v2.Compose(ops)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        scale = image.amax().clamp_min(1e-12)
        # bicubic resizing overshoots below 0; hue and saturation turn negatives into NaN
        return self.ops((image / scale).clamp_min(0.0)) * scale


class ChannelJitter(torch.nn.Module):
    """Brightness and contrast jitter drawn independently for each channel, with probability p.

    For channel c: `x_c <- (x_c * b_c - m_c) * k_c + m_c`, with `b_c` in [1 - brightness,
    1 + brightness], `k_c` in [1 - contrast, 1 + contrast] and `m_c` the channel's mean after
    the brightness change. Values keep their units; nothing is clipped.
    """

    def __init__(self, brightness: float, contrast: float, p: float):
        super().__init__()
        self.brightness, self.contrast, self.p = brightness, contrast, p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        c = image.shape[0]
        b = 1.0 + (torch.rand(c, 1, 1) * 2 - 1) * self.brightness
        k = 1.0 + (torch.rand(c, 1, 1) * 2 - 1) * self.contrast
        image = image * b
        mean = image.mean(dim=(1, 2), keepdim=True)
        return (image - mean) * k + mean


def augmented_view(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    aug: ViewAugment,
) -> v2.Compose:
    """One randomly augmented view: crop, flip, colour (as the channels allow), blur, solarise.

    Args:
        img_size: Side of the view in pixels.
        mean: Per-channel mean in the images' units; its length is the channel count.
        std: Per-channel std.
        aug: Which operations, how strong and how often.

    Returns:
        A callable on float tensors `[C, H, W]` giving a normalised `[C, S, S]` view.
    """
    _check_stats(mean, std)
    chans = len(mean)
    ops: list = [
        v2.RandomResizedCrop(
            img_size, scale=aug.crop_scale, interpolation=InterpolationMode.BICUBIC, antialias=True
        )
    ]
    if aug.hflip:
        ops.append(v2.RandomHorizontalFlip())
    unit_ops: list = []
    if chans == 3:
        jitter = v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)
        if aug.jitter_prob > 0:
            unit_ops.append(v2.RandomApply([jitter], p=aug.jitter_prob))
        if aug.grayscale_prob > 0:
            unit_ops.append(v2.RandomGrayscale(p=aug.grayscale_prob))
    elif aug.jitter_prob > 0:
        ops.append(ChannelJitter(aug.brightness, aug.contrast, aug.jitter_prob))
    if unit_ops:
        ops.append(_InUnitRange(unit_ops))
    if aug.blur_prob > 0:
        scale = img_size / 224
        sigma = (aug.blur_sigma[0] * scale, aug.blur_sigma[1] * scale)
        # the papers' kernel is about a tenth of the image side, odd, at least 3
        kernel = max(3, 2 * math.floor(img_size / 20) + 1)
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=sigma)], p=aug.blur_prob))
    if aug.solarize_prob > 0 and chans in (1, 3):
        ops.append(_InUnitRange([v2.RandomSolarize(0.5, p=aug.solarize_prob)]))
    return v2.Compose([*ops, v2.Normalize(list(mean), list(std))])


class MultiView:
    """Apply several view transforms to one image: `image -> [view_1, ..., view_k]`.

    A DataLoader collates the lists into a list of k batches, which the training loop hands to
    the method as they are.
    """

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
        if not transforms:
            raise ValueError("MultiView needs at least one transform")
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [t(image) for t in self.transforms]


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize the shorter side to `img_size`, centre-crop, normalise: `[C, H, W]` -> `[C, S, S]`.

    Args:
        img_size: Side S of the output, in pixels.
        mean: Per-channel mean in the images' units, length C.
        std: Per-channel std, length C.

    Returns:
        A callable on float tensors `[C, H, W]`.
    """
    _check_stats(mean, std)
    return v2.Compose(
        [
            v2.Resize(img_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(img_size),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != len(std) or not len(mean):
        raise ValueError(
            f"normalisation: {len(mean)} means and {len(std)} stds; need one per channel"
        )
    if min(std) <= 0:
        raise ValueError(f"normalisation: std {list(std)} has a value <= 0")


class SeededViews(Dataset):
    """A dataset of augmented views whose randomness depends only on (seed, epoch, index).

    The same `(epoch, i)` gives the same view in any worker, at any batch position and after a
    resume, and no two samples share random numbers. The caller's global torch RNG is left as
    it was.

    The transform runs with torch's global CPU generator temporarily re-seeded, so it must draw
    its random numbers from torch (all torchvision v2 transforms do) and the dataset must not be
    read from several threads of one process at once (DataLoader workers are processes).

    Args:
        images: An image set.
        transform: Maps `[C, H, W]` to a view, or to a list of views for multi-view methods.
        seed: Run seed, a non-negative int.

    Items:
        `dataset[(epoch, i)]` or `dataset[i]` (epoch 0) -> `(view, label, i)`, where `label` is
        the class index or -1 for an unlabelled set.
    """

    def __init__(self, images: ImageSet, transform: Callable[[torch.Tensor], Any], seed: int):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"views seed {seed!r}: must be a non-negative int")
        self.images = images
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int, int]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        epoch, i = int(epoch), int(i)
        if i < 0:
            i += len(self)
        image = self.images.read(i)
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: torch.manual_seed would also re-seed CUDA generators,
            # which fork_rng(devices=[]) does not restore.
            torch.random.default_generator.manual_seed(self.sample_seed(epoch, i))
            view = self.transform(image)
        labels = self.images.labels
        return view, -1 if labels is None else labels[i], i

    def sample_seed(self, epoch: int, i: int) -> int:
        """The 63-bit seed of sample `i` in `epoch`, well mixed from (seed, epoch, i)."""
        high, low = np.random.SeedSequence([self.seed, epoch, i]).generate_state(2, np.uint32)
        return ((int(high) << 32) | int(low)) & (2**63 - 1)
