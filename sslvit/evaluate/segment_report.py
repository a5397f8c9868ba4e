"""Segmentation scores from a pixel confusion matrix, predicted masks as PNGs, overlay pictures."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sslvit.data.masks import IGNORE
from sslvit.evaluate.confusion import confusion_matrix


def pixel_confusion(predicted: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts `[K, K]` (true rows, predicted columns) over the pixels not marked `IGNORE`.

    Args:
        predicted: Class indices, any shape.
        targets: Class indices or `IGNORE`, the same shape.
        n_classes: Classes K.
    """
    kept = targets != IGNORE
    return confusion_matrix(predicted[kept], targets[kept], n_classes)


def segmentation_scores(matrix: torch.Tensor, names: list[str]) -> dict:
    """mIoU, per-class IoU and pixel accuracy, in percent, from a whole test set's counts.

    IoU of class k is TP / (TP + FP + FN). The mean runs over the classes that occur in the
    ground truth or the prediction; a class absent from both has no IoU (None) and does not
    count, so it neither helps nor hurts.

    Args:
        matrix: Pixel counts `[K, K]`, true classes in rows, predictions in columns.
        names: Class names, K of them.

    Returns:
        `{"miou", "pixel_acc", "per_class_iou": {name: IoU or None}}`.
    """
    matrix = matrix.double()
    hits = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - hits
    iou = [100.0 * (h / u).item() if u > 0 else None for h, u in zip(hits, union, strict=True)]
    present = [v for v in iou if v is not None]
    total = matrix.sum().item()
    return {
        "miou": float(np.mean(present)) if present else 0.0,
        "pixel_acc": 100.0 * hits.sum().item() / total if total else 0.0,
        "per_class_iou": dict(zip(names, iou, strict=True)),
    }


def save_index_png(values: np.ndarray, path: str | Path, palette: list[int] | None = None) -> Path:
    """Write `[H, W]` values as an 8-bit grey PNG (a palette PNG with `palette`; 16-bit grey
    when a value exceeds 255). Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if values.dtype == np.uint8:
        image = Image.fromarray(values)
        if palette is not None:
            image.putpalette(palette)  # an "L" image with a palette becomes "P", values kept
    else:
        image = Image.fromarray(values.astype(np.uint16))
    image.save(path)
    return path


LEGEND_COLUMNS = 6  # class names per line of the overlay's legend


def class_colours(n_classes: int) -> np.ndarray:
    """RGB in [0, 1] of each class `[K, 3]`: tab10 up to 10 classes, tab20 (repeating) above."""
    import matplotlib

    cycle = 10 if n_classes <= 10 else 20
    return matplotlib.colormaps[f"tab{cycle}"](np.arange(n_classes) % cycle)[:, :3]


def _colours(masks: np.ndarray, n_classes: int, image: np.ndarray) -> np.ndarray:
    """`[H, W]` class indices (or `IGNORE`) blended over an RGB picture `[H, W, 3]`."""
    table = class_colours(n_classes)
    coloured = image.copy()
    kept = masks >= 0
    coloured[kept] = 0.45 * image[kept] + 0.55 * table[masks[kept]]
    return coloured


def _picture(image: torch.Tensor) -> np.ndarray:
    """An image `[C, H, W]` in native units as RGB `[H, W, 3]` in [0, 1], stretched 1-99 %."""
    shown = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
    low, high = torch.quantile(
        shown.flatten()[:: max(1, shown.numel() // 100_000)], torch.tensor([0.01, 0.99])
    )
    scaled = ((shown - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    return scaled.permute(1, 2, 0).numpy().astype(np.float64)


def overlay_figure(
    rows: list[tuple], n_classes: int, path: str | Path, title: str = "", names=None
) -> Path:
    """Image, ground truth and prediction side by side, the classes coloured over the image.

    Args:
        rows: `(name, image [C, H, W] native units, targets [H, W], predicted [H, W])` each;
            targets may hold `IGNORE`, drawn as the bare image.
        n_classes: Classes K (fixes the colours).
        path: PNG file to write.
        title: Line above the picture.
        names: Class names for a legend of the colours under the picture (none without).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for (name, image, targets, predicted), ax in zip(rows, axes, strict=True):
        picture = _picture(image)
        panels = [
            picture,
            _colours(np.asarray(targets), n_classes, picture),
            _colours(np.asarray(predicted), n_classes, picture),
        ]
        for k, (a, panel) in enumerate(zip(ax, panels, strict=True)):
            a.imshow(panel, interpolation="nearest")
            a.set_axis_off()
            a.set_title([name, "ground truth", "prediction"][k], fontsize=9)
    fig.suptitle(title)
    if names:
        from matplotlib.patches import Patch

        handles = [
            Patch(color=colour, label=name)
            for colour, name in zip(class_colours(n_classes), names, strict=True)
        ]
        columns = min(LEGEND_COLUMNS, len(handles))
        fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=8)
        legend_inches = 0.25 + 0.2 * -(-len(handles) // columns)  # inches per legend line
        fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    else:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
