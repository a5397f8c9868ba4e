"""Medical volumes and DICOM files as an image set of 2-D slices (`SliceImages`).

Volumes are cut into 2-D slices along `slice_axis` of `[A0, A1, A2]`: a NIfTI file's voxel axes; the
rows, columns and frames of a multi-frame DICOM file; the rows, columns and slices of a DICOM
series. A slice keeps the two other axes in that order (height = the lower one). Values are in
the files' units (`sslvit.data.dicom`, `sslvit.data.nifti`): Hounsfield units for CT.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from sslvit.data.dicom import (
    dicom_frames,
    dicom_header,
    is_dicom_file,
    read_dicom,
    read_dicom_series,
)
from sslvit.data.folders import (
    TIE_RULE,
    _channels_compatible,
    _classes_from_folders,
    _match_channels,
    _probe_all,
    _sorted_classes,
    report_skipped,
    set_channels,
)
from sslvit.data.nifti import is_nifti_name, read_nifti
from sslvit.data.readers import READABLE_EXTENSIONS, UnreadableImageError, read_image

logger = logging.getLogger(__name__)

_AXIS_LETTERS = "xyz"
# Decoded volumes kept per process, so that reading slice after slice decodes a file once.
_CACHE_BYTES = 512 * 2**20


class _Volume(NamedTuple):
    """What a slice is cut from: a NIfTI file ("nifti", its 4th-axis index `t`), a multi-frame
    DICOM file ("frames") or a DICOM series ("series")."""

    kind: str
    paths: tuple[Path, ...]
    t: int = 0


class SliceImages:
    """Every 2-D image in a medical file or folder, in name order.

    Items, named relative to the folder (or to the file's folder):
        - a NIfTI volume: its slices along `slice_axis`, "head.nii.gz#z012" (letters x, y, z for
          axes 0, 1, 2; a 4-D file's volumes as "fmri.nii.gz#t003z012");
        - a multi-frame DICOM file: its frames, "cine.dcm#f007"; along axis 0 or 1, slices of
          its rows x columns x frames volume ("cine.dcm#x040"); colour files give frames only;
        - single-frame DICOM files: one image each, named by their path; along axis 0 or 1, the
          files of each series (same folder and SeriesInstanceUID) are stacked in slice order
          (`read_dicom_series`) and cut: "ct/SERIES_UID#y100"; files of another size than
          most of their series are skipped;
        - other readable images (PNG, TIFF, ...): one each, as in `FolderImages`.
    Frame, slice and volume indices have at least three digits, more where the count needs
    them, so that names sort in index order. Constant slices of volumes (background only) are
    skipped and counted. Labels come from class sub-folders; unreadable files and channel
    mismatches are handled as `FolderImages` does. Every file is decoded once while indexing,
    volumes included.

    Args:
        source: A folder (searched recursively) or one NIfTI or DICOM file.
        labeled: As for `FolderImages`.
        strict: Raise on the first unreadable file instead of skipping it.
        in_chans: Channel count to read every image at, instead of the most common one.
        slice_axis: Volume axis to cut along, -3..2; -1 (the last) by default.

    Attributes:
        names, labels, classes, in_chans, skipped: As for `FolderImages`.
        native_chans: Channels of each item in its file, before matching `in_chans`.
        n_empty: Constant slices left out.
    """

    def __init__(
        self,
        source: str | Path,
        labeled: bool | None = None,
        strict: bool = False,
        in_chans: int | None = None,
        slice_axis: int = -1,
    ) -> None:
        if not -3 <= int(slice_axis) <= 2:
            raise ValueError(f"slice axis {slice_axis}: must be one of 0, 1, 2 (or -3..-1)")
        self.axis = int(slice_axis) % 3
        self._cache: OrderedDict = OrderedDict()
        source = Path(source)
        if source.is_file():
            self.root, files = source.parent, [source.name]
        else:
            self.root, files = source, sorted(name for name, _ in walk_images(source))
        if not files:
            raise ValueError(f"{source}: no image, DICOM or NIfTI files found")
        file_classes = _classes_from_folders(self.root, files, labeled) if source.is_dir() else None
        if labeled and file_classes is None:
            raise ValueError(f"{source}: labels come from class sub-folders; this is one file")

        self.n_empty = 0
        items, problems = self._index(files)
        self.in_chans = in_chans or set_channels(Counter(n for _, _, n, _ in items))
        for name, _, n_chans, _ in items:
            if not _channels_compatible(n_chans, self.in_chans):
                problems[name] = (
                    f"has {n_chans} channels; the set is read with {self.in_chans}{TIE_RULE}"
                )
        self._report(source, problems, len(files), strict or source.is_file())
        items = sorted((i for i in items if i[0] not in problems), key=lambda i: i[0])
        if not items:
            raise ValueError(f"{source}: none of the {len(files)} files gives a readable image")

        self.names = [name for name, *_ in items]
        self._items = [item for _, item, _, _ in items]
        self.native_chans = [n_chans for _, _, n_chans, _ in items]
        if file_classes is None:
            self.labels, self.classes = None, None
        else:
            of_file = dict(zip(files, file_classes, strict=True))
            item_classes = [of_file[files[k]] for *_, k in items]
            self.classes = _sorted_classes(set(item_classes))
            self.labels = [self.classes.index(c) for c in item_classes]

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self) -> dict:
        # data-loading workers start with an empty cache instead of a copy of the parent's
        return {**self.__dict__, "_cache": OrderedDict()}

    def read(self, i: int) -> torch.Tensor:
        """Item `i` as float32 `[in_chans, H, W]` in the file's units (HU for CT)."""
        source, index = self._items[i]
        if isinstance(source, _Volume):
            image = torch.from_numpy(self._slice(source, index)[None])
        elif index is None:
            image = read_image(source)
        else:
            image = torch.from_numpy(read_dicom(source, index).astype(np.float32))
        return _match_channels(image, self.in_chans, self.root / self.names[i])

    def _index(self, files: list[str]):
        """`(name, (source, index), n_chans, file number)` per item, and problems by name."""
        found, problems, plain, series = [], {}, [], {}
        for k, name in enumerate(files):
            path = self.root / name
            try:
                if is_nifti_name(name):
                    found += self._volume_items(name, k, path)
                elif is_dicom_file(path):
                    found += self._dicom_items(name, k, plain, series)
                else:
                    plain.append((name, k))
            except UnreadableImageError as err:
                problems[name] = str(err).removeprefix(f"{path}: ")
        for (folder, uid), members in series.items():
            stem = uid if folder == "." else f"{folder}/{uid}"
            members = _same_size(members, problems)
            paths = tuple(self.root / name for name, _, _ in members)
            try:
                found += self._volume_items(stem, members[0][1], paths)
            except UnreadableImageError as err:
                problems[members[0][0]] = str(err).removeprefix(f"{paths[0]}: ")
        probed = _probe_all([self.root / name for name, _ in plain])
        for (name, k), (n_chans, reason) in zip(plain, probed, strict=True):
            if n_chans is not None:
                found.append((name, (self.root / name, None), n_chans, k))
            else:
                problems[name] = reason
        return found, problems

    def _dicom_items(self, name: str, k: int, plain: list, series: dict) -> list[tuple]:
        """The frames of a multi-frame file or its volume's slices; single images join `plain`
        (or, cut along axis 0 or 1, their `series`)."""
        path = self.root / name
        header = dicom_header(path)
        if "Rows" not in header:
            read_dicom(path)  # raises, naming what the file holds instead
        n_chans = int(header.get("SamplesPerPixel", 1))
        if header.get("PhotometricInterpretation") == "PALETTE COLOR":
            n_chans = 3
        n_frames = dicom_frames(header)
        along_frames = self.axis == 2 or n_chans != 1
        if n_frames > 1 and along_frames:
            read_dicom(path, 0)  # fails now if no decoder handles the transfer syntax
            width = max(3, len(str(n_frames - 1)))
            return [(f"{name}#f{f:0{width}d}", (path, f), n_chans, k) for f in range(n_frames)]
        if n_frames > 1:
            return self._volume_items(name, k, path)
        if along_frames:
            plain.append((name, k))
        else:
            uid = str(header.get("SeriesInstanceUID", name))
            size = (header.get("Rows"), header.get("Columns"))
            series.setdefault((str(Path(name).parent), uid), []).append((name, k, size))
        return []

    def _volume_items(self, stem: str, k: int, paths: Path | tuple[Path, ...]) -> list[tuple]:
        """Non-empty slices of a NIfTI file, multi-frame DICOM file or series; counts the rest."""
        if isinstance(paths, Path):
            kind = "nifti" if is_nifti_name(paths) else "frames"
            paths = (paths,)
        else:
            kind = "series"
        data = self._load(kind, paths)
        letter, n_slices, n_t = _AXIS_LETTERS[self.axis], data.shape[self.axis], data.shape[3]
        width, t_width = max(3, len(str(n_slices - 1))), max(3, len(str(n_t - 1)))
        items = []
        for t in range(n_t):
            volume = _Volume(kind, paths, t)
            keep = _nonempty(data[..., t], self.axis)
            prefix = f"{stem}#" + (f"t{t:0{t_width}d}" if n_t > 1 else "") + letter
            items += [(f"{prefix}{s:0{width}d}", (volume, s), 1, k) for s in np.flatnonzero(keep)]
            self.n_empty += int((~keep).sum())
        return items

    def _load(self, kind: str, paths: tuple[Path, ...]) -> np.ndarray:
        """`[A0, A1, A2, T]` float32, decoded once and kept while the cache has room."""
        key = (kind, paths)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if kind == "nifti":
            data = read_nifti(paths[0])
        elif kind == "frames":
            n_frames = dicom_frames(dicom_header(paths[0]))
            frames = [read_dicom(paths[0], f)[0] for f in range(n_frames)]
            data = np.stack(frames, axis=-1).astype(np.float32)[..., None]
        else:
            data = read_dicom_series(paths)[0][..., None]
        self._cache[key] = data
        while len(self._cache) > 1 and sum(a.nbytes for a in self._cache.values()) > _CACHE_BYTES:
            self._cache.popitem(last=False)
        return data

    def _slice(self, volume: _Volume, index: int) -> np.ndarray:
        kind, paths, t = volume
        data = self._load(kind, paths)[..., t]
        return np.ascontiguousarray(np.take(data, index, axis=self.axis), dtype=np.float32)

    def _report(self, source: Path, problems: dict, n_files: int, strict: bool) -> None:
        if self.n_empty:
            logger.info("%s: skipped %d empty (constant) slices", source, self.n_empty)
        if not problems:
            self.skipped = []
            return
        self.skipped = report_skipped(
            self.root, source, problems, n_files, strict, what="files or images"
        )


def walk_images(root: Path) -> Iterator[tuple[str, bool]]:
    """`(path relative to root, is NIfTI or DICOM)` of each image, NIfTI and DICOM file.

    Hidden files and folders are left out, and so are DICOMDIR index files.
    """
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if filename.startswith(".") or filename.upper() == "DICOMDIR":
                continue
            path = Path(folder) / filename
            medical = is_nifti_name(filename) or is_dicom_file(path)
            if medical or path.suffix.lower() in READABLE_EXTENSIONS:
                yield path.relative_to(root).as_posix(), medical


def _same_size(members: list[tuple], problems: dict) -> list[tuple]:
    """The `(name, k, (rows, columns))` of a series that have its most common size; the others
    go to `problems`, so that one odd file does not cost the whole series."""
    sizes = Counter(size for *_, size in members)
    rows, columns = sizes.most_common(1)[0][0]
    for name, _, size in members:
        if size != (rows, columns):
            problems[name] = (
                f"{size[0]}x{size[1]} pixels, the other slices of its series are {rows}x{columns}"
            )
    return [member for member in members if member[2] == (rows, columns)]


def _nonempty(volume: np.ndarray, axis: int) -> np.ndarray:
    """Per slice along `axis` of a 3-D array: whether it holds two different finite values."""
    flat = np.moveaxis(volume, axis, 0).reshape(volume.shape[axis], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: empty
        return np.nanmax(flat, axis=1) > np.nanmin(flat, axis=1)
