"""Band names and choosing bands, for any image set.

Band names. A band's name is its description in the file (`sslvit.data.rasters`), or the line
for it in a `bands.txt` at the top of the data folder (one name per line, in band order; blank
lines and lines starting with "#" are skipped), which overrides the files. A folder's names are
those of `bands.txt` or of its first file; all its files are taken to share them. A band without
a name goes by its 0-based index written as text ("3"); a description made only of digits counts
as no name, since it would read as an index.

Choosing bands (`--bands`): 0-based indices or names, comma-separated, in the order the encoder
gets them, e.g. "3,2,1" or "B4,B3,B2". The chosen bands' names are stored with the run (`data.bands`
in `config.yaml`, `bands` in `encoder.json`); downstream commands read the encoder's bands unless
told otherwise and refuse data whose chosen bands carry other names.

Invalid pixels (NaN, see `sslvit.data.rasters`) reach the encoder as the band's mean
(`fill_invalid`, `fill_images`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sslvit.data.arrays import ImageSet
from sslvit.data.rasters import name_of_description, raster_band_names, read_raster
from sslvit.data.stats import channel_stats

log = logging.getLogger(__name__)

BANDS_FILE = "bands.txt"
# Sentinel-2 and Landsat 8/9 call red, green and blue B4, B3 and B2
_COMPOSITES = (("red", "green", "blue"), ("r", "g", "b"), ("b4", "b3", "b2"), ("b04", "b03", "b02"))


def parse_bands(spec: str | Sequence[int | str]) -> list[int | str]:
    """A band selection as a list: digits are 0-based indices, anything else a name.

    Args:
        spec: "3,2,1", "B4,B3,B2" (spaces around commas are ignored), or a list of such items.

    Raises:
        ValueError: The selection is empty or has an empty item.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    parsed: list[int | str] = []
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            parsed.append(int(item))
            continue
        text = str(item).strip()
        if not text:
            raise ValueError(f"--bands {spec!r}: an empty band; give indices or names, e.g. 3,2,1")
        parsed.append(int(text) if text.isdigit() else text)
    if not parsed:
        raise ValueError("--bands: no band given")
    return parsed


def band_label(index: int, names: Sequence[str | None] | None) -> str:
    """How band `index` is called: its name, or its index as text when it has none."""
    name = names[index] if names is not None else None
    return name if name else str(index)


def resolve_bands(
    spec: str | Sequence[int | str],
    names: Sequence[str | None] | None,
    n_bands: int,
    source: str = "the data",
    unnamed_advice: str | None = None,
) -> list[int]:
    """The 0-based indices a band selection picks out of `n_bands` bands called `names`.

    Names match exactly, or else case-insensitively when only one band matches that way.

    Args:
        spec: The selection (`parse_bands`).
        names: The bands' names (None where unnamed), or None.
        n_bands: How many bands there are.
        source: Names the data in errors.
        unnamed_advice: What to tell a user who named a band of data whose bands have no
            names; None for "choose bands by index or name them in a bands.txt".

    Raises:
        ValueError: An index out of range, a name the data does not have (or has twice), or a
            band chosen twice; the message names `source` and its bands.
    """
    names = list(names) if names is not None else [None] * n_bands
    labels = [band_label(k, names) for k in range(n_bands)]
    indices = []
    for item in parse_bands(spec):
        if isinstance(item, int):
            if not 0 <= item < n_bands:
                raise ValueError(
                    f"{source}: band index {item} is out of range; it has {_count_bands(n_bands)}"
                )
            indices.append(item)
            continue
        matches = [k for k, name in enumerate(names) if name == item]
        if not matches:
            matches = [k for k, name in enumerate(names) if name and name.lower() == item.lower()]
        if len(matches) != 1:
            if not any(names):
                advice = unnamed_advice or f"choose bands by index or name them in a {BANDS_FILE}"
                have = "has no name" if n_bands == 1 else "have no names"
                raise ValueError(
                    f"{source}: no band named {item!r}, its {_count_bands(n_bands)} {have}; "
                    f"{advice}"
                )
            found = "several bands are" if matches else "no band is"
            raise ValueError(f"{source}: {found} named {item!r}; its bands: {', '.join(labels)}")
        indices.append(matches[0])
    twice = sorted({k for k in indices if indices.count(k) > 1})
    if twice:
        chosen = spec if isinstance(spec, str) else ",".join(map(str, spec))
        raise ValueError(
            f"{source}: bands {chosen} choose band {labels[twice[0]]} twice; give each band once"
        )
    return indices


