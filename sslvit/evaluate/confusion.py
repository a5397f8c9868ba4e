"""Where a classifier goes wrong: the confusion matrix, per-class accuracy and their picture."""

from pathlib import Path

import torch


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts `[K, K]` with true classes in rows and predicted classes in columns.

    Args:
        predicted: Predicted class indices `[N]`.
        labels: True class indices `[N]`.
        n_classes: Number of classes K.

    Returns:
        int64 `[K, K]`; entry (i, j) counts items of class i predicted as j.
    """
    flat = labels.long().cpu() * n_classes + predicted.long().cpu()
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_accuracy(matrix: torch.Tensor, classes: list[str]) -> dict[str, float | None]:
    """Accuracy in percent of each class (recall), None for a class absent from the labels."""
    totals = matrix.sum(dim=1)
    return {
        name: (100.0 * matrix[k, k].item() / totals[k].item()) if totals[k] else None
        for k, name in enumerate(classes)
    }


def confusion_figure(matrix: torch.Tensor, classes: list[str], path: str | Path, title: str = ""):
    """Draw the confusion matrix, each row normalised to the class's share, counts written in.

    Args:
        matrix: Counts `[K, K]` from `confusion_matrix`.
        classes: Class names, K of them.
        path: PNG file to write; folders are created.
        title: Line above the picture.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    shares = matrix.double() / matrix.sum(dim=1, keepdim=True).clamp_min(1)
    side = min(20.0, 2.0 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    shown = ax.imshow(shares.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class")
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90 if max(map(len, classes)) > 3 else 0)
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    colour = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
