"""Image sets found on disk: a folder tree, labels from class sub-folders or a CSV."""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from sslvit.data.arrays import ArrayImages, ImageSet
from sslvit.data.cubes import is_cube_spec, open_cube_tiles
from sslvit.data.readers import (
    READABLE_EXTENSIONS,
    UnreadableImageError,
    is_readable_name,
    read_array,
    read_image,
)
from sslvit.data.sample import SAMPLE_SPLITS, load_sample

logger = logging.getLogger(__name__)

_N_NAMED_IN_WARNING = 5
_MIN_FILES_FOR_PROCESSES = 2000
# ITU-R BT.601 luma weights, the ones PIL uses for RGB -> L.
_LUMA = (0.299, 0.587, 0.114)


class FolderImages:
    """Every readable image under a folder, sorted by relative path.

    Files and folders whose name starts with "." are skipped; extensions match
    case-insensitively (see `sslvit.data.readers.READABLE_EXTENSIONS`). `names` are paths
    relative to `root`, with "/" separators.

    `in_chans` is the most common channel count (the larger on a tie). Grey images in an RGB
    set are read as three equal channels and RGB images in a grey set as their luma, so a few
    odd files in a photo collection do not stop a run (one log line counts them); any other
    channel mismatch makes the file unreadable.

    Args:
        root: The folder to scan (recursively).
        labeled: None: labels from the first-level sub-folders when every image sits inside
            one and there are at least two of them. True: labels from the sub-folders (or from
            `labels_csv`), an error if an image sits directly in `root`. False: no labels.
        strict: Raise on the first unreadable file instead of skipping it.
        check: Decode every file once while scanning, skipping unreadable ones (one warning
            lists them). Without it, the scan trusts the file names and reads the first file
            only, to learn `in_chans`.
        labels_csv: A CSV with a header and columns `path,label` (path relative to `root`);
            when given, it lists the images and their classes instead of the folder tree.
            Classes are sorted numerically when all labels are integers, else as text.
        in_chans: With `check=False`, the channel count to read images at (e.g. an encoder's)
            instead of the first file's; files that cannot be matched to it are unreadable.

    Attributes:
        root: The folder given.
        names: Path of each image relative to `root`.
        paths: Full path of each image.
        labels: Class index per image, or None.
        classes: Class names, or None.
        in_chans: Channels of every image that `read` returns.
        skipped: `(relative path, reason)` of every file left out.
        native_chans: Channels of each image in its file (only when the files were checked).

    Raises:
        ValueError: `root` is missing, not a folder or holds no image files; `labeled=True`
            without class sub-folders; a malformed `labels_csv`.
        UnreadableImageError: With `strict=True`, a file cannot be read.
    """

    def __init__(
        self,
        root: str | Path,
        labeled: bool | None = None,
        strict: bool = False,
        check: bool = True,
        labels_csv: str | Path | None = None,
        in_chans: int | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise ValueError(f"{self.root}: no such folder")
        if not self.root.is_dir():
            raise ValueError(f"{self.root}: not a folder")

        if labels_csv is not None and labeled is not False:
            names, class_names = _read_labels_csv(Path(labels_csv))
        else:
            names = _scan(self.root)
            class_names = _classes_from_folders(self.root, names, labeled)
        if not names:
            extensions = ", ".join(sorted(READABLE_EXTENSIONS | {".nii", ".nii.gz"}))
            raise ValueError(
                f"{self.root}: no image files found (looked for {extensions}, and DICOM files "
                "of any name)"
            )

        self.skipped: list[tuple[str, str]] = []
        if check:
            names, class_names, self.in_chans = self._check(names, class_names, strict)
        elif in_chans is not None:
            self.in_chans = in_chans
        else:
            self.in_chans = self._first_readable_chans(names, strict)

        self.names = names
        self.paths = [self.root / name for name in names]
        if class_names is None:
            self.labels, self.classes = None, None
        else:
            self.classes = _sorted_classes(set(class_names))
            index = {name: k for k, name in enumerate(self.classes)}
            self.labels = [index[name] for name in class_names]

    def __len__(self) -> int:
        return len(self.paths)

    def _first_readable_chans(self, names: list[str], strict: bool) -> int:
        """Channels of the first file that decodes (bad files are the reader's to report)."""
        error = None
        for name in names[:50]:
            try:
                return read_array(self.root / name).shape[0]
            except UnreadableImageError as err:
                if strict:
                    raise
                error = error or err
        raise error

    def read(self, i: int) -> torch.Tensor:
        """Item `i` as float32 `[in_chans, H, W]` in the file's native units."""
        image = read_image(self.paths[i])
        return _match_channels(image, self.in_chans, self.paths[i])

    def _check(
        self, names: list[str], class_names: list[str] | None, strict: bool
    ) -> tuple[list[str], list[str] | None, int]:
        """Decode every file; drop the unreadable ones. Returns kept names, classes, in_chans."""
        results = _probe_all([self.root / name for name in names])

        counts = Counter(n_chans for n_chans, _ in results if n_chans is not None)
        in_chans = set_channels(counts)
        converted = {
            n: k for n, k in counts.items() if n != in_chans and _channels_compatible(n, in_chans)
        }
        for n_chans, n_files in sorted(converted.items()):
            how = "three equal channels" if n_chans == 1 else "their luma"
            logger.info(
                "%s: %d of %d images have %d channel%s; the set is read with %d, so they become %s",
                self.root,
                n_files,
                len(names),
                n_chans,
                "" if n_chans == 1 else "s",
                in_chans,
                how,
            )
        problems = {}
        for name, (n_chans, reason) in zip(names, results, strict=True):
            if n_chans is None:
                problems[name] = reason
            elif not _channels_compatible(n_chans, in_chans):
                problems[name] = (
                    f"has {n_chans} channels; the set is read with {in_chans}{TIE_RULE}"
                )

        _warn_mixed_bit_depths(self.root, [d for n, d in results if n is not None])
        if problems:
            self.skipped = report_skipped(self.root, self.root, problems, len(names), strict)
        keep = [k for k, name in enumerate(names) if name not in problems]
        self.native_chans = [results[k][0] for k in keep]  # before matching in_chans
        if not keep:
            raise ValueError(f"{self.root}: none of the {len(names)} image files is readable")
        kept_classes = None if class_names is None else [class_names[k] for k in keep]
        return [names[k] for k in keep], kept_classes, in_chans


def _warn_mixed_bit_depths(root: Path, dtypes: list[str]) -> None:
    """Warn when integer files of different bit depths share a folder (8-bit PNGs beside 16-bit
    TIFFs): values are read in each file's own units, so one mean and std per channel cannot
    normalise both, and the images of the smaller range become nearly constant."""
    depths = Counter(d for d in dtypes if d.startswith(("uint", "int")))
    if len(depths) < 2:
        return
    counts = ", ".join(f"{n} {d}" for d, n in sorted(depths.items(), key=lambda x: -x[1]))
    logger.warning(
        "%s: files of different bit depths (%s) are read in their own units, so one set of "
        "channel statistics cannot fit them all; convert them to one bit depth",
        root,
        counts,
    )


def report_skipped(
    root: Path, source: Path, problems: dict, n_files: int, strict: bool, what: str = "files"
) -> list[tuple[str, str]]:
    """Stop on the first unreadable item (`strict`) or warn once, naming a few.

    Args:
        root: Folder the names in `problems` are relative to.
        source: What the warning names (the folder, or a volume file).
        problems: Reason for each skipped name.
        n_files: How many were looked at.
        strict: Raise `UnreadableImageError` for the first one instead of warning.
        what: The noun counted in the warning.

    Returns:
        The skipped `(name, reason)` pairs, sorted by name.
    """
    skipped = sorted(problems.items())
    first, reason = skipped[0]
    if strict:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnreadableImageError(f"{root / first}: {reason}{more}")
    shown = "; ".join(f"{n} ({r})" for n, r in skipped[:_N_NAMED_IN_WARNING])
    logger.warning(
        "%s: skipped %d of %d %s: %s%s",
        source,
        len(problems),
        n_files,
        what,
        shown,
        " ..." if len(problems) > _N_NAMED_IN_WARNING else "",
    )
    return skipped


def absolute_spec(spec: str) -> str:
    """`spec` (as `open_images` takes it) with a relative file or folder made absolute, so a run
    that saves it can be resumed or shown from any working directory. The built-in sample and
    paths that do not exist (the loader reports those) are returned unchanged; a suffix such as
    `f.npz:val` or `scene.mat:V` is kept."""
    text = str(spec)
    if text == "sample" or text.startswith("sample:"):
        return text
    if Path(text).exists():
        return os.path.abspath(text)
    head, colon, tail = text.rpartition(":")
    if colon and head and Path(head).exists():
        return f"{os.path.abspath(head)}:{tail}"
    return text


# how a folder's channel count is chosen (`set_channels`), as skipped files are told
TIE_RULE = " (the most common count; the larger on a tie)"


def set_channels(counts: Counter) -> int:
    """The channel count a set of images is read with, from how many files have each count:
    the most common; on a tie the larger, so no image loses its colour or bands."""
    return max(counts, key=lambda n: (counts[n], n)) if counts else 0


def check_out_is_folder(out: str | Path) -> None:
    """Refuse a run's `--out` that names an existing file (a run's output is a folder)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise FileExistsError(f"--out {out} is a file; a run writes a folder: choose a new one")


def check_out_outside(out: str | Path, *specs: str | None, what: str = "--out") -> None:
    """Refuse an output folder or file inside one of the data folders `specs` (None and files
    are passed over): a run's pictures, checkpoints and features would be read as images by the
    next command on that folder, and a labelled folder would gain a class named after them.

    Raises:
        ValueError: naming the output (`what` and `out`) and the data folder.
    """
    for spec in specs:
        if spec is None or not Path(spec).is_dir():
            continue
        if Path(out).resolve().is_relative_to(Path(spec).resolve()):
            raise ValueError(
                f"{what} {out} lies inside the data folder {spec}: what is written there would "
                "be read as images (or as a class) by the next command on it; choose an --out "
                "outside it"
            )


def open_images(
    spec: str | Path,
    labeled: bool | None = None,
    strict: bool = False,
    check: bool = True,
    in_chans: int | None = None,
    tile_size: int | None = None,
    tile_stride: int | None = None,
    window: str | None = None,
    slice_axis: int = -1,
) -> ImageSet:
    """Open the image set named on the command line.

    Args:
        spec: A folder, or "sample", "sample:train", "sample:test", "sample:all" for the
            built-in MNIST sample ("sample" is its train split). Also a MedMNIST `.npz`
            ("f.npz" is its train split, "f.npz:val", "f.npz:test") or a NIfTI or DICOM file;
            a folder holding any NIfTI or DICOM file is read by `SliceImages`.
        labeled: As for `FolderImages`; False also drops the sample's labels.
        strict: As for `FolderImages`.
        check: As for `FolderImages`; False skips decoding every file up front (for a few
            pictures of a folder that was already checked).
        in_chans: As for `FolderImages` (folders only).
        tile_size: For a hyperspectral cube file (`scene.mat`, `scene.mat:V`, `.npy`, `.npz`,
            ENVI `.hdr`; see `sslvit.data.cubes`), the side of its square tiles, which are the
            images (default 32, capped at the scene).
        tile_stride: For a cube, pixels between tiles (default half a tile).
        window: CT windows, e.g. "lung", "brain,subdural,bone" or "-600:1500" (centre:width):
            each maps the images' one channel onto a [0, 1] channel (`sslvit.data.medical`).
        slice_axis: For NIfTI volumes, multi-frame DICOM and DICOM series, the axis to cut
            2-D slices along (default the last; see `sslvit.data.slices.SliceImages`).

    Returns:
        An image set (`FolderImages` or `ArrayImages`).
    """
    if window:
        from sslvit.data.medical import WindowedImages  # medical builds on this module

        options = {"tile_size": tile_size, "tile_stride": tile_stride, "slice_axis": slice_axis}
        return WindowedImages(open_images(spec, labeled, strict, check, **options), window)
    text = str(spec)
    if text == "sample" or text.startswith("sample:"):
        split = text.partition(":")[2] or "train"
        if split not in SAMPLE_SPLITS:
            raise ValueError(f"{text}: unknown sample split; use one of {', '.join(SAMPLE_SPLITS)}")
        images = load_sample(split)
        if labeled is False:
            return ArrayImages(images.array, names=images.names)
        return images
    from sslvit.data.medical import open_medical

    medical = open_medical(spec, labeled, strict, in_chans, slice_axis)
    if medical is not None:
        return medical  # MedMNIST .npz, NIfTI, DICOM (files or folders holding any)
    if is_cube_spec(text):
        if labeled:
            raise ValueError(
                f"{text}: a cube's tiles have no labels; classify its pixels with "
                "`sslvit eval pixels --cube CUBE --gt GT`"
            )
        return open_cube_tiles(text, tile_size, tile_stride)
    return FolderImages(spec, labeled=labeled, strict=strict, check=check, in_chans=in_chans)


def _probe_all(paths: list[Path]) -> list[tuple[int | None, str | None]]:
    """`(channels, dtype name)` or `(None, reason)` for each file, decoding in parallel when
    many."""
    cores = (
        os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    )
    n_workers = min(len(cores), 16)
    if len(paths) < _MIN_FILES_FOR_PROCESSES or n_workers < 2:
        return [_probe(path) for path in paths]
    # Processes, not threads: decoding small files is mostly Python work that holds the GIL.
    chunksize = max(1, min(256, len(paths) // (8 * n_workers)))
    with ProcessPoolExecutor(max_workers=n_workers) as pool:
        return list(pool.map(_probe, paths, chunksize=chunksize))


def _probe(path: Path) -> tuple[int | None, str]:
    try:
        array = read_array(path)
        return array.shape[0], array.dtype.name
    except UnreadableImageError as err:
        return None, str(err).removeprefix(f"{path}: ")


def _scan(root: Path) -> list[str]:
    names = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        relative = Path(folder).relative_to(root)
        for filename in filenames:
            if not filename.startswith(".") and is_readable_name(filename):
                names.append((relative / filename).as_posix())
    return sorted(names)


def _classes_from_folders(root: Path, names: list[str], labeled: bool | None) -> list[str] | None:
    if labeled is False or not names:
        return None
    at_root = [name for name in names if "/" not in name]
    if at_root:
        if labeled:
            raise ValueError(
                f"{root}: labels come from class sub-folders, but {at_root[0]} "
                f"(and {len(at_root) - 1} other files) sit directly in the folder"
            )
        return None
    class_names = [name.split("/", 1)[0] for name in names]
    if labeled is None and len(set(class_names)) < 2:
        return None
    return class_names


def _read_labels_csv(csv_path: Path) -> tuple[list[str], list[str]]:
    try:
        with open(csv_path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise ValueError(f"{csv_path}: cannot read labels ({err.strerror or err})") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"{csv_path}: expected a header with columns 'path,label' and rows")
    pairs = {}
    for line, row in enumerate(rows, start=2):
        path, label = (row["path"] or "").strip(), (row["label"] or "").strip()
        if not path or not label:
            raise ValueError(f"{csv_path}: line {line} has an empty path or label")
        pairs[Path(path).as_posix()] = label
    names = sorted(pairs)
    return names, [pairs[name] for name in names]


def _sorted_classes(names: set[str]) -> list[str]:
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _channels_compatible(n_chans: int, in_chans: int) -> bool:
    return n_chans == in_chans or {n_chans, in_chans} == {1, 3}


def _match_channels(image: torch.Tensor, in_chans: int, path: Path) -> torch.Tensor:
    """Grey to RGB by repetition, RGB to grey by luma; `[C, H, W]` -> `[in_chans, H, W]`."""
    n_chans = image.shape[0]
    if n_chans == in_chans:
        return image
    if n_chans == 1 and in_chans == 3:
        return image.expand(3, -1, -1).contiguous()
    if n_chans == 3 and in_chans == 1:
        weights = torch.tensor(_LUMA, dtype=image.dtype).view(3, 1, 1)
        return (image * weights).sum(dim=0, keepdim=True)
    raise UnreadableImageError(f"{path}: has {n_chans} channels, the image set has {in_chans}")
