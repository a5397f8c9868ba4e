"""Hyperspectral cubes: one file holds a whole scene of many bands.

A cube is read into float32 `[B, H, W]` (bands, rows, columns) in the file's own units, from
MATLAB files (v5 through scipy, v7.3 through h5py), NumPy `.npy`/`.npz` files holding a 3-D
array, or ENVI files (a text `.hdr` header plus raw binary data). Pretraining sees it as
overlapping square tiles (`CubeTiles`), pixel classification as a small window around each
labelled pixel (`PixelWindows`); the classes of those pixels come from a ground-truth file
(`sslvit.data.ground_truth`).

On the command line a cube is a file name, optionally with the variable to read after a colon:
`scene.mat`, `scene.mat:V`, `scene.npz:cube`, `scene.hdr` (or the ENVI data file beside it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslvit.data.envi import envi_header_of, read_envi
from sslvit.data.readers import UnreadableImageError

log = logging.getLogger("sslvit")

CUBE_SUFFIXES = {".mat", ".npy", ".npz", ".hdr"}
# A .npz with these keys is a MedMNIST array dataset (sslvit.data.medical), not a cube.
_MEDMNIST_KEYS = {"train_images", "val_images", "test_images"}
_HELP_INSTALL = "pip install 'sslvit[hyperspectral]'"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class Cube:
    """A hyperspectral scene in memory.

    Attributes:
        data: float32 `[B, H, W]` in the file's units.
        source: The file (and variable) it came from, for messages.
        band_names: ENVI `band names`, or None.
        wavelengths: ENVI `wavelength` values (in the header's units), or None.
    """

    data: np.ndarray
    source: str
    band_names: list[str] | None = None
    wavelengths: list[float] | None = None

    @property
    def n_bands(self) -> int:
        return self.data.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the scene."""
        return self.data.shape[1], self.data.shape[2]


def split_spec(spec: str | Path) -> tuple[Path, str | None]:
    """`scene.mat:V` -> (Path("scene.mat"), "V"); a plain file name -> (path, None)."""
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and tail and "/" not in tail and Path(head).suffix.lower() in CUBE_SUFFIXES:
        return Path(head), tail
    return Path(text), None


def is_cube_spec(spec: str | Path) -> bool:
    """Whether `spec` names a cube file (not a folder, not a MedMNIST `.npz`)."""
    path, _ = split_spec(spec)
    if not path.is_file():
        return False
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return not _MEDMNIST_KEYS & set(archive.files)
        except (OSError, ValueError):
            return True  # not a readable archive: let the cube reader say what is wrong
    return suffix in CUBE_SUFFIXES or envi_header_of(path) is not None


def read_cube(spec: str | Path) -> Cube:
    """Read a cube file into float32 `[B, H, W]`.

    Layouts:
        - 3-D arrays (`.mat`, `.npy`, `.npz`) are `[H, W, B]`, the layout MATLAB and the
          published scenes (Indian Pines, Pavia, Salinas, ...) use. v7.3 `.mat` files are HDF5
          with every array stored transposed; they are transposed back first.
        - 2-D arrays in a `.mat` are pixels by bands (either way round) with the scene's
          size in scalar variables `nRow` and `nCol` (as in the unmixing benchmarks); pixel
          p sits at row p % nRow, column p // nRow (MATLAB's column-major order).
        - ENVI: `samples`, `lines`, `bands`, `interleave` (bsq, bil, bip), `data type`,
          `byte order` and `header offset` from the header; `band names` and `wavelength`
          are kept.

    Without a variable name, a `.mat` or `.npz` yields its largest numeric 3-D array (or 2-D
    pixels-by-bands array).

    Raises:
        UnreadableImageError: "PATH: what is wrong" for a missing file, an unknown variable,
            no usable array, a malformed ENVI header or a data file of the wrong size.
    """
    path, variable = split_spec(spec)
    if not path.is_file():
        raise UnreadableImageError(f"{path}: no such cube file")
    header = envi_header_of(path)
    if header is not None:
        data, data_path, band_names, wavelengths = read_envi(header)
        return Cube(_as_float(data, data_path), str(data_path), band_names, wavelengths)
    arrays = load_arrays(path)
    name, array = _choose_cube(arrays, variable, path)
    source = f"{path}:{name}" if name else str(path)
    if array.ndim == 2:
        array = _pixels_to_cube(array, arrays, path)
    else:
        array = np.moveaxis(array, -1, 0)
    return Cube(_as_float(array, path), source)


class CubeTiles:
    """A cube cut into square tiles, as an unlabelled image set (`sslvit.data.arrays.ImageSet`).

    Tiles start every `stride` pixels from the top-left corner; when the stride does not land
    on the far edge, one more row (column) of tiles is placed flush with it, so every pixel is
    in some tile. Along an axis of n pixels that gives `floor((n - tile) / stride) + 1` tiles,
    plus one when `(n - tile) % stride` is not 0.

    Args:
        cube: The scene.
        tile_size: Side of a tile in pixels, at most the scene's smaller side.
        stride: Step between tile corners; default half a tile.
    """

    def __init__(self, cube: Cube, tile_size: int, stride: int | None = None) -> None:
        height, width = cube.shape
        stride = stride or max(1, tile_size // 2)
        if not 1 <= tile_size <= min(height, width):
            raise ValueError(
                f"{cube.source}: tile size {tile_size} does not fit the {height} x {width} scene"
            )
        if stride < 1:
            raise ValueError(f"{cube.source}: tile stride {stride} must be at least 1")
        self.cube, self.tile_size, self.stride = cube, tile_size, stride
        self.corners = [
            (r, c) for r in tile_starts(height, tile_size, stride)
            for c in tile_starts(width, tile_size, stride)
        ]  # fmt: skip
        self.names = [f"tile_r{r:04d}_c{c:04d}" for r, c in self.corners]
        self.labels, self.classes = None, None
        self.in_chans = cube.n_bands
        self.band_names = cube.band_names  # ENVI's, read by `sslvit.data.bands`

    def __len__(self) -> int:
        return len(self.corners)

    def read(self, i: int) -> torch.Tensor:
        """Tile `i` as float32 `[B, tile, tile]`."""
        r, c = self.corners[i]
        t = self.tile_size
        return torch.from_numpy(np.ascontiguousarray(self.cube.data[:, r : r + t, c : c + t]))


def tile_starts(n: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles along an axis of `n` pixels, the last one flush with the edge."""
    starts = list(range(0, n - tile + 1, stride))
    if starts[-1] + tile < n:
        starts.append(n - tile)
    return starts


class PixelWindows:
    """A `window x window` patch of the cube centred on each listed pixel, as an image set.

    The cube is padded by reflection (the border pixel is the mirror, not repeated), so a
    pixel at the edge gets a full window.

    Args:
        cube: The scene.
        rows: Row of each pixel, `[N]`.
        cols: Column of each pixel, `[N]`.
        window: Side of the window, odd, at most `2 * min(H, W) - 1`.
        labels: Class index (0-based) of each pixel, or None.
        classes: Class names by index.
    """

    def __init__(self, cube, rows, cols, window, labels=None, classes=None) -> None:
        height, width = cube.shape
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window {window}: must be an odd number of pixels (e.g. 9)")
        half = window // 2
        if half >= min(height, width):
            raise ValueError(
                f"{cube.source}: window {window} is too large to pad a {height} x {width} scene"
            )
        self.padded = np.pad(cube.data, ((0, 0), (half, half), (half, half)), mode="reflect")
        self.rows, self.cols = np.asarray(rows), np.asarray(cols)
        self.window = window
        self.names = [f"pixel_r{r:04d}_c{c:04d}" for r, c in zip(self.rows, self.cols, strict=True)]
        self.labels = None if labels is None else [int(k) for k in labels]
        self.classes = classes
        self.in_chans = cube.n_bands

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, i: int) -> torch.Tensor:
        """The window around pixel `i` as float32 `[B, window, window]`."""
        r, c, w = int(self.rows[i]), int(self.cols[i]), self.window
        return torch.from_numpy(np.ascontiguousarray(self.padded[:, r : r + w, c : c + w]))


def open_cube_tiles(
    spec: str | Path, tile_size: int | None = None, stride: int | None = None
) -> CubeTiles:
    """Read a cube and cut it into tiles (default 32 px, capped at the scene; half-tile stride)."""
    cube = read_cube(spec)
    tile_size = tile_size or min(32, *cube.shape)
    tiles = CubeTiles(cube, tile_size, stride)
    log.info(
        "%s: %d bands, %d x %d pixels, %d tiles of %d px (stride %d)",
        cube.source,
        cube.n_bands,
        *cube.shape,
        len(tiles),
        tile_size,
        tiles.stride,
    )
    return tiles


# Reading arrays from files.


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a `.mat`/`.npz` by name (MATLAB's axis order), or {"": array} of a `.npy`."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        if suffix == ".mat":
            return _load_mat(path)
    except UnreadableImageError:
        raise
    except ImportError as err:
        raise UnreadableImageError(f"{path}: needs {err.name} ({_HELP_INSTALL})") from None
    except Exception as err:
        raise UnreadableImageError(f"{path}: cannot read ({type(err).__name__}: {err})") from None
    raise UnreadableImageError(f"{path}: not a cube file (.mat, .npy, .npz or ENVI .hdr)")


def _load_mat(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as handle:
        head = handle.read(520)
    # v7.3 files are HDF5 after a 512-byte MATLAB header; HDF5 stores each array with its axes
    # reversed.
    if _HDF5_SIGNATURE in (head[:8], head[512:520]):
        import h5py

        arrays = {}
        with h5py.File(path, "r") as handle:
            for name, item in handle.items():
                kind = item.attrs.get("MATLAB_class", b"")
                kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                if isinstance(item, h5py.Dataset) and kind not in ("char", "cell", "struct"):
                    value = item[()]
                    if value.dtype.names is None:  # compound = complex: left out
                        arrays[name] = np.asarray(value).T
        return arrays
    import scipy.io

    values = scipy.io.loadmat(path)
    return {k: v for k, v in values.items() if not k.startswith("__") and isinstance(v, np.ndarray)}


def array_listing(arrays: dict[str, np.ndarray]) -> str:
    """What a file holds, for error messages: each array's name, shape and dtype."""
    shown = ", ".join(f"{k or 'array'} {tuple(v.shape)} {v.dtype}" for k, v in arrays.items())
    return f"it holds: {shown or 'nothing readable'}"


def _scene_size(arrays: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """(nRow, nCol) from scalar variables of those names (any case), or None."""
    found = {}
    for name, value in arrays.items():
        key = name.lower()
        if key in ("nrow", "ncol") and value.size == 1 and value.dtype.kind in "biuf":
            found[key] = int(value.reshape(-1)[0])
    return (found["nrow"], found["ncol"]) if len(found) == 2 else None


def _choose_cube(arrays, variable, path) -> tuple[str, np.ndarray]:
    size = _scene_size(arrays) if path.suffix.lower() == ".mat" else None
    n_pixels = size[0] * size[1] if size else -1

    def usable(a: np.ndarray) -> bool:
        return a.dtype.kind in "biuf" and (a.ndim == 3 or (a.ndim == 2 and n_pixels in a.shape))

    if variable is not None:
        if variable not in arrays:
            raise UnreadableImageError(f"{path}: no variable {variable!r}; {array_listing(arrays)}")
        array = arrays[variable]
        if not usable(array):
            raise UnreadableImageError(
                f"{path}: {variable} {tuple(array.shape)} {array.dtype} is not a cube: need a "
                "numeric [H, W, B] array (or, in a .mat, pixels x bands with nRow and nCol)"
            )
        return variable, array
    candidates = {k: v for k, v in arrays.items() if usable(v)}
    if not candidates:
        raise UnreadableImageError(
            f"{path}: no cube in it (a numeric [H, W, B] array, or in a .mat pixels x bands "
            f"with nRow and nCol); {array_listing(arrays)}"
        )
    name = max(candidates, key=lambda k: candidates[k].size)
    return name, candidates[name]


def _pixels_to_cube(array: np.ndarray, arrays, path: Path) -> np.ndarray:
    """A 2-D pixels-by-bands array (either way round) to `[B, H, W]`, column-major pixels."""
    height, width = _scene_size(arrays)
    if array.shape[0] == height * width and array.shape[1] != height * width:
        array = array.T
    return array.reshape(array.shape[0], height, width, order="F")


def _as_float(array: np.ndarray, source) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise UnreadableImageError(f"{source}: unsupported value type {array.dtype}")
    if min(array.shape) == 0:
        raise UnreadableImageError(f"{source}: the cube has an empty axis, shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)
