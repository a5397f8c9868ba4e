"""Ground truth of a hyperspectral scene: the class of each pixel, from a label map or abundances.

A ground-truth file is named as a cube is (`sslvit.data.cubes`): `gt.mat`, `gt.mat:V`, `.npy`,
`.npz:V` or ENVI `.hdr`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslvit.data.cubes import array_listing, load_arrays, split_spec
from sslvit.data.envi import envi_header_of, read_envi
from sslvit.data.readers import UnreadableImageError


@dataclass
class GroundTruth:
    """Per-pixel classes of a scene: `labels` int64 `[H, W]`, 0 = unlabelled, k = `classes[k-1]`."""

    labels: np.ndarray
    classes: list[str]
    source: str


def read_ground_truth(spec: str | Path, shape: tuple[int, int]) -> GroundTruth:
    """Read per-pixel classes for a scene of `shape` (rows, columns), 0 = unlabelled.

    Two kinds are recognised by their shape and values:
        - a label map `[H, W]` of whole numbers >= 0 (0 = unlabelled, 1..K the classes);
        - abundances, the fraction of each of K materials at each pixel: `[H, W, K]`, or in
          a `.mat` K by pixels (either way round) in column-major pixel order, as the cube.
          The class of a pixel is its largest abundance (1..K); pixels whose abundances are
          all zero or not finite stay unlabelled.

    Without a variable name the largest array that fits the scene is used. Class names come
    from a `.mat` cell array of K strings when there is one, else "1".."K".

    Raises:
        UnreadableImageError: The file has no array that fits the scene, or the named one
            does not.
    """
    path, variable = split_spec(spec)
    if not path.is_file():
        raise UnreadableImageError(f"{path}: no such ground-truth file")
    header = envi_header_of(path)
    arrays = {"": read_envi(header)[0][0]} if header is not None else load_arrays(path)
    height, width = shape
    pixel_lists = path.suffix.lower() == ".mat"
    fits = {
        k: v
        for k, v in arrays.items()
        if v.dtype.kind in "biuf" and _gt_kind(v, height, width, pixel_lists)
    }
    if variable is not None:
        if variable not in arrays:
            raise UnreadableImageError(f"{path}: no variable {variable!r}; {array_listing(arrays)}")
        if variable not in fits:
            raise UnreadableImageError(
                f"{path}: {variable} has shape {arrays[variable].shape}, which fits neither a "
                f"label map nor abundances of a {height} x {width} scene"
            )
        name = variable
    elif fits:
        name = max(fits, key=lambda k: fits[k].size)
    else:
        raise UnreadableImageError(
            f"{path}: no array fits a {height} x {width} scene as a label map [H, W] or "
            f"abundances [H, W, K] / [K, H*W]; {array_listing(arrays)}"
        )
    array = fits[name]
    source = f"{path}:{name}" if name else str(path)
    if _gt_kind(array, height, width, pixel_lists) == "labels":
        labels = _label_map(array, height, width, source)
        n_classes = int(labels.max())
        classes = [str(k) for k in range(1, n_classes + 1)]
    else:
        labels = _abundance_classes(array, height, width, path)
        n_classes = int(labels.max())
        classes = _class_names(arrays, n_classes) or [str(k) for k in range(1, n_classes + 1)]
    if n_classes < 1:
        raise UnreadableImageError(f"{source}: no labelled pixel (every value is 0)")
    return GroundTruth(labels, classes, source)


def _gt_kind(array: np.ndarray, height: int, width: int, pixel_lists: bool) -> str | None:
    """ "labels", "abundances" or None, from the array's shape against the scene's.

    With `pixel_lists` (a `.mat`), 2-D arrays with a pixels axis count too: a single row or
    column is a label map, K rows or columns are abundances.
    """
    shape, n_pixels = array.shape, height * width
    if shape == (height, width):
        return "labels"
    if array.ndim == 3 and shape[:2] == (height, width):
        return "abundances"
    if pixel_lists and array.ndim == 2 and n_pixels in shape:
        return "labels" if min(shape) == 1 else "abundances"
    return None


def _label_map(array: np.ndarray, height: int, width: int, source: str) -> np.ndarray:
    """`[H, W]` int64 from a label map `[H, W]` or a column-major pixel list `[1, H*W]`."""
    pixel_list = array.shape != (height, width)
    values = array.astype(np.float64).reshape(height, width, order="F" if pixel_list else "C")
    if not np.isfinite(values).all() or (values < 0).any() or (values != np.round(values)).any():
        raise UnreadableImageError(
            f"{source}: a label map must hold whole numbers >= 0 (0 = unlabelled)"
        )
    return values.astype(np.int64)


def _abundance_classes(array: np.ndarray, height: int, width: int, path: Path) -> np.ndarray:
    """`[H, W]` classes 1..K from abundances `[H, W, K]` or `[K, H*W]` / `[H*W, K]`."""
    if array.ndim == 2:
        if array.shape[1] != height * width:
            array = array.T
        array = array.reshape(array.shape[0], height, width, order="F")  # [K, H, W]
    else:
        array = np.moveaxis(array, -1, 0)
    values = np.where(np.isfinite(array), array, 0.0)
    labels = values.argmax(axis=0) + 1
    labels[(values <= 0).all(axis=0)] = 0
    return labels.astype(np.int64)


def _class_names(arrays: dict[str, np.ndarray], n_classes: int) -> list[str] | None:
    """Names from a cell array (object array) of `n_classes` strings, if the file has one."""
    for value in arrays.values():
        if value.dtype != object or value.size != n_classes:
            continue
        names = []
        for item in value.reshape(-1):
            item = np.asarray(item).reshape(-1)
            if item.size != 1 or item.dtype.kind not in "US":
                break
            names.append(str(item[0]))
        else:
            return names
    return None
