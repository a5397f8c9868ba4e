"""Export an encoder as a weights file that timm loads directly.

The exported `.safetensors` holds float32 tensors under timm's key names, and its `.json`
sidecar the `EncoderInfo` fields. A user without sslvit rebuilds the encoder with

    info = json.load(open("encoder.json"))
    model = timm.create_model(info["timm_name"], img_size=info["img_size"],
                              patch_size=info["patch_size"], in_chans=info["in_chans"],
                              num_classes=0)
    model.load_state_dict(safetensors.torch.load_file("encoder.safetensors"), strict=True)

and feeds it images normalised with the sidecar's `mean` and `std`. An encoder with band groups
(`band_groups` > 0 in the sidecar) has a patch embedding of sslvit's own; timm builds it when
also given `embed_layer=sslvit.models.band_groups.grouped_embed_layer(info["band_groups"])`, so
sslvit must be installed to load it.
"""

from pathlib import Path

import timm
import torch

from sslvit.models.io import EncoderInfo, load_encoder, save_encoder

FORMATS = ("timm",)


def check_timm_loadable(state: dict[str, torch.Tensor], info: EncoderInfo) -> None:
    """Raise ValueError unless `state` loads strictly into the timm model `info` describes.

    The timm model is built on the meta device, so the check allocates no weights.
    """
    with torch.device("meta"):
        model = timm.create_model(
            info.timm_name,
            pretrained=False,
            img_size=info.img_size,
            patch_size=info.patch_size,
            in_chans=info.in_chans,
            num_classes=0,
            **info.timm_options(),
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise ValueError(f"weights do not load into timm's {info.timm_name}: {first}") from err


def export_encoder(
    encoder_path: str | Path, out: str | Path, format: str = "timm", overwrite: bool = False
) -> Path:
    """Write an encoder as `out` (.safetensors, timm key names, float32) plus `out`'s `.json`.

    Args:
        encoder_path: A run folder, or a `.safetensors` encoder file with its `.json` sidecar.
        out: The weights file to write; must end in `.safetensors`. Its sidecar is written
            beside it with the suffix `.json`. Both are written atomically.
        format: The target library; only "timm".
        overwrite: Replace an existing `out` or sidecar (without it, either is an error: it
            may be another run's encoder, or someone's file).

    Returns:
        The path of the weights file.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the export file name must end in .safetensors")
    for path in (out, out.with_suffix(".json")):  # the weights and their sidecar
        if path.is_dir():
            raise FileExistsError(f"{path} is a folder; choose another --out")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; choose another --out or pass --overwrite")
    encoder, info = load_encoder(encoder_path)
    state = {k: v.to(torch.float32).contiguous() for k, v in encoder.state_dict().items()}
    check_timm_loadable(state, info)
    return save_encoder(encoder, info, out)
