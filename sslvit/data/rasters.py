"""Multi-band rasters: GeoTIFFs read with their band names and no-data values.

Reading. A TIFF that carries GeoTIFF or GDAL tags is a raster: it is read whole, every band in
file order and in its own dtype, through rasterio when it is installed (`pip install
'sslvit[geo]'`) and through tifffile otherwise; both give the same array. Other files go through
`sslvit.data.readers` as before.

Invalid pixels. A value is invalid when it equals the file's no-data value (GDAL keeps one for
all bands) or is NaN or infinite. `read_image` returns invalid pixels as NaN; the per-band
statistics leave them out (`channel_stats`); MAE leaves them out of its loss; everywhere else
they reach the encoder as the band's mean, which is 0 after normalisation
(`sslvit.data.bands.fill_invalid`). A raster without a single valid pixel is unreadable, so a
folder scan skips it and counts it in its warning.

Band names. A file names a band by its description (GDAL's band description, e.g. set with
rasterio's `set_band_description`); a description made only of digits counts as no name, since
it would read as an index. How names are given otherwise, and how bands are chosen by them, is
in `sslvit.data.bands`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch

from sslvit.data.readers import UnreadableImageError, read_array

BACKENDS = ("auto", "rasterio", "tifffile")
# ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory, GDAL_METADATA, GDAL_NODATA
GEO_TAGS = frozenset({33550, 33922, 34264, 34735, 42112, 42113})
_TIFF_SUFFIXES = {".tif", ".tiff"}


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


_TIFFFILE_LOG = logging.getLogger("tifffile")
_QUIET = _DropAll()
_quiet_lock = threading.Lock()
_quiet_depth = 0


@contextlib.contextmanager
def _quiet_tifffile():
    """Drop tifffile's log lines while inside: it logs what is wrong with a corrupt file ("invalid
    offset to first page") before failing, and our own error already names the file and why."""
    global _quiet_depth
    with _quiet_lock:
        _quiet_depth += 1
        _TIFFFILE_LOG.addFilter(_QUIET)
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                _TIFFFILE_LOG.removeFilter(_QUIET)


@contextlib.contextmanager
def open_tiff(path: str | Path):
    """A `tifffile.TiffFile` with at least one page, tifffile's own log lines silenced.

    Raises:
        UnreadableImageError: The file has no image page (not a valid TIFF).
    """
    with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise UnreadableImageError(f"{path}: not a valid TIFF (no image pages)")
        yield tif


@dataclass(frozen=True)
class Raster:
    """One raster file: its pixels and what the file says about its bands.

    Attributes:
        array: `[C, H, W]` in the file's dtype, bands in file order.
        names: One name per band, None where the file names none.
        nodata: The file's no-data value, or None.
    """

    array: np.ndarray
    names: tuple[str | None, ...]
    nodata: float | None = None

    def valid(self) -> np.ndarray:
        """Bool `[C, H, W]`: True where the value is finite and not the no-data value."""
        array = self.array
        valid = np.isfinite(array) if array.dtype.kind == "f" else np.ones(array.shape, bool)
        if self.nodata is not None:
            nodata = _nodata_in(array.dtype, self.nodata)
            if nodata is not None:
                valid &= array != nodata
        return valid

    def image(self) -> torch.Tensor:
        """float32 `[C, H, W]` in native units, NaN at every invalid pixel."""
        image = np.array(self.array, dtype=np.float32)
        if self.nodata is not None or image.dtype.kind == "f":
            image[~self.valid()] = np.nan
        return torch.from_numpy(image)


def _nodata_in(dtype: np.dtype, nodata: float):
    """The no-data value as the array stores it; None when no pixel of `dtype` can equal it."""
    if dtype.kind == "f":
        return dtype.type(nodata)
    if not float(nodata).is_integer():
        return None
    info = np.iinfo(dtype)
    return int(nodata) if info.min <= nodata <= info.max else None


def has_geo_tags(tif: tifffile.TiffFile) -> bool:
    """Whether an open TIFF's first page carries GeoTIFF or GDAL tags."""
    return bool(GEO_TAGS & set(tif.pages[0].tags.keys()))


def is_raster(path: str | Path) -> bool:
    """Whether `path` is a TIFF with GeoTIFF or GDAL tags (False for unreadable files)."""
    if Path(path).suffix.lower() not in _TIFF_SUFFIXES:
        return False
    try:
        with open_tiff(path) as tif:
            return has_geo_tags(tif)
    except Exception:  # noqa: BLE001 - any decoder failure: not a raster; read_array reports it
        return False