def _index_range(n_bands: int) -> str:
    """The valid 0-based indices of `n_bands` bands: "0" or "0-12"."""
    return "0" if n_bands == 1 else f"0-{n_bands - 1}"


def _count_bands(n_bands: int) -> str:
    """How many bands and their indices: "1 band (index 0)", "13 bands (indices 0-12)"."""
    if n_bands == 1:
        return "1 band (index 0)"
    return f"{n_bands} bands (indices {_index_range(n_bands)})"


def dataset_band_names(images: ImageSet) -> list[str | None] | None:
    """The names of an image set's bands: its own, a folder's `bands.txt`, or its first file's.

    Returns:
        One entry per channel (None where unnamed), or None when nothing names any band.

    Raises:
        ValueError: `bands.txt` lists another number of bands than the images have.
    """
    own = getattr(images, "band_names", None)
    if own is not None:
        return [name_of_description(str(name)) for name in own]
    root = getattr(images, "root", None)
    if root is not None and (Path(root) / BANDS_FILE).is_file():
        return _read_bands_file(Path(root) / BANDS_FILE, images.in_chans)
    paths = getattr(images, "paths", None)
    if not paths:
        return None
    try:
        names = raster_band_names(paths[0])
    except Exception:  # noqa: BLE001 - a file that cannot be read names nothing; reading reports it
        return None
    if names is None or len(names) != images.in_chans or not any(names):
        return None
    return list(names)


def _read_bands_file(path: Path, n_bands: int) -> list[str | None]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    names = [line for line in lines if line and not line.startswith("#")]
    if len(names) != n_bands:
        raise ValueError(f"{path}: names {len(names)} bands, the images have {n_bands}")
    return [name_of_description(name) for name in names]


class BandImages:
    """Chosen bands of another image set, in the chosen order, invalid pixels optionally filled.

    Args:
        images: The image set to read from.
        indices: Channels of `images` to keep, in order; None keeps all.
        band_names: What each kept band is called (a name, or its index as text).
        fill: One value per kept band put in place of NaN (invalid) pixels, in native units;
            None leaves them NaN.

    Attributes:
        band_names: As given; `in_chans`, `names`, `labels` and `classes` as for any image set.
    """

    def __init__(
        self,
        images: ImageSet,
        indices: Sequence[int] | None,
        band_names: Sequence[str],
        fill: Sequence[float] | None = None,
    ) -> None:
        self.images = images
        self.indices = None if indices is None else [int(k) for k in indices]
        self.band_names = list(band_names)
        self.in_chans = images.in_chans if indices is None else len(self.indices)
        if len(self.band_names) != self.in_chans:
            raise ValueError(f"{len(self.band_names)} band names for {self.in_chans} bands")
        if fill is not None and len(fill) != self.in_chans:
            raise ValueError(f"{len(fill)} fill values for {self.in_chans} bands")
        self.fill = None if fill is None else torch.tensor(list(fill), dtype=torch.float32)
        self.names, self.labels, self.classes = images.names, images.labels, images.classes

    def __len__(self) -> int:
        return len(self.images)

    def read(self, i: int) -> torch.Tensor:
        """Item `i` as float32 `[in_chans, H, W]` in native units."""
        image = self.images.read(i)
        if self.indices is not None:
            image = image[self.indices]
        if self.fill is not None:
            image = fill_invalid(image, self.fill)
        return image


class FileImage:
    """One image file as a one-item, unlabelled image set that knows the file's band names.

    Attributes:
        band_names: The file's band names (indices as text where unnamed), or None when it
            names no band.
    """

    def __init__(self, path: str | Path) -> None:
        raster = read_raster(path)
        self.image = raster.image()
        self.names = [Path(path).name]
        self.labels, self.classes = None, None
        self.in_chans = self.image.shape[0]
        named = any(raster.names)
        self.band_names = (
            [band_label(k, raster.names) for k in range(self.in_chans)] if named else None
        )

    def __len__(self) -> int:
        return 1

    def read(self, i: int) -> torch.Tensor:
        """The image, float32 `[C, H, W]`, NaN at invalid pixels."""
        if i not in (0, -1):
            raise IndexError(f"{self.names[0]}: a one-image set has no item {i}")
        return self.image


