"""Stratified splits and few-label subsets, reproducible from a seed."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("sslvit")


@dataclass(frozen=True)
class LabelSpec:
    """How many labels to keep per class: a fraction, a count, or all (both None)."""

    fraction: float | None = None
    per_class: int | None = None

    def __str__(self) -> str:
        if self.per_class is not None:
            return f"{self.per_class} per class"
        return f"{100 * (1.0 if self.fraction is None else self.fraction):g}%"


def stratified_split(
    labels: Sequence[int] | np.ndarray, test: float | int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and test, keeping each class's share on both sides.

    The test size is shared out among classes in proportion to their size (largest remainder,
    so the total is exact); every class with at least two items keeps at least one on each
    side.

    Args:
        labels: Class index per item, `[N]`.
        test: Fraction of items in `(0, 1)` (float), or total number of test items (int).
        seed: Seed of the random draw; the same seed gives the same split.

    Returns:
        `(train_idx, test_idx)`: sorted int64 arrays that partition `0..N-1`.

    Raises:
        ValueError: `test` is not a fraction in (0, 1) or a count in 1..N-1.
    """
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if isinstance(test, bool) or not isinstance(test, (int, float, np.integer, np.floating)):
        raise ValueError(f"test size {test!r}: expected a fraction in (0, 1) or a count")
    if isinstance(test, (float, np.floating)):
        if not 0.0 < test < 1.0:
            raise ValueError(f"test fraction {test}: must lie strictly between 0 and 1")
        n_test = int(math.floor(test * n + 0.5))
    else:
        n_test = int(test)
    if not 0 < n_test < n:
        raise ValueError(f"test size {test}: gives {n_test} test items out of {n}; need 1..{n - 1}")

    classes, counts = np.unique(labels, return_counts=True)
    quotas = _apportion(counts, n_test)
    rng = np.random.default_rng(seed)
    test_idx = []
    for label, quota in zip(classes, quotas, strict=True):
        members = np.flatnonzero(labels == label)
        test_idx.append(rng.permutation(members)[:quota])
    test_idx = np.sort(np.concatenate(test_idx)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(n, dtype=np.int64), test_idx)
    return train_idx, test_idx


def _apportion(counts: np.ndarray, total: int) -> np.ndarray:
    """Share `total` among classes of sizes `counts`, each class on both sides if it can be."""
    exact = counts * total / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[: total - quotas.sum()]] += 1

    low = np.where(counts >= 2, 1, 0)
    high = np.maximum(counts - 1, low)
    quotas = np.clip(quotas, low, high)
    # Clipping moved the total; take from or give to the classes with the most room.
    while quotas.sum() > total and (quotas > low).any():
        quotas[np.argmax(np.where(quotas > low, quotas - low, -1))] -= 1
    while quotas.sum() < total and (quotas < high).any():
        quotas[np.argmax(np.where(quotas < high, high - quotas, -1))] += 1
    return quotas


def parse_label_spec(spec: str | float | int | LabelSpec | None) -> LabelSpec:
    """Read a label budget: "10%" or 0.1 (fraction), "50" or 50 (per class), None or "100%".

    Raises:
        ValueError: The spec is not a positive count or a fraction in (0, 1] (0%..100%].
    """
    if spec is None or isinstance(spec, LabelSpec):
        return spec or LabelSpec()
    if isinstance(spec, bool):
        raise ValueError(f"label spec {spec!r}: expected e.g. '10%', 0.1 or 50")
    if isinstance(spec, str):
        text = spec.strip()
        if text.isdigit():
            return parse_label_spec(int(text))
        try:
            share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            share = math.nan
        if not 0.0 < share <= 1.0:
            raise ValueError(
                f"label spec {spec!r}: expected a share above 0 and at most 100 % ('10%' or "
                "'0.1'), or a whole count per class of at least 1 ('50')"
            )
        return parse_label_spec(share)
    if isinstance(spec, (int, np.integer)):
        if spec < 1:
            raise ValueError(f"label spec {spec}: a count per class must be at least 1")
        return LabelSpec(per_class=int(spec))
    if isinstance(spec, (float, np.floating)):
        if not 0.0 < spec <= 1.0:
            raise ValueError(f"label spec {spec}: a fraction must lie in (0, 1]")
        return LabelSpec() if spec == 1.0 else LabelSpec(fraction=float(spec))
    raise ValueError(f"label spec {spec!r}: expected e.g. '10%', 0.1 or 50")


def label_subset(
    labels: Sequence[int] | np.ndarray,
    spec: str | float | int | LabelSpec | None,
    seed: int,
    classes: Sequence[str] | None = None,
) -> np.ndarray:
    """Indices of a stratified few-label subset.

    A fraction keeps `round(fraction * n_class)` items of each class, at least one; a count
    keeps that many of each class, or all of a smaller class with a warning that names it. For
    one seed, smaller budgets are subsets of larger ones (1% within 10% within 100%), since each
    class is drawn from one fixed permutation.

    Args:
        labels: Class index per item, `[N]`.
        spec: Label budget, anything `parse_label_spec` accepts.
        seed: Seed of the draw.
        classes: Class names by index, used in the warning; None names classes by index.

    Returns:
        Sorted int64 indices.
    """
    spec = parse_label_spec(spec)
    labels = np.asarray(labels).reshape(-1)
    if spec.fraction is None and spec.per_class is None:
        return np.arange(len(labels), dtype=np.int64)

    rng = np.random.default_rng(seed)
    chosen, short = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if spec.per_class is not None:
            keep = spec.per_class
            if keep > len(members):
                name = classes[label] if classes is not None else str(label)
                short.append(f"{name!r} ({len(members)})")
        else:
            keep = max(1, int(math.floor(spec.fraction * len(members) + 0.5)))
        chosen.append(members[:keep])
    if short:
        log.warning(
            "asked for %d labels per class; %d class(es) have fewer and are used whole: %s",
            spec.per_class,
            len(short),
            ", ".join(short),
        )
    return np.sort(np.concatenate(chosen)).astype(np.int64)
