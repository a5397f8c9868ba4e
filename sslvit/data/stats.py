"""Per-channel statistics of an image set, for normalisation."""

from __future__ import annotations

import numpy as np

from sslvit.data.arrays import ImageSet

# Floor of a channel's std, so a constant channel normalises to zeros instead of dividing by 0.
STD_EPS = 1e-6


def channel_stats(
    images: ImageSet, n_samples: int = 1000, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each channel over all pixels of sampled images.

    Accumulates in float64 with a per-image merge (Chan et al., 1979), which stays accurate for
    16-bit data where the sum of squares would lose precision. Non-finite pixels (NaN, inf)
    are left out.

    Args:
        images: An image set; all its images must have the same number of channels.
        n_samples: Number of images drawn without replacement (all of them if fewer).
        seed: Seed of the draw.

    Returns:
        `(mean, std)`: one float per channel each, in the images' native units; std is the
        population std, at least `STD_EPS`.

    Raises:
        ValueError: The set is empty, images differ in channel count, or a channel has no
            finite pixel in the sample.
    """
    n_items = len(images)
    if n_items == 0:
        raise ValueError("channel stats: the image set is empty")
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(n_items, size=min(n_samples, n_items), replace=False))

    count = mean = m2 = None
    for i in picks:
        image = images.read(int(i))
        if image.shape[0] != images.in_chans:
            raise ValueError(
                f"channel stats: {images.names[i]} has {image.shape[0]} channels, "
                f"the image set has {images.in_chans}"
            )
        pixels = image.double().numpy().reshape(image.shape[0], -1)
        finite = np.isfinite(pixels)
        n_b = finite.sum(axis=1).astype(np.float64)
        mean_b = np.where(finite, pixels, 0.0).sum(axis=1) / np.maximum(n_b, 1)
        m2_b = (np.where(finite, pixels - mean_b[:, None], 0.0) ** 2).sum(axis=1)
        if count is None:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        total = count + n_b
        weight = np.divide(n_b, total, out=np.zeros_like(total), where=total > 0)
        delta = mean_b - mean
        mean = mean + delta * weight
        m2 = m2 + m2_b + delta**2 * count * weight
        count = total

    empty = np.flatnonzero(count == 0)
    if len(empty):
        raise ValueError(f"channel stats: channel {empty[0]} has no finite pixel in the sample")
    std = np.maximum(np.sqrt(m2 / count), STD_EPS)
    return mean.tolist(), std.tolist()
