"""Block-wise masks over a patch grid (BEiT's scheme, used by iBOT and MaskFeat).

A mask is built from rectangles: each has an area drawn between `min_patches` and what is still
missing, an aspect ratio drawn log-uniformly from `aspect`, and a random position; rectangles
are added until the target number of patches is masked. Same convention as MAE's masks:
`[B, N]` in row-major grid order, 1 = masked.
"""

import math

import torch


def block_mask(
    grid: tuple[int, int],
    n_masked: int,
    min_patches: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
    max_tries: int = 10,
) -> torch.Tensor:
    """One block-wise mask of exactly `n_masked` patches on a (rows, cols) grid.

    Returns:
        Bool tensor `[rows * cols]`, True = masked.
    """
    rows, cols = grid
    total = rows * cols
    if not 0 <= n_masked <= total:
        raise ValueError(f"cannot mask {n_masked} of {total} patches")
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])

    def rand() -> float:
        return float(torch.rand((), generator=generator))

    stalls = 0
    while int(mask.sum()) < n_masked and stalls < max_tries:
        missing = n_masked - int(mask.sum())
        low = min(min_patches, missing)
        area = low + rand() * (missing - low)
        ratio = math.exp(log_lo + rand() * (log_hi - log_lo))
        h = min(rows, max(1, round(math.sqrt(area * ratio))))
        w = min(cols, max(1, round(math.sqrt(area / ratio))))
        top = int(rand() * (rows - h + 1))
        left = int(rand() * (cols - w + 1))
        block = mask[top : top + h, left : left + w]
        new = int((~block).sum())
        if 0 < new <= missing:
            block[:] = True
            stalls = 0
        else:
            stalls += 1
    # top up (or trim) single patches so the count is exact, as rectangles rarely fit exactly
    flat = mask.flatten()
    short = n_masked - int(flat.sum())
    if short > 0:
        free = torch.nonzero(~flat).squeeze(1)
        pick = free[torch.randperm(len(free), generator=generator)[:short]]
        flat[pick] = True
    return flat


def block_masks(
    batch_size: int,
    grid: tuple[int, int],
    ratios: list[float],
    min_patches: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A block-wise mask per sample, sample i masking round(ratios[i] * N) patches: `[B, N]`."""
    n = grid[0] * grid[1]
    return torch.stack(
        [
            block_mask(grid, int(round(r * n)), min_patches, aspect, generator)
            for r in ratios[:batch_size]
        ]
    )
