"""Embeddings out: an encoder's features of every file in a folder, written to disk.

A features file holds one row per image file, in the folder's sorted file order: the file's
path relative to the folder, its class (the name of its class sub-folder) when the folder is
labelled, and its features. Two formats:

- `.parquet` (needs pyarrow, `pip install 'sslvit[parquet]'`): one table with the columns
  `path`, `label` (only when labelled) and `feature`, a fixed-size list of `embed_dim` float32
  (for `--tokens patch`: a fixed-size list of `n_patches` such lists). The table's schema
  metadata `sslvit` is a JSON object with what the file was made from.
- `.npy`: the float32 matrix `[N, embed_dim]` (`[N, n_patches, embed_dim]` for patch tokens)
  and a JSON sidecar with the same stem (`feats.npy` -> `feats.json`) holding `paths`,
  `labels` (or null) and the same metadata.

Tokens: "cls" is the class token and "mean" the mean of the patch tokens, both after the
encoder's final norm, one `embed_dim` vector per file. "patch" keeps every patch token,
`[n_patches, embed_dim]` per file in row-major grid order, for dense uses; retrieval,
clustering and maps need one vector per file and refuse it.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from timm.models.vision_transformer import VisionTransformer

from sslvit.data import Subset, open_images
from sslvit.data.bands import FileImage, encoder_images
from sslvit.evaluate.features import TOKENS, encoder_transform, extract_features
from sslvit.evaluate.report import write_text_atomic
from sslvit.models.io import EncoderInfo, load_encoder
from sslvit.models.vit import patch_grid
from sslvit.train.distributed import init_distributed, resolve_device

FORMATS = (".parquet", ".npy")
_META_KEY = b"sslvit"


@dataclass
class Embeddings:
    """Features of an image set, one row per file.

    Attributes:
        features: float32 `[N, embed_dim]`, or `[N, n_patches, embed_dim]` for patch tokens.
        paths: Each file's path relative to `meta["data"]`.
        labels: Each file's class name, or None for an unlabelled set.
        meta: `tokens`, `data` (the folder, absolute), `encoder` (absolute path of the run
            folder or `.safetensors` file), `model`, `embed_dim`, and `patch_grid` for patch
            tokens.
    """

    features: torch.Tensor
    paths: list[str]
    labels: list[str] | None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.features)
        if len(self.paths) != n or (self.labels is not None and len(self.labels) != n):
            n_labels = "no" if self.labels is None else len(self.labels)
            raise ValueError(f"embeddings: {n} rows, {len(self.paths)} paths, {n_labels} labels")

    def vectors(self, source: str | Path = "the features") -> torch.Tensor:
        """One vector per file, `[N, embed_dim]`; patch-token features are refused.

        Args:
            source: Names the features in the error (normally their file).
        """
        if self.features.ndim != 2:
            raise ValueError(
                f"{source}: holds patch tokens {tuple(self.features.shape)}, not one vector per "
                "file; embed again with --tokens cls or --tokens mean"
            )
        return self.features

    def keys(self) -> list[str]:
        """Each file's full path (folder and relative path), to recognise the same file."""
        return [f"{self.meta.get('data', '')}/{p}" for p in self.paths]


