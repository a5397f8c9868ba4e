"""Options and their readings shared by several commands: bands, image size, medical readers."""

import argparse
from pathlib import Path

BANDS_HELP = (
    "bands to read, in order: 0-based indices or names from the files' band descriptions or "
    "the folder's bands.txt, comma-separated (3,2,1 or B4,B3,B2)"
)


def image_size(text: str) -> int | tuple[int, int]:
    """An image size: "32" (square) or "32x48" (height x width)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 32 or 32x48")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def add_reader_options(p, downstream: bool = True) -> None:
    """`--window` and `--slice-axis` (`sslvit.data.medical`) on a command that reads images."""
    run = "the encoder's run's, else " if downstream else ""
    p.add_argument(
        "--window",
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
    if run.name.lower() != "none" and saved.is_file() and (window is None or axis is None):
        from sslvit.train.config import load_config

        data = load_config(saved).data
        window = data.window if window is None else window
        axis = data.slice_axis if axis is None else axis
    return {
        "window": None if window == "none" else window,
        "slice_axis": -1 if axis is None else axis,
    }


def scratch_bands(images, bands: str | None, source: str):
    """Images for a ViT trained from scratch: `bands` chosen; in rasters, invalid pixels read as
    the band's mean over these images."""
    from sslvit.data.bands import BandImages, fill_images, select_bands

    chosen = select_bands(images, bands, source)
    return fill_images(chosen) if isinstance(chosen, BandImages) else chosen
