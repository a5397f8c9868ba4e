"""Turn one image file into a float tensor `[C, H, W]` in the file's native units.

Native units means no rescaling: an 8-bit file gives values in 0..255, a 16-bit file 0..65535,
a float file whatever it stores. Normalisation happens later, with per-channel statistics of the
whole dataset (see `sslvit.data.stats`), so 16-bit microscopy and reflectance rasters keep their
full range.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_png

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
ARRAY_EXTENSIONS = {".npy"}
DICOM_EXTENSIONS = {".dcm", ".dicom"}
READABLE_EXTENSIONS = IMAGE_EXTENSIONS | ARRAY_EXTENSIONS | DICOM_EXTENSIONS

_TIFF_EXTENSIONS = {".tif", ".tiff"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types with more than one sample per pixel: grey+alpha, RGB, RGB+alpha.
_PNG_COLOUR_CHANNELS = {4: 1, 2: 3, 6: 3}
# tifffile returns raw sample values; these photometric interpretations need no colour model.
_TIFF_RAW_PHOTOMETRICS = {tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB}
_TIFF_ALPHA = {tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA}


class UnreadableImageError(ValueError):
    """A file that cannot be decoded into an image; the message reads "PATH: what is wrong"."""


def is_readable_name(path: str | Path) -> bool:
    """Whether the file name has an extension `read_image` handles (case-insensitive)."""
    return Path(path).suffix.lower() in READABLE_EXTENSIONS


def read_image(path: str | Path) -> torch.Tensor:
    """Read an image, TIFF raster or `.npy` array as float32 `[C, H, W]` in native units.

    Channels:
        - PIL formats: grey (`L`, `I;16*`, `I`, `F`) -> 1 channel; grey+alpha -> 1 (alpha
          dropped); RGB, RGBA -> 3 (alpha dropped); palette -> 3 (its RGB colours); CMYK and
          YCbCr -> 3 (converted to RGB); 1-bit -> 1 channel with values 0 and 255. The EXIF
          orientation is applied, so a phone photo comes out upright. 16-bit RGB and
          grey+alpha PNGs, which PIL cuts to 8 bits, are decoded by torchvision instead
          (without EXIF orientation).
        - TIFF (through `tifffile`): the file's own axis labels decide. Height and width are
          the `Y` and `X` axes; every other axis (samples of a pixel, planar bands, pages) is
          folded into channels, in file order. This covers pixel-interleaved (`YXS`) and
          band-sequential (`SYX`) multi-band rasters alike. Separate pages that share the
          first page's height and width are stacked as channels; pages of other sizes
          (thumbnails, pyramid levels) are ignored. Alpha samples of RGB or grey TIFFs are
          dropped. Palette, CMYK, YCbCr, 1-bit and min-is-white TIFFs go through PIL instead.
          Compressions that need the optional `imagecodecs` package (LZW, JPEG, ...) go
          through PIL too when it reads them whole (one page, colour at most 8 bits);
          otherwise the error asks for `imagecodecs`.
        - GeoTIFFs (TIFFs with GeoTIFF or GDAL tags): every band in file order, alpha
          included, through rasterio when installed; pixels equal to the file's no-data value
          come out as NaN, and a file without a valid pixel is unreadable (see
          `sslvit.data.rasters`).
        - DICOM (`.dcm`, `.dicom`, or "DICM" at byte 128 of a file with another extension):
          one channel rescaled into the modality's units (Hounsfield units for CT), or RGB;
          multi-frame files are unreadable here, `open_images` reads their frames (see
          `sslvit.data.dicom`, `sslvit.data.slices`).
        - `.npy` and TIFFs without axis labels: a 2-D array is one channel; a 3-D array is
          `[H, W, C]` when its last dimension is smaller than the other two or the first two
          are equal and the last is not (a square tile); `[C, H, W]` otherwise.

    Args:
        path: The file to read.

    Returns:
        float32 tensor `[C, H, W]`.

    Truncated files fail: this relies on PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` keeping its
    default, False.

    Raises:
        UnreadableImageError: The file is missing, empty, truncated, not an image, or holds an
            array of an unsupported shape or type.
    """
    # GeoTIFFs carry a no-data value: those pixels come out as NaN (see sslvit.data.rasters)
    from sslvit.data.rasters import read_raster

    return read_raster(path).image()


def read_array(path: str | Path) -> np.ndarray:
    """Like `read_image`, but `[C, H, W]` in the file's own dtype, possibly not contiguous.

    Cheaper than `read_image` when only the shape or the bit depth is needed.

    Raises:
        UnreadableImageError: As `read_image`.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise UnreadableImageError(f"{path}: cannot open ({err.strerror or err})") from None
    if size == 0:
        raise UnreadableImageError(f"{path}: empty file (0 bytes)")

    suffix = path.suffix.lower()
    try:
        if suffix in ARRAY_EXTENSIONS:
            array = _chw_from_shape(_load_npy(path), path)
        elif suffix in _TIFF_EXTENSIONS:
            array = _read_tiff(path)
        elif suffix in DICOM_EXTENSIONS or (
            suffix not in IMAGE_EXTENSIONS and has_dicm_magic(path)
        ):
            from sslvit.data.dicom import read_dicom  # dicom imports this module

            array = read_dicom(path)
        elif n_colour := _png_16bit_colour_channels(path):
            array = _read_png_16bit(path, n_colour)
        else:
            array = _read_pil(path)
    except (UnreadableImageError, MemoryError):
        raise
    # Decoders raise many unrelated types on corrupt input (OSError, SyntaxError, struct.error,
    # zlib.error, DecompressionBombError, ...); all of them mean the same thing here.
    except Exception as err:
        raise UnreadableImageError(f"{path}: cannot decode ({describe_error(err)})") from None

    if array.dtype.kind not in "biuf":
        raise UnreadableImageError(f"{path}: unsupported pixel type {array.dtype}")
    if min(array.shape) == 0:
        raise UnreadableImageError(f"{path}: image has an empty axis, shape {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).any():
        # NaN and infinity are invalid pixels (filled with the band mean): nothing would be left
        raise UnreadableImageError(f"{path}: no valid pixel, every value is NaN or infinite")
    return array


def has_dicm_magic(path: str | Path) -> bool:
    """Whether a file holds "DICM" at byte 128, the mark of a DICOM Part 10 file."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def optional_module(name: str, extra: str, path: str | Path):
    """Import `name`, an optional dependency that reading `path` needs.

    Raises:
        UnreadableImageError: It is not installed; the message names the extra that installs it.
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UnreadableImageError(
            f"{path}: reading it needs {name}: pip install 'sslvit[{extra}]'"
        ) from None


def _load_npy(path: Path) -> np.ndarray:
    """`np.load` without pickles, naming what the file is when it is not a numeric array
    (numpy calls a file without a .npy header "pickled data"). The header is looked at only
    after a failure: this runs for every image read during training."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise
        with open(path, "rb") as handle:
            has_header = handle.read(6) == b"\x93NUMPY"
    if not has_header:
        raise UnreadableImageError(f"{path}: not a NumPy .npy array (no .npy header)")
    raise UnreadableImageError(f"{path}: holds Python objects, not a numeric array")


def describe_error(err: Exception, limit: int = 160) -> str:
    """`Type: first line of the message`, cut to `limit` characters: one line for a user."""
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    if len(line) > limit:
        line = line[: limit - 3].rstrip() + "..."
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def _read_pil(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        ImageOps.exif_transpose(img, in_place=True)
        return _pil_to_array(img)


def _png_16bit_colour_channels(path: Path) -> int:
    """Colour channels kept from a 16-bit multi-sample PNG, or 0 for any other file."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    # The IHDR chunk follows the signature; bytes 24 and 25 are bit depth and colour type.
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[24] != 16:
        return 0
    return _PNG_COLOUR_CHANNELS.get(head[25], 0)


def _read_png_16bit(path: Path, n_colour: int) -> np.ndarray:
    # PIL reduces 16-bit RGB and grey+alpha PNGs to 8 bits; torchvision keeps all 16. Its
    # image decoders warn of deprecation from 0.29 on; pyproject pins torchvision <= 0.29.1.
    data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        image = decode_png(data, mode=ImageReadMode.UNCHANGED)
    return image[:n_colour].numpy()


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """`[C, H, W]` array in native units for any PIL mode."""
    mode = img.mode
    if mode == "1":
        img = img.convert("L")
    elif mode in ("LA", "La"):
        img = img.getchannel(0)
    elif mode in ("P", "PA"):
        img = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
    elif mode not in ("L", "I", "F", "RGB", "RGBA", "RGBa", "RGBX") and not mode.startswith("I;"):
        img = img.convert("RGB")

    array = np.asarray(img)
    if array.ndim == 2:
        return array[None]
    return np.moveaxis(array[..., :3], -1, 0)


def _read_tiff(path: Path) -> np.ndarray:
    from sslvit.data.rasters import has_geo_tags, open_tiff, read_raster  # rasters imports this

    with open_tiff(path) as tif:
        if has_geo_tags(tif):
            return read_raster(path).array
        first = tif.series[0]
        key = first.keyframe
        if key.photometric not in _TIFF_RAW_PHOTOMETRICS or key.bitspersample == 1:
            return _read_pil(path)
        size = _tiff_size(first)
        try:
            parts = [_tiff_series_to_chw(s, path) for s in tif.series if _tiff_size(s) == size]
        except ValueError as err:
            if "imagecodecs" not in str(err):
                raise
            # LZW, JPEG, ZSTD... need the optional imagecodecs package. PIL decodes them too, but
            # only the first page, and colour at no more than 8 bits.
            n_samples, n_bits = key.samplesperpixel, key.bitspersample
            if len(tif.pages) > 1 or (n_samples > 1 and (n_samples > 4 or n_bits > 8)):
                raise UnreadableImageError(f"{path}: {err} (pip install imagecodecs)") from None
            return _read_pil(path)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([part.astype(np.float32, copy=False) for part in parts])


def _tiff_size(series: tifffile.TiffPageSeries) -> tuple[int, int] | None:
    axes = series.axes
    if "Y" not in axes or "X" not in axes:
        return None
    return series.shape[axes.index("Y")], series.shape[axes.index("X")]


def _tiff_series_to_chw(series: tifffile.TiffPageSeries, path: Path) -> np.ndarray:
    array, axes = series.asarray(), series.axes
    if "Y" not in axes or "X" not in axes:
        return _chw_from_shape(array, path)

    extras = series.keyframe.extrasamples
    if "S" in axes and any(kind in _TIFF_ALPHA for kind in extras):
        n_samples = array.shape[axes.index("S")]
        alpha = [
            n_samples - len(extras) + k for k, kind in enumerate(extras) if kind in _TIFF_ALPHA
        ]
        array = np.delete(array, alpha, axis=axes.index("S"))

    y, x = axes.index("Y"), axes.index("X")
    array = np.moveaxis(array, (y, x), (-2, -1))
    return array.reshape(-1, *array.shape[-2:])


def _chw_from_shape(array: np.ndarray, path: Path) -> np.ndarray:
    """`[C, H, W]` from a 2-D or 3-D array whose layout is guessed from its shape."""
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise UnreadableImageError(
            f"{path}: expected a 2-D or 3-D array, got shape {tuple(array.shape)}"
        )
    first, middle, last = array.shape
    if last < min(first, middle) or (first == middle != last):
        return np.moveaxis(array, -1, 0)  # bands last: fewer than pixels per side, or a square
    return array
