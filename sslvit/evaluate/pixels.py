"""Pixel classification of a hyperspectral scene on frozen encoder features.

The protocol of the hyperspectral classification literature: a few labelled pixels of each
class train a classifier, every other labelled pixel tests it, and the scores are overall
accuracy (OA), average per-class accuracy (AA) and Cohen's kappa (Cohen, "A Coefficient of
Agreement for Nominal Scales", 1960). A pixel is seen through a small window centred on it
(padded by reflection at the borders), resized to the encoder's input; the encoder's pooled
features of that window feed the linear probe of `sslvit.evaluate.linear`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

from sslvit.data.arrays import ArrayImages
from sslvit.data.bands import band_label, check_encoder_bands, resolve_bands
from sslvit.data.cubes import Cube, PixelWindows
from sslvit.data.ground_truth import GroundTruth
from sslvit.data.rasters import name_of_description
from sslvit.data.splits import LabelSpec, label_subset, parse_label_spec
from sslvit.data.stats import channel_stats
from sslvit.evaluate.confusion import confusion_matrix, per_class_accuracy
from sslvit.evaluate.features import encoder_transform, extract_features
from sslvit.evaluate.linear import fit_probe
from sslvit.models.io import EncoderInfo
from sslvit.models.vit import create_vit

DEFAULT_WINDOW = 9


def pixel_split(
    labels: np.ndarray, spec: LabelSpec, seed: int, classes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class train/test split of labelled pixels: `spec` of each class trains, the rest test.

    Args:
        labels: Class index (0-based) of each labelled pixel, `[N]`.
        spec: A count per class or a fraction of each class (`parse_label_spec`).
        seed: Seed of the draw; the same seed gives the same split.
        classes: Class names for messages.

    Returns:
        `(train_idx, test_idx)`: sorted int64 indices into `labels` that partition `0..N-1`.

    Raises:
        ValueError: The budget is "all" or leaves a class without a test pixel.
    """
    if spec.per_class is None and spec.fraction is None:
        raise ValueError("pixel classification needs a training budget: a count or a fraction")
    train_idx = label_subset(labels, spec, seed, classes)
    test_idx = np.setdiff1d(np.arange(len(labels), dtype=np.int64), train_idx)
    missing = sorted(set(np.unique(labels)) - set(np.unique(labels[test_idx])))
    if missing:
        name = classes[missing[0]] if classes else str(missing[0])
        n = int((labels == missing[0]).sum())
        raise ValueError(
            f"class {name!r} has {n} labelled pixels and the budget ({spec}) takes them all; "
            "lower the training count so every class keeps test pixels"
        )
    return train_idx, test_idx


def agreement_scores(matrix: torch.Tensor) -> dict[str, float]:
    """OA and AA in percent and Cohen's kappa from a confusion matrix (true classes in rows).

    AA averages the accuracy of the classes that have test items. Kappa is
    `(p_o - p_e) / (1 - p_e)` with `p_o` the observed agreement (OA as a fraction) and `p_e`
    the agreement expected by chance, `sum_k rows_k * cols_k / n^2`; it is 1 for a perfect
    classifier and 0 for one no better than chance.
    """
    matrix = matrix.double()
    total = matrix.sum()
    rows, cols = matrix.sum(dim=1), matrix.sum(dim=0)
    observed = matrix.diagonal().sum() / total
    expected = (rows * cols).sum() / total**2
    present = rows > 0
    average = (matrix.diagonal()[present] / rows[present]).mean()
    kappa = (observed - expected) / (1 - expected) if expected < 1 else torch.tensor(1.0)
    return {
        "oa": 100.0 * observed.item(),
        "aa": 100.0 * average.item(),
        "kappa": kappa.item(),
    }


