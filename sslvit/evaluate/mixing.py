"""Soft targets for supervised training: label smoothing, mixup, cutmix and their loss.

Mixup (Zhang et al., 2018) blends two images and their targets with a weight drawn from
Beta(alpha, alpha); cutmix (Yun et al., 2019) pastes a box of one image into another and
weights the targets by the box's area. Each batch is mixed with the batch in reverse order.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


def smooth_targets(labels: torch.Tensor, n_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with `smoothing` spread evenly over all classes (Szegedy et al., 2016).

    Args:
        labels: Class indices `[B]`.
        n_classes: Number of classes K.
        smoothing: Probability mass moved off the true class, in [0, 1).

    Returns:
        Float targets `[B, K]`: `1 - smoothing + smoothing / K` on the true class and
        `smoothing / K` elsewhere; each row sums to 1.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing {smoothing}: must lie in [0, 1)")
    off = smoothing / n_classes
    targets = torch.full((len(labels), n_classes), off, device=labels.device)
    return targets.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of `-sum_k targets[k] * log_softmax(logits)[k]`.

    Args:
        logits: `[B, K]`.
        targets: Probabilities `[B, K]`, rows summing to 1.

    Returns:
        A scalar; equals `F.cross_entropy` when the targets are one-hot.
    """
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def cutmix_box(
    height: int, width: int, lam: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A box covering about `1 - lam` of a `height x width` image, centred uniformly.

    The box has the image's aspect ratio and is clipped at the borders, so it may come out
    smaller; callers recompute the mixing weight from its real area.

    Returns:
        `(top, bottom, left, right)`, end-exclusive.
    """
    side = math.sqrt(1.0 - lam)
    box_h, box_w = round(height * side), round(width * side)
    centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(0, centre_y - box_h // 2), min(height, centre_y + box_h - box_h // 2)
    left, right = max(0, centre_x - box_w // 2), min(width, centre_x + box_w - box_w // 2)
    return top, bottom, left, right


def mix_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    mixup: float,
    cutmix: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each item with the item at the mirrored batch position, by mixup or cutmix.

    With both alphas positive, mixup or cutmix is picked with equal chance per batch (timm's
    and MAE's setting); with one of them zero, the other is always used; with both zero the
    batch is returned unchanged.

    Args:
        images: `[B, C, H, W]`.
        targets: Soft targets `[B, K]` (from `smooth_targets`).
        mixup: Beta parameter alpha of mixup; 0 turns it off.
        cutmix: Beta parameter alpha of cutmix; 0 turns it off.
        rng: Source of every random draw here (method, weight, box).

    Returns:
        `(images, targets, lam)`: mixed images `[B, C, H, W]` (a new tensor), targets
        `lam * targets + (1 - lam) * targets.flip(0)` `[B, K]` whose rows still sum to 1, and
        the weight `lam` of the original items.
    """
    if mixup < 0 or cutmix < 0:
        raise ValueError(f"mixup {mixup} and cutmix {cutmix}: alphas must be >= 0")
    if mixup == 0 and cutmix == 0:
        return images, targets, 1.0
    use_cutmix = cutmix > 0 and (mixup == 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    partner = images.flip(0)
    if use_cutmix:
        height, width = images.shape[-2:]
        top, bottom, left, right = cutmix_box(height, width, lam, rng)
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    else:
        mixed = lam * images + (1.0 - lam) * partner
    return mixed, lam * targets + (1.0 - lam) * targets.flip(0), lam
