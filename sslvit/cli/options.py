"""Options and their readings shared by several commands: bands, image size, medical readers."""

import argparse
import logging
from pathlib import Path

log = logging.getLogger("sslvit")
_UNKNOWN = object()  # an exported encoder does not record the windows it was trained with

BANDS_HELP = (
    "bands to read, in order: 0-based indices or names from the files' band descriptions or "
    "the folder's bands.txt, comma-separated (3,2,1 or B4,B3,B2)"
)


def encoder_folder(encoder: str) -> Path:
    """Where an encoder's results go: the run folder given, or the folder of a weights file."""
    path = Path(encoder)
    return path if path.is_dir() else path.parent


def image_size(text: str) -> int | tuple[int, int]:
    """An image size: "32" (square) or "32x48" (height x width)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 32 or 32x48")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def square_side(text: str) -> int:
    """`pretrain --img-size`: the side of the square training crops, "32" or "32x32"."""
    try:
        size = image_size(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a side such as 32") from None
    if isinstance(size, tuple):
        if size[0] != size[1]:
            raise argparse.ArgumentTypeError(
                f"{text!r}: pretraining crops are square; give one side, e.g. {max(size)} "
                "(finetune, segment and eval take HxW)"
            )
        size = size[0]
    return size


def worker_count(text: str) -> int:
    """`--workers`: data-loading processes, 0 (load in the main process) or more."""
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 or a positive whole number")
    return count


def label_budget(text: str) -> str:
    """`--labels`: a label budget that `parse_label_spec` reads (checked at parse time)."""
    from sslvit.data.splits import parse_label_spec

    try:
        parse_label_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def label_budgets(text: str) -> str:
    """`--fractions`: comma-separated label budgets, each checked as `label_budget`."""
    for part in text.split(","):
        label_budget(part)
    return text


def window_option(text: str) -> str:
    """`--window`: "none", or windows that `parse_window` reads (checked at parse time)."""
    from sslvit.data.medical import parse_window

    if text.strip().lower() == "none":
        return "none"
    try:
        parse_window(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_reader_options(p, downstream: bool = True) -> None:
    """`--window` and `--slice-axis` (`sslvit.data.medical`) on a command that reads images."""
    run = "the encoder's run's, else " if downstream else ""
    p.add_argument(
        "--window",
        type=window_option,
        help="CT windows onto [0, 1], one channel each, comma-separated: lung, mediastinum, "
        "soft_tissue, bone, brain, subdural, liver, or CENTRE:WIDTH in HU (write "
        f"--window=-600:1500 for a negative centre); 'none' for raw values (default: {run}none)",
    )
    p.add_argument(
        "--slice-axis",
        type=int,
        choices=[-3, -2, -1, 0, 1, 2],
        help="axis that NIfTI volumes, multi-frame DICOM and DICOM series are cut along into "
        f"2-D slices (default: {run}-1, the last)",
    )


def reader_options(args: argparse.Namespace, encoder: str | None) -> dict:
    """`window` and `slice_axis` for `open_images`: as given, else those of the encoder's run."""
    window, axis = getattr(args, "window", None), getattr(args, "slice_axis", None)
    run = Path(encoder or "none")
    saved = (run if run.is_dir() else run.parent) / "config.yaml"  # a run's encoder.safetensors
    trained = _UNKNOWN
    if run.name.lower() != "none" and saved.is_file():
        from sslvit.train.config import load_config

        data = load_config(saved).data
        trained = data.window
        if window is not None:
            _check_window(None if window == "none" else window, trained, run)
        window = data.window if window is None else window
        axis = data.slice_axis if axis is None else axis
    elif run.name.lower() != "none" and window not in (None, "none"):
        _check_window(window, trained, run)
    return {
        "window": None if window == "none" else window,
        "slice_axis": -1 if axis is None else axis,
    }


def _check_window(window: str | None, trained, encoder: Path) -> None:
    """Refuse a `--window` that gives another channel count than the encoder takes; warn when
    it differs from the windows the encoder was trained with (`trained`, or `_UNKNOWN`)."""
    from sslvit.data.medical import parse_window
    from sslvit.models.io import load_info

    if window is None and trained in (None, _UNKNOWN):
        return  # raw values, as trained (or no way to know): the data decides the channels
    in_chans = load_info(encoder).in_chans
    n_chans = len(parse_window(window)) if window else 1  # windows apply to one-channel data
    given = f"--window {window or 'none'}"
    how = {None: "raw values (no --window)", _UNKNOWN: None}.get(trained, f"--window {trained}")
    if n_chans != in_chans:
        raise ValueError(
            f"{given} gives {n_chans} channel(s), but the encoder {encoder} takes {in_chans}"
            + (f" (it was trained with {how})" if how else "")
        )
    if how and not (window and trained and parse_window(window) == parse_window(trained)):
        log.warning(
            "%s: the encoder %s was trained with %s; its features of other windows are not "
            "comparable",
            given,
            encoder,
            how,
        )


def scratch_bands(images, bands: str | None, source: str):
    """Images for a ViT trained from scratch: `bands` chosen; in rasters, invalid pixels read as
    the band's mean over these images."""
    from sslvit.data.bands import BandImages, fill_images, select_bands

    chosen = select_bands(images, bands, source)
    return fill_images(chosen) if isinstance(chosen, BandImages) else chosen