def fill_invalid(image: torch.Tensor, values: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """`[C, H, W]` with every non-finite pixel of channel c replaced by `values[c]`."""
    values = torch.as_tensor(values, dtype=image.dtype).view(-1, 1, 1)
    return torch.where(torch.isfinite(image), image, values)


def select_bands(
    images: ImageSet,
    bands: str | Sequence[int | str] | None,
    source: str = "the data",
    unnamed_advice: str | None = None,
) -> ImageSet:
    """`images` with the bands `bands` chosen (all, when None) and the bands' names attached.

    Returns the set itself when nothing is chosen and nothing names its bands (photos, scans).
    `unnamed_advice` is as for `resolve_bands`.
    """
    names = dataset_band_names(images)
    if bands is None and names is None:
        return images
    indices = (
        None
        if bands is None
        else resolve_bands(bands, names, images.in_chans, source, unnamed_advice)
    )
    chosen = range(images.in_chans) if indices is None else indices
    return BandImages(images, indices, [band_label(k, names) for k in chosen])


def band_names_of(images: ImageSet) -> list[str] | None:
    """The names of the bands an image set reads, when it knows them (see `select_bands`)."""
    names = getattr(images, "band_names", None)
    return None if names is None else [str(name) for name in names]


def check_encoder_bands(
    bands: Sequence[str] | None, encoder_bands: Sequence[str] | None, source: str = "the data"
) -> None:
    """Refuse data whose chosen bands are called otherwise than the encoder's.

    Bands known on both sides only by their index cannot be checked; a name on one side against
    an index on the other is logged as unchecked.

    Raises:
        ValueError: The lists differ in length, or a band has another name; both lists are named.
    """
    if encoder_bands is None or bands is None:
        return
    bands, encoder_bands = list(bands), list(encoder_bands)
    differ = len(bands) != len(encoder_bands) or any(
        not a.isdigit() and not b.isdigit() and a != b
        for a, b in zip(bands, encoder_bands, strict=False)
    )
    if differ:
        raise ValueError(
            f"{source}: reads bands [{', '.join(bands)}], the encoder was trained on "
            f"[{', '.join(encoder_bands)}]; choose the encoder's bands with --bands"
        )
    unchecked = [
        (a, b) for a, b in zip(bands, encoder_bands, strict=True) if a.isdigit() != b.isdigit()
    ]
    if unchecked:
        log.warning(
            "%s: cannot check bands %s against the encoder's %s (one side has no names)",
            source,
            ", ".join(a for a, _ in unchecked),
            ", ".join(b for _, b in unchecked),
        )


def encoder_images(
    images: ImageSet,
    encoder_bands: Sequence[str] | None,
    mean: Sequence[float],
    bands: str | Sequence[int | str] | None = None,
    source: str = "the data",
) -> ImageSet:
    """An image set as an encoder reads it: its bands chosen and checked, invalid pixels filled.

    Args:
        images: The data, as `open_images` returns it.
        encoder_bands: The encoder's bands (`EncoderInfo.bands`), or None when it records none.
        mean: The encoder's per-band mean, in native units: what invalid pixels become.
        bands: The bands to read (`--bands`); None for the encoder's.
        source: Names the data in errors.

    Raises:
        ValueError: A band cannot be found, or the chosen bands differ from the encoder's.
    """
    if bands is None:
        bands = encoder_bands
    chosen = select_bands(images, bands, source)
    check_encoder_bands(band_names_of(chosen), encoder_bands, source)
    if len(mean) != chosen.in_chans:
        # the channel check of the transforms reports this with its own words
        return chosen
    return fill_images(chosen, mean)


def fill_images(images: ImageSet, values: Sequence[float] | None = None) -> BandImages:
    """`images` with every invalid (NaN) pixel of band c read as `values[c]` (native units).

    Args:
        images: Any image set.
        values: One per band; None for the mean of each band's valid pixels (`channel_stats`).
    """
    if values is None:
        values = channel_stats(images)[0]
    if isinstance(images, BandImages) and images.fill is None:
        return BandImages(images.images, images.indices, images.band_names, fill=values)
    names = band_names_of(images) or [str(k) for k in range(images.in_chans)]
    return BandImages(images, None, names, fill=values)


def default_composite(names: Sequence[str] | None, n_bands: int) -> list[int]:
    """The bands a picture shows as red, green and blue when none are chosen.

    Bands named red/green/blue (or r/g/b, or B4/B3/B2 and B04/B03/B02 as Sentinel-2 and Landsat
    8-9 call them), any case; else the first three; a single band for 1- and 2-band images.
    """
    if n_bands < 3:
        return [0]
    lowered = [str(name).lower() for name in names] if names else []
    for triple in _COMPOSITES:
        if all(colour in lowered for colour in triple):
            return [lowered.index(colour) for colour in triple]
    return [0, 1, 2]
