"""ENVI rasters: a text header (`.hdr`) beside a file of raw binary samples.

The header's `samples` (columns), `lines` (rows), `bands`, `data type`, `interleave` (bsq: band
after band; bil: row after row, bands inside a row; bip: pixel after pixel), `byte order` and
`header offset` say how to read the samples; `band names` and `wavelength` describe the bands.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from sslvit.data.readers import UnreadableImageError

# ENVI data file suffixes tried next to a header, in this order.
_ENVI_DATA_SUFFIXES = ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip")
# ENVI "data type" codes (ENVI header documentation); complex types are not supported.
_ENVI_DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}
# Axis order of the stored array, per interleave, as (rows, columns, bands) positions.
_ENVI_SHAPES = {"bsq": ("bands", "lines", "samples"), "bil": ("lines", "bands", "samples")}
_ENVI_SHAPES["bip"] = ("lines", "samples", "bands")


def envi_header_of(path: Path) -> Path | None:
    """The ENVI header of `path`: the file itself when it is a `.hdr`, else one beside it."""
    if path.suffix.lower() == ".hdr":
        return path
    for candidate in (path.with_suffix(".hdr"), path.with_name(path.name + ".hdr")):
        if candidate != path and candidate.is_file():
            return candidate
    return None


def parse_envi_header(path: Path) -> dict[str, str]:
    """The header's fields by lower-case name; `{...}` values keep their inner text."""
    text = path.read_text(errors="replace")
    if not text.lstrip().startswith("ENVI"):
        raise UnreadableImageError(f"{path}: not an ENVI header (it must start with 'ENVI')")
    fields = {}
    for match in re.finditer(r"^\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)", text, re.MULTILINE):
        key, value = match.group(1).strip().lower(), match.group(2).strip()
        fields[key] = value[1:-1].strip() if value.startswith("{") else value
    return fields


def _envi_int(fields: dict[str, str], key: str, header: Path, default: int | None = None) -> int:
    if key not in fields and default is not None:
        return default
    try:
        return int(fields[key])
    except (KeyError, ValueError):
        raise UnreadableImageError(f"{header}: missing or bad '{key}' in the header") from None


def read_envi(header: Path) -> tuple[np.ndarray, Path, list[str] | None, list[float] | None]:
    """Read the raster a header describes.

    Returns:
        `(data, data_path, band_names, wavelengths)`: `[bands, lines, samples]` in the file's
        dtype (native byte order not guaranteed), the data file read, and the header's band
        names and wavelengths (None when absent).

    Raises:
        UnreadableImageError: A missing or bad header field, an unsupported data type or
            interleave, no data file, or one shorter than the header describes.
    """
    fields = parse_envi_header(header)
    size = {k: _envi_int(fields, k, header) for k in ("samples", "lines", "bands")}
    code = _envi_int(fields, "data type", header)
    if code not in _ENVI_DTYPES:
        raise UnreadableImageError(f"{header}: data type {code} is not supported (complex?)")
    big_endian = _envi_int(fields, "byte order", header, default=0) == 1
    dtype = np.dtype(_ENVI_DTYPES[code]).newbyteorder(">" if big_endian else "<")
    interleave = fields.get("interleave", "bsq").strip().lower()
    if interleave not in _ENVI_SHAPES:
        raise UnreadableImageError(f"{header}: interleave {interleave!r} is not bsq, bil or bip")
    offset = _envi_int(fields, "header offset", header, default=0)

    data_path = _envi_data_file(header)
    axes = _ENVI_SHAPES[interleave]
    shape = tuple(size[a] for a in axes)
    expected = offset + math.prod(shape) * dtype.itemsize
    actual = data_path.stat().st_size
    if actual < expected:
        raise UnreadableImageError(
            f"{data_path}: {actual} bytes, the header describes {expected} "
            f"({size['bands']} bands of {size['lines']} x {size['samples']}, {dtype.name})"
        )
    raw = np.fromfile(data_path, dtype=dtype, count=math.prod(shape), offset=offset)
    cube = np.transpose(raw.reshape(shape), [axes.index(a) for a in ("bands", "lines", "samples")])
    names = _envi_list(fields.get("band names"))
    waves = _envi_list(fields.get("wavelength"))
    try:
        wavelengths = [float(w) for w in waves] if waves else None
    except ValueError:
        raise UnreadableImageError(f"{header}: wavelengths are not numbers") from None
    return cube, data_path, names, wavelengths


def _envi_list(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _envi_data_file(header: Path) -> Path:
    stem = header.with_suffix("")
    for suffix in _ENVI_DATA_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file() and candidate != header:
            return candidate
    tried = ", ".join(stem.name + s for s in _ENVI_DATA_SUFFIXES)
    raise UnreadableImageError(f"{header}: no data file beside the header (looked for {tried})")
