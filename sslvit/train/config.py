"""The run configuration: a tree of dataclasses with YAML in and out.

Layers, from weakest to strongest: the defaults below, a recipe file (`--config`), the command
line's named options, then `--set section.field=value` overrides. Every run writes the result
to `config.yaml` in its folder.
"""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sslvit.methods import method_config_class
from sslvit.methods.base import check_limits, scale_limit
from sslvit.models.vit import MODELS


@dataclass
class DataConfig:
    """Where images come from and how they become tensors.

    `path` is a folder (searched recursively) or "sample" for the built-in MNIST sample.
    `mean`/`std` are per-channel, in the reader's native units; when left empty they are
    computed from `stats_samples` images of the data and stored with the run.
    When `path` is a hyperspectral cube file (`sslvit.data.cubes`), the images are its square
    tiles of `tile_size` pixels (default `img_size`) every `tile_stride` pixels (default half a
    tile).
    `bands` chooses bands by 0-based index or name (`sslvit.data.bands`); None reads every
    band. Once the data is open it holds the chosen bands' names (indices for unnamed bands).
    `window` maps one-channel data (CT in Hounsfield units) onto [0, 1] channels, one per window:
    presets ("lung", "brain,subdural,bone") or "CENTRE:WIDTH" (`sslvit.data.medical`); None
    keeps the raw values. `slice_axis` is the axis that NIfTI volumes, multi-frame DICOM and
    DICOM series are cut along into 2-D slices (-1: the last).
    """

    path: str | None = None
    img_size: int = 224
    in_chans: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    stats_samples: int = 1000
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    workers: int = 2
    strict: bool = False
    tile_size: int | None = None
    tile_stride: int | None = None
    bands: list[str] | None = None
    window: str | None = None
    slice_axis: int = -1

    def check(self) -> None:
        """Fail before any work on a value outside its range, naming the field."""
        limits = [
            ("img_size", self.img_size >= 1, "at least 1"),
            ("stats_samples", self.stats_samples >= 1, "at least 1"),
            scale_limit(self, "crop_scale"),
            ("workers", self.workers >= 0, "at least 0"),
        ]
        check_limits("data", self, limits)