def cube_bands(
    cube: Cube,
    bands: str | list[int | str] | None,
    encoder_bands: list[str] | None = None,
) -> Cube:
    """The cube with the bands an encoder reads, in its order, checked against the encoder's.

    Args:
        cube: The scene.
        bands: 0-based indices or names (`sslvit.data.bands`); None for `encoder_bands`, or
            every band when that is None too.
        encoder_bands: The encoder's bands (`EncoderInfo.bands`), or None.

    Raises:
        ValueError: A band the cube does not have, or chosen bands named otherwise than the
            encoder's.
    """
    bands = encoder_bands if bands is None else bands
    if bands is None:
        return cube
    names = None
    if cube.band_names is not None:
        names = [name_of_description(str(name)) for name in cube.band_names]
    indices = resolve_bands(bands, names, cube.n_bands, cube.source)
    labels = [band_label(k, names) for k in indices]
    check_encoder_bands(labels, encoder_bands, cube.source)
    wavelengths = None if cube.wavelengths is None else [cube.wavelengths[k] for k in indices]
    return Cube(np.ascontiguousarray(cube.data[indices]), cube.source, labels, wavelengths)


def random_encoder(
    cube: Cube,
    model: str = "vit_tiny",
    img_size: int = 16,
    patch_size: int = 4,
    band_groups: int = 0,
    seed: int = 0,
) -> tuple[VisionTransformer, EncoderInfo]:
    """The random-weight baseline: an untrained encoder with the cube's per-band statistics.

    Returns:
        `(encoder, info)` with the weights drawn from `seed` and `mean`/`std` over every
        pixel of the cube.
    """
    mean, std = channel_stats(ArrayImages(cube.data[None]), 1)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        encoder = create_vit(model, img_size, patch_size, cube.n_bands, band_groups=band_groups)
    finally:
        torch.random.set_rng_state(generator_state)
    info = EncoderInfo(
        model=model,
        img_size=(img_size, img_size),
        patch_size=patch_size,
        in_chans=cube.n_bands,
        mean=mean,
        std=std,
        embed_dim=encoder.embed_dim,
        band_groups=band_groups,
    )
    return encoder.eval(), info


@dataclass
class WindowFeatures:
    """Frozen features of every labelled pixel of a scene.

    Attributes:
        feats: float32 `[N, D]`, one row per labelled pixel in row-major scene order.
        labels: Class index (0-based) of each, int64 `[N]`.
        rows, cols: Where each pixel is, `[N]` each.
        truth: The ground truth they came from.
        window: Side of the window each feature saw.
        pool: "cls" or "mean".
    """

    feats: torch.Tensor
    labels: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    truth: GroundTruth
    window: int
    pool: str


