"""Medical imagery as image sets: CT windows, MedMNIST `.npz` sets, and `open_medical`.

`open_medical` picks the reader for a file or folder: a MedMNIST `.npz` gives `ArrayImages`;
NIfTI and DICOM files (`sslvit.data.nifti`, `sslvit.data.dicom`), or a folder holding any, give
their 2-D slices (`sslvit.data.slices.SliceImages`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from sslvit.data.arrays import ArrayImages, ImageSet
from sslvit.data.dicom import is_dicom_file
from sslvit.data.nifti import is_nifti_name
from sslvit.data.slices import SliceImages, walk_images

MEDMNIST_SPLITS = ("train", "val", "test")
# CT windows as (centre, width) in HU, the usual published values (Radiopaedia, "Windowing (CT)";
# subdural is the middle of its published ranges, centre 50-100 and width 130-300).
WINDOWS = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "bone": (400.0, 1800.0),
}


def parse_window(text: str) -> list[tuple[float, float]]:
    """`(centre, width)` of each window in "lung", "brain,subdural,bone" or "-600:1500".

    Raises:
        ValueError: An item is neither a preset nor CENTRE:WIDTH with a finite centre and a
            finite positive width (empty items, as in "" or "lung,", included).
    """
    windows = []
    for item in str(text).split(","):
        key = item.strip().lower().replace("-", "_")
        if key in WINDOWS:
            windows.append(WINDOWS[key])
            continue
        centre, sep, width = item.partition(":")
        try:
            window = (float(centre), float(width))
        except ValueError:
            window = None
        if not sep or window is None or not (math.isfinite(window[0]) and 0 < window[1] < math.inf):
            raise ValueError(
                f"window {item.strip()!r}: expected a preset ({', '.join(WINDOWS)}) or "
                "CENTRE:WIDTH in HU, finite, with a positive width, e.g. -600:1500"
            )
        windows.append(window)
    return windows


def apply_window(image: torch.Tensor, centre: float, width: float) -> torch.Tensor:
    """`clip((x - (centre - width / 2)) / width, 0, 1)`: the window's range onto [0, 1]."""
    return ((image - (centre - width / 2)) / width).clamp(0.0, 1.0)


class WindowedImages:
    """An image set of one channel seen through windows: one output channel per window.

    Args:
        images: A one-channel image set (e.g. CT in HU).
        window: As for `parse_window`.
    """

    def __init__(self, images: ImageSet, window: str) -> None:
        self.windows = parse_window(window)
        # a colour file in a mostly grey set would be read as grey: its luma is not in HU
        chans = getattr(images, "native_chans", None) or [images.in_chans]
        bad = next((k for k, n_chans in enumerate(chans) if n_chans != 1), None)
        if bad is not None:
            name = images.names[bad] if len(images) else "the set"
            raise ValueError(
                f"window {window!r}: windows apply to one-channel images; {name} has {chans[bad]}"
            )
        self.images = images
        self.names, self.labels, self.classes = images.names, images.labels, images.classes
        self.in_chans = len(self.windows)

    def __len__(self) -> int:
        return len(self.images)

    def read(self, i: int) -> torch.Tensor:
        """Item `i` as float32 `[n_windows, H, W]` in [0, 1]."""
        image = self.images.read(i)
        return torch.cat([apply_window(image, c, w) for c, w in self.windows])


def medmnist_spec(spec: str | Path) -> tuple[Path, str] | None:
    """`(file, split)` when `spec` is a MedMNIST `.npz` ("f.npz", "f.npz:val"), else None.

    A MedMNIST file holds `train_images`, `val_images`, `test_images` and their `*_labels`
    (Yang et al., 2023, "MedMNIST v2", Scientific Data 10:41). Other `.npz` files give None.
    """
    text = str(spec)
    base, sep, split = text.rpartition(":")
    if not (sep and base.lower().endswith(".npz") and Path(base).is_file()):
        base, split = text, "train"
    path = Path(base)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
    except Exception as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from None
    present = [s for s in MEDMNIST_SPLITS if f"{s}_images" in keys]
    if not present:
        return None  # another .npz ("cube.npz:KEY" names an array of a hyperspectral cube)
    if split not in MEDMNIST_SPLITS:
        raise ValueError(
            f"{path}: unknown split {split!r}; this MedMNIST file holds {', '.join(present)} "
            f"(write {path}:{present[-1]})"
        )
    return path, split


def open_medmnist(path: str | Path, split: str = "train", labeled: bool | None = None):
    """One split of a MedMNIST `.npz` as an `ArrayImages`: grey `[N, H, W]` or RGB `[N, H, W, 3]`.

    Labels come from `{split}_labels`, shape `(N, 1)` or `(N,)`; the classes are "0".."K-1",
    K counted over every split, so all splits of a file name the same classes. Items are named
    "{split}/{index}".

    Raises:
        ValueError: The split is missing, the images are 3-D volumes, or labels are asked for
            and missing or multi-label (ChestMNIST).
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as archive:
        present = [s for s in MEDMNIST_SPLITS if f"{s}_images" in archive.files]
        if split not in present:
            raise ValueError(f"{path}: no {split} split; it holds {', '.join(present)}")
        images = archive[f"{split}_images"]
        label_sets = {s: archive[f"{s}_labels"] for s in present if f"{s}_labels" in archive.files}
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        raise ValueError(
            f"{path}: {split}_images of shape {images.shape} are 3-D volumes; "
            "only 2-D MedMNIST sets (grey or RGB) are supported"
        )
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    names = [f"{split}/{i:0{len(str(len(images) - 1))}d}" for i in range(len(images))]
    if labeled is False or (labeled is None and split not in label_sets):
        return ArrayImages(images, names=names)
    if split not in label_sets:
        raise ValueError(f"{path}: no {split}_labels for the labelled {split} split")
    for name, labels in label_sets.items():
        if labels.ndim > 1 and labels.shape[1] != 1 or len(labels) == 0:
            raise ValueError(
                f"{path}: {name}_labels has shape {labels.shape}; one class per image is "
                "needed (multi-label sets such as ChestMNIST can only pretrain, unlabelled)"
            )
    if len(label_sets[split]) != len(images):
        raise ValueError(
            f"{path}: {split}_labels holds {len(label_sets[split])} labels for the "
            f"{len(images)} images of {split}_images"
        )
    n_classes = 1 + max(int(labels.max()) for labels in label_sets.values())
    classes = [str(k) for k in range(n_classes)]
    return ArrayImages(images, labels=label_sets[split].reshape(-1), classes=classes, names=names)


def open_medical(
    spec: str | Path,
    labeled: bool | None = None,
    strict: bool = False,
    in_chans: int | None = None,
    slice_axis: int = -1,
) -> ImageSet | None:
    """The medical image set `spec` names, or None when it names none (other readers then try).

    A MedMNIST `.npz` (with an optional ":train", ":val" or ":test") gives `open_medmnist`; a
    NIfTI or DICOM file, or a folder holding at least one, gives `SliceImages`.
    """
    found = medmnist_spec(spec)
    if found is not None:
        return open_medmnist(*found, labeled=labeled)
    path = Path(spec)
    is_medical_file = path.is_file() and (is_nifti_name(path) or is_dicom_file(path))
    if is_medical_file or (path.is_dir() and any(medical for _, medical in walk_images(path))):
        return SliceImages(path, labeled, strict, in_chans, slice_axis)
    return None
