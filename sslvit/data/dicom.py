"""DICOM files as arrays: single images, the frames of multi-frame files, and series as volumes.

DICOM pixels come out in the modality's units: the Rescale Slope and Intercept (or a Modality
LUT) are applied, so CT gives Hounsfield units (HU). The files of a series are stacked into a
volume in slice order (`order_series`).

pydicom (`sslvit[dicom]`) is imported only when a file needs it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sslvit.data.nifti import is_nifti_name
from sslvit.data.readers import (
    DICOM_EXTENSIONS,
    READABLE_EXTENSIONS,
    UnreadableImageError,
    has_dicm_magic,
    optional_module,
)

# Where enhanced multi-frame DICOM keeps rescale values: per frame, else shared by all frames.
_FUNCTIONAL_GROUPS = ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence")
# Groups of the standard elements every image object has (patient, study, series, image): a
# file read without the "DICM" mark that holds none of them is not DICOM.
_IDENTIFYING_GROUPS = {0x0008, 0x0010, 0x0018, 0x0020, 0x0028}


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings and log records held back: our errors say once, in one line, what
    failed (pydicom logs a full traceback for each decoder that fails)."""
    pydicom_logger = logging.getLogger("pydicom")
    level = pydicom_logger.level
    pydicom_logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        pydicom_logger.setLevel(level)


def is_dicom_file(path: str | Path) -> bool:
    """A `.dcm`/`.dicom` name, or another non-image name whose content starts like DICOM."""
    suffix = Path(path).suffix.lower()
    if suffix in DICOM_EXTENSIONS:
        return True
    return suffix not in READABLE_EXTENSIONS and not is_nifti_name(path) and has_dicm_magic(path)


def dicom_header(path: str | Path):
    """The dataset of a DICOM file without its pixel data (pydicom `Dataset`)."""
    path = Path(path)
    pydicom = optional_module("pydicom", "dicom", path)
    force = path.suffix.lower() in DICOM_EXTENSIONS  # old files without the Part 10 preamble
    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=force)
    except Exception as err:
        raise UnreadableImageError(f"{path}: not a readable DICOM file ({err})") from None
    if ds.preamble is None and not any(tag.group in _IDENTIFYING_GROUPS for tag in ds.keys()):
        raise UnreadableImageError(
            f'{path}: not a DICOM file (no "DICM" at byte 128 and no DICOM image elements)'
        )
    return ds


def dicom_frames(ds) -> int:
    """Frames in a DICOM dataset (1 for a single image)."""
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def read_dicom(path: str | Path, frame: int | None = None) -> np.ndarray:
    """One image of a DICOM file as `[C, H, W]`, rescaled into the modality's units.

    Grey images give one channel: stored values times Rescale Slope plus Rescale Intercept
    (per frame for enhanced multi-frame files; a Modality LUT where the file has one), float32,
    or the stored dtype when there is nothing to apply. MONOCHROME1 images (low = white) are
    inverted first, so bright means high everywhere. Colour (RGB, YCbCr, palette) gives three
    RGB channels.

    Args:
        path: The file.
        frame: Frame index of a multi-frame file; None for a single-frame file.

    Raises:
        UnreadableImageError: Not DICOM, no image in it, pixel data that no installed decoder
            handles (the message names the transfer syntax), or a multi-frame file without
            `frame`.
    """
    path = Path(path)
    ds = dicom_header(path)
    if "Rows" not in ds:
        kind = getattr(ds.get("SOPClassUID"), "name", None) or ds.get("Modality") or "DICOM"
        raise UnreadableImageError(f"{path}: no image in this {kind} object")
    n_frames = dicom_frames(ds)
    if frame is None and n_frames > 1:
        raise UnreadableImageError(
            f"{path}: {n_frames} frames; give the file or its folder as the data to read "
            "one image per frame"
        )
    array = _dicom_pixels(path, ds, frame if n_frames > 1 else None)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        array = apply_color_lut(array, ds)
    if array.ndim == 3:
        return np.moveaxis(array, -1, 0)
    if photometric == "MONOCHROME1":
        bits, signed = int(ds.get("BitsStored", 16)), int(ds.get("PixelRepresentation", 0))
        array = (-1 if signed else 2**bits - 1) - array.astype(np.int64)
    return _rescale(array, ds, frame or 0)[None]


def _dicom_pixels(path: Path, ds, frame: int | None) -> np.ndarray:
    from pydicom.pixels import pixel_array

    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is None:
        raise UnreadableImageError(f"{path}: no transfer syntax (not a DICOM Part 10 file)")
    try:
        with _quiet_pydicom():
            return pixel_array(path, index=frame)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(":")
        if syntax.is_compressed:
            raise UnreadableImageError(
                f"{path}: cannot decode pixel data compressed as {syntax.name} ({syntax}): "
                f"{reason}; install a decoder: pip install pylibjpeg pylibjpeg-libjpeg "
                "pylibjpeg-openjpeg (or python-gdcm)"
            ) from None
        raise UnreadableImageError(f"{path}: cannot decode pixel data ({reason})") from None


def _rescale(array: np.ndarray, ds, frame: int) -> np.ndarray:
    """Stored values -> modality units, from the frame's functional groups or the top level."""
    source = ds
    for groups, index in zip(_FUNCTIONAL_GROUPS, (frame, 0), strict=True):
        items = ds.get(groups)
        if items and len(items) > index and items[index].get("PixelValueTransformationSequence"):
            source = items[index].PixelValueTransformationSequence[0]
            break
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(array, ds)
    slope = float(source.get("RescaleSlope", 1) or 1)
    intercept = float(source.get("RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == 0 and array.dtype.kind in "iu":
        return array
    return (array.astype(np.float64) * slope + intercept).astype(np.float32)


def order_series(headers: list) -> list[int]:
    """Positions that order a series' slices along the slice normal.

    The key is ImagePositionPatient projected on the normal of ImageOrientationPatient (row x
    column direction) when every slice has both; else InstanceNumber when every slice has one;
    else the order given.
    """
    if all("ImagePositionPatient" in h and "ImageOrientationPatient" in h for h in headers):
        keys = []
        for h in headers:
            orientation = np.asarray(h.ImageOrientationPatient, dtype=np.float64)
            normal = np.cross(orientation[:3], orientation[3:])
            keys.append(float(np.dot(np.asarray(h.ImagePositionPatient, np.float64), normal)))
    elif all(h.get("InstanceNumber") is not None for h in headers):
        keys = [int(h.InstanceNumber) for h in headers]
    else:
        keys = [0] * len(headers)
    return sorted(range(len(headers)), key=lambda i: (keys[i], i))


def read_dicom_series(paths: list[str | Path]) -> tuple[np.ndarray, list[Path]]:
    """Single-frame grey DICOM files of one series as a volume `[rows, columns, n_slices]`.

    Returns:
        The volume (float32, modality units) and the files in slice order (`order_series`).

    Raises:
        UnreadableImageError: A file is unreadable, colour, or of another size than the first.
    """
    paths = [Path(p) for p in paths]
    ordered = [paths[k] for k in order_series([dicom_header(p) for p in paths])]
    slices = [read_dicom(p) for p in ordered]
    for path, image in zip(ordered, slices, strict=True):
        if image.shape != slices[0].shape or image.shape[0] != 1:
            raise UnreadableImageError(
                f"{path}: shape {image.shape} in a series of grey {slices[0].shape} slices"
            )
    return np.stack([s[0].astype(np.float32) for s in slices], axis=-1), ordered
