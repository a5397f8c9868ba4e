"""Image sets held in memory, and views onto part of an image set.

An image set is any object with `__len__()`, `read(i) -> Tensor [C, H, W]` (float32, native
units), `names: list[str]`, `labels: list[int] | None`, `classes: list[str] | None` and
`in_chans: int`. `ArrayImages` (here), `FolderImages` (`sslvit.data.folders`) and `Subset` are
the three kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch


class ImageSet(Protocol):
    """What every image set provides."""

    names: list[str]
    labels: list[int] | None
    classes: list[str] | None
    in_chans: int

    def __len__(self) -> int: ...

    def read(self, i: int) -> torch.Tensor: ...


class ArrayImages:
    """An image set backed by one numpy array; each item is converted when it is read.

    Layout rule: a 3-D array is `[N, H, W]` (one channel). A 4-D array is `[N, H, W, C]` when
    its last dimension is at most 4 and its second is larger than 4, and `[N, C, H, W]`
    otherwise.

    Args:
        array: Images, `[N, H, W]`, `[N, H, W, C]` or `[N, C, H, W]`, any real numeric dtype.
        labels: One class index per image, or None.
        classes: Class names; index k names label k. Defaults to "0".."K-1" when labels are
            given.
        names: One id per image; defaults to the zero-padded index.

    Attributes:
        array: The array given, unconverted.

    Raises:
        ValueError: The array has another rank or a non-numeric dtype, or labels, classes and
            names do not match it.
    """

    def __init__(
        self,
        array: np.ndarray,
        labels: Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        array = np.asarray(array)
        if array.ndim not in (3, 4) or array.dtype.kind not in "biuf":
            raise ValueError(
                f"image array: expected [N, H, W] or [N, H, W, C] or [N, C, H, W] of numbers, "
                f"got shape {array.shape} dtype {array.dtype}"
            )
        self.array = array
        self._channels_last = array.ndim == 4 and array.shape[-1] <= 4 < array.shape[1]
        if array.ndim == 3:
            self.in_chans = 1
        else:
            self.in_chans = array.shape[-1] if self._channels_last else array.shape[1]

        n = len(array)
        self.names = (
            list(names) if names is not None else [f"{i:0{len(str(n - 1))}d}" for i in range(n)]
        )
        if len(self.names) != n:
            raise ValueError(f"image array: {len(self.names)} names for {n} images")
        self.labels, self.classes = _check_labels(labels, classes, n)

    def __len__(self) -> int:
        return len(self.array)

    def read(self, i: int) -> torch.Tensor:
        """Item `i` as float32 `[C, H, W]` in the array's units."""
        item = self.array[i]
        if item.ndim == 2:
            item = item[None]
        elif self._channels_last:
            item = np.moveaxis(item, -1, 0)
        return torch.from_numpy(np.ascontiguousarray(item, dtype=np.float32))


class Subset:
    """The items `indices` of another image set, in that order; keeps its classes.

    Args:
        images: The image set to view.
        indices: Positions in `images`, e.g. from `stratified_split`.
    """

    def __init__(self, images: ImageSet, indices: Sequence[int] | np.ndarray) -> None:
        indices = [int(i) for i in indices]
        n = len(images)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise ValueError(f"subset: index {bad[0]} is outside an image set of {n} items")
        self.images = images
        self.indices = indices
        self.names = [images.names[i] for i in indices]
        self.labels = None if images.labels is None else [images.labels[i] for i in indices]
        self.classes = images.classes
        self.in_chans = images.in_chans

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, i: int) -> torch.Tensor:
        """Item `i` of the subset as float32 `[C, H, W]`."""
        return self.images.read(self.indices[i])


def _check_labels(
    labels: Sequence[int] | None, classes: Sequence[str] | None, n: int
) -> tuple[list[int] | None, list[str] | None]:
    if labels is None:
        return None, None if classes is None else list(classes)
    labels = [int(label) for label in np.asarray(labels).reshape(-1)]
    if len(labels) != n:
        raise ValueError(f"image array: {len(labels)} labels for {n} images")
    if classes is None:
        classes = [str(k) for k in range(max(labels, default=-1) + 1)]
    classes = list(classes)
    out_of_range = [label for label in labels if not 0 <= label < len(classes)]
    if out_of_range:
        raise ValueError(
            f"image array: label {out_of_range[0]} is outside 0..{len(classes) - 1} "
            f"({len(classes)} classes)"
        )
    return labels, classes
