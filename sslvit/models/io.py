"""Encoder files: timm-keyed safetensors weights plus a JSON sidecar that says how to use them.

`encoder.safetensors` holds the encoder's state dict under timm's key names; `encoder.json`
beside it holds the model name, input geometry and the normalisation the encoder was trained
with, so every downstream command can rebuild the encoder and feed it data the same way.
"""

import dataclasses
import errno
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

from sslvit.models.band_groups import grouped_embed_layer
from sslvit.models.vit import MODELS, create_vit


@dataclasses.dataclass
class EncoderInfo:
    """What a user of an encoder file needs besides its weights.

    Attributes:
        model: sslvit model name ("vit_tiny", ...).
        img_size: Input (height, width) in pixels.
        patch_size: Patch side in pixels.
        in_chans: Input channels.
        mean: Per-channel mean, in the reader's native units, subtracted before the encoder.
        std: Per-channel standard deviation, divided by after the mean.
        embed_dim: Width of the output features.
        pool: The feature pooling the method recommends ("cls" or "mean").
        method: The pretraining method, or "none" for random weights.
        timm_name: The timm model to call `timm.create_model` with.
        band_groups: 0 for the plain patch embedding, else the number of band groups K of
            `sslvit.models.band_groups.GroupedPatchEmbed` (timm needs `timm_options()` too).
        bands: The input bands in order, by name (by 0-based index, as text, where the data
            named none; see `sslvit.data.bands`), or None when the data named no band.
        tile_size: Side in pixels of the tiles a hyperspectral cube was cut into for
            pretraining (`sslvit.data.cubes.CubeTiles`), or None when the data was no cube.
            Downstream commands cut cubes the same way.
        tile_stride: Pixels between those tiles, or None.
    """

    model: str
    img_size: tuple[int, int]
    patch_size: int
    in_chans: int
    mean: list[float]
    std: list[float]
    embed_dim: int
    pool: str = "cls"
    method: str = "none"
    timm_name: str = ""
    band_groups: int = 0
    bands: list[str] | None = None
    tile_size: int | None = None
    tile_stride: int | None = None

    def __post_init__(self):
        self.img_size = tuple(int(s) for s in self.img_size)
        if not self.timm_name:
            self.timm_name = MODELS[self.model]
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(
                f"normalisation has {len(self.mean)} means and {len(self.std)} stds "
                f"for {self.in_chans} channels"
            )
        if self.bands is not None and len(self.bands) != self.in_chans:
            raise ValueError(f"{len(self.bands)} band names for {self.in_chans} channels")

    def build(self, drop_path: float = 0.0) -> VisionTransformer:
        """A randomly initialised encoder of this geometry, with stochastic depth `drop_path`."""
        return create_vit(
            self.model, self.img_size, self.patch_size, self.in_chans, drop_path, self.band_groups
        )

    def timm_options(self) -> dict:
        """Extra `timm.create_model` arguments: the grouped patch embedding when there is one."""
        return {"embed_layer": grouped_embed_layer(self.band_groups)} if self.band_groups else {}


class WriteError(OSError):
    """A run's file (checkpoint, encoder) could not be written; the file at that path before,
    if any, is unchanged. The message names the file and the reason (a full disk, no write
    access), found in the chain of exceptions the writer raised."""

    def __init__(self, what: str, path: Path, cause: BaseException):
        os_error = cause
        while os_error is not None and not isinstance(os_error, OSError):
            os_error = os_error.__cause__ or os_error.__context__
        code = getattr(os_error, "errno", None)
        if code is None and "os error 28" in str(cause):  # safetensors' Rust error, as text
            code = errno.ENOSPC
        reason = (os_error.strerror if os_error is not None else None) or str(cause)
        reason = reason.strip().splitlines()[0] if reason.strip() else type(cause).__name__
        if code == errno.ENOSPC:
            reason = os.strerror(errno.ENOSPC) + "; free some space on that disk"
        super().__init__(code, f"could not write {what} {path} ({reason})")

    def __str__(self) -> str:
        return self.strerror


def _atomic_write(path: Path, write, what: str = "the encoder") -> None:
    """`write(tmp)` to a temporary file beside `path`, then one rename; a failed write leaves
    `path` as it was and no temporary file (raises `WriteError`)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        # the mode a new file gets under the umask; safetensors writes its files 0600 whatever
        tmp.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
        mode = tmp.stat().st_mode & 0o777
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except (OSError, RuntimeError, SafetensorError) as err:
        tmp.unlink(missing_ok=True)
        raise WriteError(what, path, err) from err


def sidecar_path(weights: str | Path) -> Path:
    """The JSON sidecar that belongs to a `.safetensors` file."""
    return Path(weights).with_suffix(".json")


def save_encoder(encoder: VisionTransformer, info: EncoderInfo, path: str | Path) -> Path:
    """Write `path` (.safetensors) and its `.json` sidecar, each atomically.

    Returns:
        The path of the weights file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in encoder.state_dict().items()
    }
    _atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    text = json.dumps(dataclasses.asdict(info), indent=2) + "\n"
    _atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text))
    return path


def resolve_encoder_path(path: str | Path) -> Path:
    """Accept a run folder or a `.safetensors` file; return the weights file."""
    path = Path(path)
    if path.is_dir():
        path = path / "encoder.safetensors"
    elif path.suffix != ".safetensors":
        raise ValueError(f"{path}: not a run folder or a .safetensors encoder file")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no encoder here; give a run folder written by `sslvit pretrain` "
            "or an exported .safetensors file"
        )
    if not sidecar_path(path).is_file():
        raise FileNotFoundError(f"{sidecar_path(path)}: the encoder's JSON sidecar is missing")
    return path


def load_info(path: str | Path) -> EncoderInfo:
    """Read the sidecar of a run folder or `.safetensors` file."""
    weights = resolve_encoder_path(path)
    try:
        fields = json.loads(sidecar_path(weights).read_text())
        return EncoderInfo(**fields)
    except (json.JSONDecodeError, TypeError, KeyError) as err:
        raise ValueError(f"{sidecar_path(weights)}: not a valid encoder sidecar ({err})") from err


def load_encoder(path: str | Path, device: str | torch.device = "cpu", drop_path: float = 0.0):
    """Rebuild an encoder from a run folder or a `.safetensors` file.

    Args:
        path: Run folder or `.safetensors` file with its JSON sidecar.
        device: Where the encoder goes.
        drop_path: Stochastic depth rate of the rebuilt encoder (0 for evaluation; fine-tuning
            sets it).

    Returns:
        `(encoder, info)`: the encoder in eval mode on `device`, and its `EncoderInfo`.
    """
    info = load_info(path)
    weights = resolve_encoder_path(path)
    encoder = info.build(drop_path)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{weights}: not a readable .safetensors file ({err}); it may be truncated or "
            "not an encoder"
        ) from err
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        # PyTorch lists one line per mismatched tensor; the first says enough
        problems = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        first = problems[0] if problems else str(err)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(
            f"{weights}: the weights do not fit the encoder its sidecar "
            f"{sidecar_path(weights).name} describes: {first}{more}"
        ) from err
    return encoder.to(device).eval(), info
