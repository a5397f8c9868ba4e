"""Augmented views of images with any number of channels, reproducible per sample.

The transforms work on float tensors `[C, H, W]` in native units and end with a per-channel
`Normalize`, so the same pipeline serves RGB photos, 1-channel scans and 13-band rasters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