def read_raster(path: str | Path, backend: str = "auto") -> Raster:
    """Read any image file with its band names and no-data value.

    GeoTIFFs (TIFFs with GeoTIFF or GDAL tags) are read whole, every sample of a pixel a band
    (alpha included), through rasterio or tifffile; other files through `read_array`, with no
    names and no no-data value.

    Args:
        path: The file.
        backend: "auto" (rasterio when installed), "rasterio" or "tifffile"; GeoTIFFs only.

    Returns:
        The `Raster`.

    Raises:
        UnreadableImageError: The file cannot be decoded, holds no valid pixel, or has a pixel
            type other than integers and floats.
        ValueError: An unknown backend, or "rasterio" when it is not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"raster backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    path = Path(path)
    if not is_raster(path):
        array = read_array(path)
        return Raster(array, (None,) * array.shape[0])
    if backend == "auto":
        backend = "rasterio" if _rasterio() is not None else "tifffile"
    if backend == "rasterio" and _rasterio() is None:
        raise ValueError("the rasterio backend needs rasterio: pip install 'sslvit[geo]'")
    reader = _read_rasterio if backend == "rasterio" else _read_tifffile
    try:
        raster = reader(path)
    except (UnreadableImageError, MemoryError):
        raise
    except Exception as err:  # decoders raise many types on corrupt input
        raise UnreadableImageError(f"{path}: cannot decode ({type(err).__name__}: {err})") from None
    if raster.array.dtype.kind not in "biuf":
        raise UnreadableImageError(f"{path}: unsupported pixel type {raster.array.dtype}")
    if min(raster.array.shape) == 0:
        raise UnreadableImageError(f"{path}: raster has an empty axis, shape {raster.array.shape}")
    if not raster.valid().any():
        nodata = "" if raster.nodata is None else f"the no-data value {raster.nodata:g} or "
        raise UnreadableImageError(f"{path}: no valid pixel, every value is {nodata}NaN")
    return raster


def _rasterio():
    try:
        import rasterio
    except ImportError:
        return None
    return rasterio


def _read_rasterio(path: Path) -> Raster:
    rasterio = _rasterio()
    with warnings.catch_warnings():
        # a file with GDAL tags but no georeferencing reads fine; rasterio warns about it
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            array = src.read()
            names = tuple(name_of_description(text) for text in src.descriptions)
            nodata = src.nodata
    return Raster(array, names, None if nodata is None else float(nodata))


def _read_tifffile(path: Path) -> Raster:
    with open_tiff(path) as tif:
        series = tif.series[0]
        tags = tif.pages[0].tags
        try:
            array = series.asarray()
        except ValueError as err:
            if "imagecodecs" not in str(err):
                raise
            raise UnreadableImageError(
                f"{path}: {err} (pip install imagecodecs, or rasterio: pip install 'sslvit[geo]')"
            ) from None
        axes = series.axes
        metadata = tags[42112].value if 42112 in tags else None
        nodata_text = tags[42113].value if 42113 in tags else None
    if "Y" not in axes or "X" not in axes:
        raise UnreadableImageError(f"{path}: no image axes in the TIFF (axes {axes!r})")
    array = np.moveaxis(array, (axes.index("Y"), axes.index("X")), (-2, -1))
    array = array.reshape(-1, *array.shape[-2:])
    return Raster(array, _gdal_names(metadata, len(array)), _parse_nodata(nodata_text, path))


def _gdal_names(metadata: str | None, n_bands: int) -> tuple[str | None, ...]:
    """Band descriptions from a GDAL_METADATA tag (XML items with role "description")."""
    names: list[str | None] = [None] * n_bands
    if not metadata:
        return tuple(names)
    try:
        root = ElementTree.fromstring(metadata.strip("\x00 \n"))
    except ElementTree.ParseError:
        return tuple(names)
    for item in root.iter("Item"):
        sample = item.get("sample")
        if item.get("role") == "description" and sample is not None and sample.isdigit():
            if int(sample) < n_bands:
                names[int(sample)] = name_of_description(item.text)
    return tuple(names)


def _parse_nodata(text: str | None, path: Path) -> float | None:
    if text is None:
        return None
    text = str(text).strip("\x00 \n")
    try:
        return float(text)
    except ValueError:
        raise UnreadableImageError(f"{path}: no-data tag {text!r} is not a number") from None


def name_of_description(text: str | None) -> str | None:
    """A band description as a name; empty or all-digit descriptions are no name."""
    text = (text or "").strip()
    return None if not text or text.isdigit() else text


def raster_band_names(path: str | Path) -> tuple[str | None, ...] | None:
    """The band names a raster file gives, without reading its pixels; None for other files."""
    path = Path(path)
    if not is_raster(path):
        return None
    rasterio = _rasterio()
    if rasterio is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return tuple(name_of_description(text) for text in src.descriptions)
    with open_tiff(path) as tif:
        tags = tif.pages[0].tags
        series = tif.series[0]
        sizes = dict(zip(series.axes, series.shape, strict=True))
        n_bands = int(np.prod(series.shape)) // (sizes.get("Y", 1) * sizes.get("X", 1))
        return _gdal_names(tags[42112].value if 42112 in tags else None, n_bands)