def embed_images(
    encoder: VisionTransformer,
    info: EncoderInfo,
    images,
    tokens: str = "cls",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int = 0,
) -> Embeddings | None:
    """Features of every image of `images`, shared out over the processes of a job.

    In a process group of W processes, rank r embeds the items r, r + W, r + 2W, ... (no
    padding, so no item is embedded twice and a set smaller than W leaves some ranks idle),
    and rank 0 gathers the shares and puts every row back at its item's position.

    Args:
        encoder: The ViT encoder.
        info: Its `EncoderInfo` (input size and normalisation).
        images: An image set (`names`, `labels`, `classes`, `in_chans`, `read`).
        tokens: "cls", "mean" or "patch" (see the module docstring).
        batch_size: Images per forward pass.
        device: Where the encoder runs.
        workers: DataLoader worker processes per process.

    Returns:
        The `Embeddings` in the order of `images` on rank 0 (and in a single process); None on
        the other ranks. `meta` holds `tokens`, `model` and `embed_dim` (and `patch_grid`).
    """
    if tokens not in TOKENS:
        raise ValueError(f"unknown tokens {tokens!r}; choose one of {', '.join(TOKENS)}")
    transform = encoder_transform(info, images.in_chans)
    grouped = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if grouped else (0, 1)

    share = list(range(rank, len(images), world))
    feats = None
    if share:
        subset = Subset(images, share)
        feats, _ = extract_features(
            encoder, subset, transform, tokens, batch_size, device, workers=workers
        )
    if world > 1:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object((share, feats), gathered, dst=0)
        if rank != 0:
            return None
        parts = [(s, f) for s, f in gathered if s]
        order = [i for s, _ in parts for i in s]
        if sorted(order) != list(range(len(images))):
            raise RuntimeError(f"gathered {len(order)} rows for {len(images)} images")
        feats = torch.empty((len(images), *parts[0][1].shape[1:]), dtype=torch.float32)
        for s, f in parts:
            feats[torch.as_tensor(s)] = f

    labels = None
    if images.labels is not None:
        labels = [images.classes[k] for k in images.labels]
    meta = {"tokens": tokens, "model": info.model, "embed_dim": info.embed_dim}
    if tokens == "patch":
        meta["patch_grid"] = list(patch_grid(encoder))
    return Embeddings(feats, list(images.names), labels, meta)


def embed_folder(
    encoder_path: str | Path,
    data: str | Path,
    out: str | Path,
    tokens: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    workers: int = 0,
    strict: bool = False,
    window: str | None = None,
    slice_axis: int = -1,
    bands: str | None = None,
) -> Path | None:
    """Embed every image under `data` and write the features file `out` (see module docstring).

    Run plainly or under `torchrun`: then each process embeds a share and rank 0 writes.

    Args:
        encoder_path: A run folder or an exported `.safetensors` encoder.
        data: A folder of images (labels from class sub-folders when there are at least two),
            or a built-in sample split ("sample:test").
        out: The file to write, ending in `.parquet` or `.npy`.
        tokens: "cls", "mean" or "patch"; None for the pooling the encoder's method recommends.
        batch_size: Images per forward pass, per process.
        device: "auto" (this process's GPU when there is one), "cpu", "cuda", "cuda:N".
        workers: DataLoader worker processes per process.
        strict: Stop on the first unreadable file instead of skipping it.
        window: CT windows the encoder was trained with (see `open_images`).
        slice_axis: Axis volumes are cut along (see `open_images`).
        bands: The bands to read (`sslvit.data.bands`); None for the encoder's.

    Returns:
        The path written on rank 0; None on the other ranks.
    """
    out = Path(out)
    check_format(out)
    device = resolve_device(device)
    job = init_distributed(device)
    try:
        encoder, info = load_encoder(encoder_path, device)
        images = open_images(
            data,
            strict=strict,
            tile_size=info.tile_size,
            tile_stride=info.tile_stride,
            window=window,
            slice_axis=slice_axis,
        )
        images = encoder_images(images, info.bands, info.mean, bands, str(data))
        embeddings = embed_images(
            encoder, info, images, tokens or info.pool, batch_size, device, workers
        )
        written = None
        if embeddings is not None:
            embeddings.meta["encoder"] = str(Path(encoder_path).resolve())
            embeddings.meta["data"] = _data_key(data)
            written = save_embeddings(embeddings, out)
        if job.world_size > 1:
            dist.barrier()
        return written
    finally:
        if job.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def embed_query(
    query: str | Path,
    encoder_path: str | Path,
    tokens: str,
    batch_size: int = 256,
    device: str = "auto",
) -> Embeddings:
    """Embed one image file or a folder of images, in one process, for a search.

    Args:
        query: An image file or a folder (labelled when it has class sub-folders).
        encoder_path: The encoder the index was made with.
        tokens: The index's tokens.
        batch_size: Images per forward pass.
        device: As for `embed_folder`.
    """
    query = Path(query)
    device = resolve_device(device)
    encoder, info = load_encoder(encoder_path, device)
    if query.is_file():
        images, data = FileImage(query), query.parent
    else:
        images, data = open_images(query), query
    images = encoder_images(images, info.bands, info.mean, source=str(query))
    embeddings = embed_images(encoder, info, images, tokens, batch_size, device)
    embeddings.meta.update(encoder=str(Path(encoder_path).resolve()), data=_data_key(data))
    return embeddings