@dataclass
class ModelConfig:
    """The encoder: a timm ViT definition at any input size and channel count.

    `band_groups` K > 0 gives a token per spatial patch and group of bands instead of one per
    patch (`sslvit.models.band_groups`), for images with many bands; 0 is the plain embedding.
    """

    name: str = "vit_tiny"
    patch_size: int = 16
    drop_path: float = 0.0
    band_groups: int = 0

    def check(self) -> None:
        """Fail before any work on a value outside its range, naming the field."""
        limits = [
            ("name", self.name in MODELS, f"one of {', '.join(sorted(MODELS))}"),
            ("patch_size", self.patch_size >= 1, "at least 1"),
            ("drop_path", 0 <= self.drop_path < 1, "in [0, 1)"),
            ("band_groups", self.band_groups >= 0, "at least 0 (0 = the plain embedding)"),
        ]
        check_limits("model", self, limits)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay.

    The peak learning rate is `base_lr * effective_batch / 256`, where the effective batch is
    `batch_size * accum_steps * world_size` (the linear scaling rule used by MAE and DINO).
    With `weight_decay_end` set, weight decay follows a half cosine from `weight_decay` to it
    over the run (DINO's 0.04 -> 0.4).
    """

    epochs: float = 100.0
    batch_size: int = 128
    accum_steps: int = 1
    base_lr: float = 1.5e-4
    min_lr: float = 0.0
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    weight_decay_end: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float = 0.0

    def check(self) -> None:
        """Fail before any work on a value outside its range, naming the field."""
        limits = [
            ("epochs", 0 < self.epochs < math.inf, "a finite number above 0"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("accum_steps", self.accum_steps >= 1, "at least 1"),
            ("base_lr", 0 < self.base_lr < math.inf, "a finite number above 0"),
            ("min_lr", 0 <= self.min_lr < math.inf, "a finite number, at least 0"),
            ("warmup_epochs", 0 <= self.warmup_epochs < math.inf, "a finite number, at least 0"),
            ("weight_decay", self.weight_decay >= 0, "at least 0"),
            ("clip_grad", self.clip_grad >= 0, "at least 0 (0 = off)"),
        ]
        check_limits("optim", self, limits)


@dataclass
class RunConfig:
    """Where the run goes and how it executes.

    `precision`: "auto" picks bf16 on GPUs that support it (else fp16 with loss scaling) and on
    CPUs with native bf16 instructions; other CPUs stay in fp32, where emulated bf16 is slower.
    `stop_at_step` ends the run cleanly after that many optimiser steps without changing the
    schedule (0 = run to the end), which makes a resumable partial run.
    """

    out: str = "runs/mae"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    log_every: int = 20
    checkpoint_every: int = 0
    stop_at_step: int = 0

    def check(self) -> None:
        """Fail before any work on a count outside its range, naming the field."""
        limits = [
            ("log_every", self.log_every >= 1, "at least 1"),
            ("checkpoint_every", self.checkpoint_every >= 0, "at least 0 (0 = off)"),
            ("stop_at_step", self.stop_at_step >= 0, "at least 0 (0 = off)"),
        ]
        check_limits("run", self, limits)


@dataclass
class Config:
    """The whole configuration of a pretraining run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: typing.Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        if self.method is None:
            self.method = method_config_class("mae")()

    def check(self) -> None:
        """Every section's ranges, before any work (a data scan can take minutes)."""
        for part in (self.data, self.model, self.optim, self.run, self.method):
            part.check()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(value, hint, where: str):
    """Convert a YAML value to a field's annotated type, or fail naming the field."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{where}: {value!r} does not fit {hint}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{where}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
        item = args[0] if args else typing.Any
        items = [_coerce(v, item, where) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is typing.Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; it is a number to anyone typing it
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, int, float)):
        return str(value)
    raise ValueError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _fill(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        listed = ", ".join(sorted(unknown))
        raise ValueError(f"{where}: unknown field(s) {listed}; known: {', '.join(sorted(known))}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()})


def config_from_dict(values: dict, where: str = "config") -> Config:
    """Build a `Config` from nested plain values, checking every field name and type."""
    values = dict(values or {})
    method = dict(values.pop("method", None) or {})
    method_cls = method_config_class(method.get("name", "mae"))
    sections = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "method"}
    hints = typing.get_type_hints(Config)
    unknown = set(values) - set(sections)
    if unknown:
        raise ValueError(f"{where}: unknown section(s) {', '.join(sorted(unknown))}")
    # "--set optim.base_lr: ...", "recipe.yaml optim.base_lr: ...": the source, then the key
    built = {k: _fill(hints[k], v, f"{where} {k}") for k, v in values.items()}
    return Config(method=_fill(method_cls, method, f"{where} method"), **built)


def load_config(path: str | Path) -> Config:
    """Read a YAML recipe or a run's `config.yaml`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err
    return config_from_dict(values, where=str(path))


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `section.field=value` strings (values parsed as YAML) and re-check the result.

    Setting `method.name` switches to that method's defaults before the other method fields.
    """
    values = config.to_dict()
    ordered = sorted(overrides, key=lambda item: not item.startswith("method.name="))
    for item in ordered:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2:
            raise ValueError(
                f"--set {item!r}: expected section.field=value, e.g. optim.base_lr=1e-3"
            )
        section, name = parts
        if section not in values:
            raise ValueError(f"--set {item!r}: unknown section {section!r}")
        value = yaml.safe_load(raw)
        if key == "method.name" and value != values["method"].get("name"):
            values["method"] = dataclasses.asdict(method_config_class(value)())
        values[section][name] = value
    return config_from_dict(values, where="--set")