def window_features(
    encoder,
    info: EncoderInfo,
    cube: Cube,
    truth: GroundTruth,
    window: int = DEFAULT_WINDOW,
    pool: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> WindowFeatures:
    """Pooled encoder features of the window around each labelled pixel.

    Args:
        encoder: The frozen ViT encoder.
        info: Its `EncoderInfo` (input size, normalisation); its bands must be the cube's.
        cube: The scene.
        truth: Its ground truth (`read_ground_truth`); 0 = unlabelled, left out.
        window: Side of the odd window around each pixel, resized to the encoder's input.
        pool: "cls" or "mean"; None for the encoder's own.
        device: Where the encoder runs.
        batch_size: Windows per forward pass.
    """
    if truth.labels.shape != cube.shape:
        raise ValueError(
            f"{truth.source}: ground truth is {truth.labels.shape}, the cube {cube.shape}"
        )
    pool = pool or info.pool
    rows, cols = np.nonzero(truth.labels)
    labels = truth.labels[rows, cols] - 1
    windows = PixelWindows(cube, rows, cols, window, labels, truth.classes)
    transform = encoder_transform(info, cube.n_bands, "the cube's")
    feats, _ = extract_features(encoder, windows, transform, pool, batch_size, device)
    return WindowFeatures(feats, labels, rows, cols, truth, window, pool)


def classify_pixels(
    features: WindowFeatures,
    budget: str | int | float | LabelSpec,
    seed: int = 0,
    **probe_options,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Train a linear probe on a few labelled pixels' features and score all the other ones.

    Args:
        features: From `window_features`; one extraction serves every budget and seed.
        budget: Training pixels per class: a count (10, "10") or a fraction (0.05, "5%").
        seed: Seed of the split and of the probe.
        **probe_options: Passed to `fit_probe` (epochs, batch_size, base_lr, warmup_epochs).

    Returns:
        `(result, predicted, train_mask)`: the scores and settings (`oa`, `aa` in percent,
        `kappa`, `per_class`, `confusion`, `n_train`, `n_test`, ...); the predicted map
        `[H, W]` (classes 1..K at every labelled pixel, 0 elsewhere); the training pixels
        `[H, W]`.
    """
    spec = parse_label_spec(budget)
    truth, labels = features.truth, features.labels
    train_idx, test_idx = pixel_split(labels, spec, seed, truth.classes)
    targets = torch.as_tensor(labels)
    n_classes = len(truth.classes)
    probe, summary = fit_probe(
        features.feats[train_idx], targets[train_idx], n_classes, seed=seed, **probe_options
    )
    with torch.no_grad():
        predicted = probe(features.feats).argmax(dim=1)

    matrix = confusion_matrix(predicted[test_idx], targets[test_idx], n_classes)
    result = {
        "kind": "pixels",
        **agreement_scores(matrix),
        "per_class": per_class_accuracy(matrix, truth.classes),
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "n_classes": n_classes,
        "labels": str(spec),
        "seed": seed,
        "window": features.window,
        "pool": features.pool,
        "probe": summary,
        "confusion": matrix.tolist(),
        "classes": truth.classes,
    }
    rows, cols = features.rows, features.cols
    predicted_map = np.zeros(truth.labels.shape, dtype=np.int64)
    predicted_map[rows, cols] = predicted.numpy() + 1
    train_mask = np.zeros(truth.labels.shape, dtype=bool)
    train_mask[rows[train_idx], cols[train_idx]] = True
    return result, predicted_map, train_mask


def result_name(spec: LabelSpec, seed: int) -> str:
    """`pixels-10perclass-seed0` or `pixels-5pct-seed0`: one result file per protocol."""
    if spec.per_class is not None:
        budget = f"{spec.per_class}perclass"
    else:
        budget = f"{100 * spec.fraction:g}pct".replace(".", "p")
    return f"pixels-{budget}-seed{seed}"


def pixel_map_figure(
    truth: GroundTruth,
    predicted: np.ndarray,
    train_mask: np.ndarray,
    path: str | Path,
    title: str = "",
) -> Path:
    """Ground truth, predicted classes and errors side by side, one colour per class.

    Unlabelled pixels are black; the error panel shows wrong test pixels in red, right ones in
    grey and the training pixels in white.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n = len(truth.classes)
    palette = plt.get_cmap("tab20" if n > 10 else "tab10")
    colours = [(0.0, 0.0, 0.0)] + [palette(k % palette.N)[:3] for k in range(n)]
    classes = ListedColormap(colours)
    labelled = truth.labels > 0
    errors = np.zeros((*truth.labels.shape, 3))
    errors[labelled & (predicted == truth.labels)] = 0.55
    errors[labelled & (predicted != truth.labels)] = (0.85, 0.1, 0.1)
    errors[train_mask] = 1.0

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    for ax, picture, name in zip(
        axes,
        (truth.labels, predicted, errors),
        ("ground truth", "predicted", "errors (red), training pixels (white)"),
        strict=True,
    ):
        if picture.ndim == 2:
            ax.imshow(picture, cmap=classes, vmin=0, vmax=n, interpolation="nearest")
        else:
            ax.imshow(picture, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=colours[k + 1], label=name) for k, name in enumerate(truth.classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(n, 8), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