def _data_key(data: str | Path) -> str:
    """A folder as its absolute path; a built-in sample split as its name."""
    path = Path(data)
    return str(path.resolve()) if path.is_dir() else str(data)


def check_format(path: str | Path) -> None:
    """Raise ValueError unless `path` ends in a features format this version can write."""
    suffix = Path(path).suffix
    if suffix not in FORMATS:
        raise ValueError(f"{path}: a features file must end in {' or '.join(FORMATS)}")
    if suffix == ".parquet":
        _pyarrow()


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            "parquet files need pyarrow: pip install 'sslvit[parquet]' (or write .npy)"
        ) from None
    return pa, pq


def sidecar(path: str | Path) -> Path:
    """The JSON file beside a `.npy` features matrix."""
    return Path(path).with_suffix(".json")


def save_embeddings(embeddings: Embeddings, out: str | Path) -> Path:
    """Write `embeddings` as `.parquet` or `.npy` plus sidecar, each file atomically.

    Returns:
        The features file written.
    """
    out = Path(out)
    check_format(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    features = embeddings.features.float().contiguous().numpy()
    if out.suffix == ".npy":
        side = sidecar(out)
        if side.is_file() and "paths" not in _read_json(side):
            raise ValueError(f"{side}: exists and is not a features sidecar; choose another --out")
        with open(tmp, "wb") as handle:
            np.save(handle, features)
        os.replace(tmp, out)
        record = {**embeddings.meta, "paths": embeddings.paths, "labels": embeddings.labels}
        write_text_atomic(side, json.dumps(record))
        return out

    pa, pq = _pyarrow()
    column = pa.array(features.reshape(-1))
    for width in reversed(features.shape[1:]):
        column = pa.FixedSizeListArray.from_arrays(column, width)
    columns = {"path": pa.array(embeddings.paths, pa.string())}
    if embeddings.labels is not None:
        columns["label"] = pa.array(embeddings.labels, pa.string())
    columns["feature"] = column
    table = pa.table(columns).replace_schema_metadata({_META_KEY: json.dumps(embeddings.meta)})
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return out


def load_embeddings(path: str | Path) -> Embeddings:
    """Read a features file written by `save_embeddings` (or `sslvit embed`).

    Raises:
        FileNotFoundError: The file or the `.npy` file's sidecar is missing.
        ValueError: Another suffix, or a file that is not a features file.
    """
    path = Path(path)
    check_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such features file (write one with `sslvit embed`)")
    if path.suffix == ".npy":
        side = sidecar(path)
        if not side.is_file():
            raise FileNotFoundError(f"{side}: the sidecar with the paths of {path} is missing")
        try:
            features = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        except ValueError as err:
            raise ValueError(f"{path}: not a features matrix ({err})") from None
        record = _read_json(side)
        try:
            paths, labels = record.pop("paths"), record.pop("labels")
            return Embeddings(features, paths, labels, record)
        except (KeyError, ValueError) as err:
            raise ValueError(f"{side}: does not describe {path} ({err})") from None

    pa, pq = _pyarrow()
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: not a parquet file ({err})") from None
    if not {"path", "feature"} <= set(table.column_names):
        raise ValueError(f"{path}: expected the columns path and feature (and optional label)")
    column = table.column("feature").combine_chunks()
    shape = [len(column)]
    while pa.types.is_fixed_size_list(column.type):
        shape.append(column.type.list_size)
        column = column.flatten()
    flat = column.to_numpy(zero_copy_only=False)  # read-only: copied below
    features = torch.tensor(flat.reshape(shape), dtype=torch.float32)
    labels = table.column("label").to_pylist() if "label" in table.column_names else None
    raw_meta = (table.schema.metadata or {}).get(_META_KEY, b"{}")
    return Embeddings(features, table.column("path").to_pylist(), labels, json.loads(raw_meta))


def _read_json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return record
