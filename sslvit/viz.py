"""Pictures of what an encoder learned."""

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from sslvit.data import eval_transform, open_images  # noqa: E402
from sslvit.data.bands import (  # noqa: E402
    band_names_of,
    check_encoder_bands,
    default_composite,
    resolve_bands,
    select_bands,
)
from sslvit.methods import build_method  # noqa: E402
from sslvit.models import create_vit  # noqa: E402
from sslvit.train.checkpoint import load_checkpoint  # noqa: E402
from sslvit.train.config import load_config  # noqa: E402

log = logging.getLogger("sslvit")


def load_method(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a run's whole method (encoder, decoder, heads) from `checkpoints/last.pt`.

    Returns:
        `(method, config)` with the method in eval mode.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    encoder = create_vit(
        config.model.name,
        config.data.img_size,
        config.model.patch_size,
        config.data.in_chans,
        band_groups=config.model.band_groups,
    )
    method = build_method(config.method, encoder)
    method.load_state_dict(state["method"])
    return method.to(device).eval(), config


def _read_some(
    images, n: int, transform, source: str, report_skipped: bool = True
) -> tuple[list[int], torch.Tensor]:
    """Up to `n` images spread evenly over the set, skipping files that cannot be read.

    Returns:
        `(indices, batch)`; a warning names each skipped file (a debug line when
        `report_skipped` is False). Fails only when none is readable.
    """
    from sslvit.data import UnreadableImageError

    wanted = torch.linspace(0, len(images) - 1, min(n, len(images))).round().long().tolist()
    order = list(dict.fromkeys(wanted + list(range(len(images)))))
    picks, tensors = [], []
    for i in order:
        if len(picks) == len(wanted):
            break
        try:
            tensors.append(transform(images.read(i)))
            picks.append(i)
        except UnreadableImageError as err:
            log.log(logging.WARNING if report_skipped else logging.DEBUG, "skipped: %s", err)
    if not tensors:
        raise ValueError(f"{source}: none of the {len(images)} images could be read")
    return picks, torch.stack(tensors)


def _chosen_bands(images, encoder_bands: list[str] | None, source: str):
    """`images` read with the bands an encoder was trained on, checked; invalid pixels stay NaN."""
    # show's --bands picks the drawn bands, so it cannot stand in for the data's band names
    advice = (
        f"the encoder reads bands [{', '.join(encoder_bands or [])}]: name the data's bands so "
        "in a bands.txt beside it (one name per line)"
    )
    images = select_bands(images, encoder_bands, source, advice)
    check_encoder_bands(band_names_of(images), encoder_bands, source)
    return images


def _show(ax, picture: torch.Tensor) -> None:
    """Draw one `[H, W, 1 or 3]` picture in [0, 1] without ticks."""
    picture = picture.numpy()
    if picture.shape[-1] == 1:
        ax.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(picture)
    ax.set_xticks([])
    ax.set_yticks([])


def recon_figure(
    run_dir: str | Path,
    out: str | Path,
    data: str | None = None,
    n_images: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
    bands: str | list[int | str] | None = None,
    report_skipped: bool = True,
) -> Path:
    """Save originals, masked inputs and MAE reconstructions side by side.

    Each row is one image: the original, the visible patches (hidden ones grey), the
    reconstruction, and the reconstruction with the visible patches pasted back. Pixels are
    un-normalised to the data's units and drawn as `composite` draws them, every panel with the
    original's stretch; pixels invalid (no-data) in the original are black in every panel.
    The data is read with the run's bands, and a cube is cut into the run's tiles.

    Args:
        run_dir: A run folder of an MAE run.
        out: PNG path to write.
        data: Images to show; None for the run's own data.
        n_images: Rows of the figure, drawn evenly across the data.
        seed: Seed of the masks.
        device: Where the model runs.
        bands: The run's bands drawn as red, green, blue (see `composite_bands`).
        report_skipped: Warn about each unreadable file passed over; False right after
            pretraining, which has reported them already.
    """
    method, config = load_method(run_dir, device)
    if not hasattr(method, "reconstruct"):
        raise ValueError(f"{run_dir}: method {config.method.name!r} does not reconstruct pixels")
    source = data or config.data.path or "sample:test"
    # read at the run's channel count: files that do not fit are skipped with a warning
    images = open_images(
        source,
        labeled=False,
        check=False,
        in_chans=None if config.data.bands else config.data.in_chans,
        tile_size=config.data.tile_size or config.data.img_size,
        tile_stride=config.data.tile_stride,
        window=config.data.window,
        slice_axis=config.data.slice_axis,
    )
    images = _chosen_bands(images, config.data.bands, source)
    if images.in_chans != config.data.in_chans:
        raise ValueError(
            f"{source}: images have {images.in_chans} channels, the run was trained on "
            f"{config.data.in_chans}"
        )
    transform = eval_transform(config.data.img_size, config.data.mean, config.data.std)
    picks, batch = _read_some(images, n_images, transform, source, report_skipped)
    batch = batch.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    recon, hidden = method.reconstruct(batch, generator=generator)

    mean = torch.tensor(config.data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(config.data.std, device=device).view(1, -1, 1, 1)
    original = (batch * std + mean).float().cpu()
    # nothing to reconstruct where the original has no valid value: black there too
    recon = (recon * std + mean).float().cpu().where(original.isfinite(), torch.nan)
    hidden = hidden.float().cpu()
    limits = stretch_limits(original)
    grey = ((limits[0] + limits[1]) / 2).expand_as(original)
    panels = {
        "original": original,
        f"masked {config.method.mask_ratio:.0%}": original * (1 - hidden) + grey * hidden,
        "reconstruction": recon,
        "reconstruction + visible": original * (1 - hidden) + recon * hidden,
    }
    chosen = composite_bands(bands, config.data.bands, original.shape[1])
    shown = {title: composite(p, chosen, limits) for title, p in panels.items()}

    rows, cols = len(picks), len(panels)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.0 * rows), squeeze=False)
    for r in range(rows):
        for c, (title, pictures) in enumerate(shown.items()):
            _show(axes[r][c], pictures[r])
            if r == 0:
                axes[r][c].set_title(title, fontsize=9)
    return _save(fig, out)


def cls_attention(encoder, images: torch.Tensor) -> torch.Tensor:
    """The last block's attention from the class token to each patch, per head.

    Args:
        encoder: A timm ViT.
        images: Normalised `[B, C, H, W]` at the encoder's input size.

    Returns:
        `[B, heads, rows, cols]`, each head's map summing to at most 1 over the patches.
    """
    with torch.no_grad():
        x = encoder.patch_embed(images)
        x = encoder._pos_embed(x)
        x = encoder.norm_pre(x)
        for block in encoder.blocks[:-1]:
            x = block(x)
        last = encoder.blocks[-1]
        attn = last.attn
        y = last.norm1(x)
        b, n, d = y.shape
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, d // attn.num_heads)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, h, n, n]
    rows, cols = encoder.patch_embed.grid_size
    prefix = encoder.num_prefix_tokens
    return weights[:, :, 0, prefix:].reshape(b, attn.num_heads, rows, cols)


def attention_figure(
    encoder_path: str | Path,
    out: str | Path,
    data: str | None = None,
    n_images: int = 6,
    bands: str | list[int | str] | None = None,
    device: str | torch.device = "cpu",
    window: str | None = None,
    slice_axis: int = -1,
) -> Path:
    """Save each image next to its class-token attention maps, one panel per head.

    Works for any channel count; images are drawn as `composite` draws them (invalid pixels
    black, and fed to the encoder as the band mean). The data is read with the encoder's bands
    and a cube is cut into the encoder's tiles.
    Maps are upsampled (nearest) to the image and scaled per panel.

    Args:
        encoder_path: A run folder or an exported `.safetensors` encoder.
        out: PNG path to write.
        data: Images to show; None for the run's own data (a run folder), else the built-in
            sample.
        n_images: Rows of the figure, drawn evenly across the data.
        bands: The encoder's bands drawn as red, green, blue (see `composite_bands`).
        device: Where the encoder runs.
        window: CT windows the encoder was trained with (see `open_images`).
        slice_axis: Axis volumes are cut along (see `open_images`).
    """
    from sslvit.models import load_encoder

    encoder, info = load_encoder(encoder_path, device)
    if info.band_groups:
        raise ValueError(f"{encoder_path}: attention maps need the plain patch embedding")
    run_config = Path(encoder_path) / "config.yaml"
    run_data = load_config(run_config).data.path if run_config.is_file() else None
    source = data or run_data or "sample:test"
    images = open_images(
        source,
        labeled=False,
        check=False,
        in_chans=None if info.bands else info.in_chans,
        tile_size=info.tile_size,
        tile_stride=info.tile_stride,
        window=window,
        slice_axis=slice_axis,
    )
    images = _chosen_bands(images, info.bands, source)
    if images.in_chans != info.in_chans:
        hint = "" if data else " (the built-in sample; give the images with --data)"
        raise ValueError(
            f"{source}: images have {images.in_chans} channels, the encoder takes "
            f"{info.in_chans}{hint}"
        )
    size = info.img_size[0] if isinstance(info.img_size, (list, tuple)) else info.img_size
    transform = eval_transform(size, info.mean, info.std)
    picks, batch = _read_some(images, n_images, transform, source)
    # invalid pixels (NaN) go in as the band mean, 0 after normalisation
    maps = cls_attention(encoder, batch.nan_to_num(0.0).to(device)).float().cpu()
    maps = torch.nn.functional.interpolate(maps, size=batch.shape[-2:], mode="nearest")

    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    chosen = composite_bands(bands, info.bands, info.in_chans)
    shown = composite(batch.float() * std + mean, chosen)
    heads = maps.shape[1]
    rows, cols = len(picks), heads + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.8 * rows), squeeze=False)
    for r in range(rows):
        _show(axes[r][0], shown[r])
        for h in range(heads):
            axes[r][h + 1].imshow(maps[r, h].numpy(), cmap="inferno")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("image", fontsize=9)
    for h in range(heads):
        axes[0][h + 1].set_title(f"head {h}", fontsize=9)
    return _save(fig, out)


def composite_bands(
    bands: str | list[int | str] | None, names: list[str] | None, n_bands: int
) -> list[int]:
    """The channels a picture draws: one (grey) or three (red, green, blue).

    Args:
        bands: 0-based indices or names of the encoder's input bands ("3,2,1", "B4,B3,B2");
            None for `default_composite`: bands named red/green/blue, r/g/b, B4/B3/B2 or
            B04/B03/B02, else the first three (grey for 1- and 2-band images).
        names: The encoder's band names (`EncoderInfo.bands`), or None.
        n_bands: The encoder's input channels.

    Raises:
        ValueError: Not 1 or 3 bands, or a band that is not among the encoder's.
    """
    if bands is None:
        return default_composite(names, n_bands)
    chosen = resolve_bands(
        bands,
        names,
        n_bands,
        "the picture's --bands",
        "give the drawn bands by their index among the encoder's input bands",
    )
    if len(chosen) not in (1, 3):
        raise ValueError(f"--bands {bands}: a picture shows 1 or 3 bands, not {len(chosen)}")
    return chosen


def stretch_limits(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Display limits `[B, C, 1, 1]` (low, high) for `composite`.

    8-bit pictures (every valid value of the batch within 0..255, give or take a resize's
    overshoot, and some above 1: photos and 8-bit scans in native units) keep their own colours
    and brightness: 0 and 255 for every channel. Anything else (16-bit, float, multi-band
    rasters) is stretched: the 2nd and 98th percentile of each image's channels, NaN left out.
    """
    flat = images.float().flatten(2)
    valid = flat[flat.isfinite()]
    # the bicubic resize of `eval_transform` overshoots at sharp edges, by a few % of 255
    if valid.numel() and valid.min() >= -16 and 1.0 < valid.max() <= 255 + 16:
        low = torch.zeros(*flat.shape[:2], 1, 1, device=flat.device)
        return low, low + 255
    low = flat.nanquantile(0.02, dim=2)[..., None, None]
    high = flat.nanquantile(0.98, dim=2)[..., None, None]
    return low, high


def composite(
    images: torch.Tensor,
    bands: list[int] | None = None,
    limits: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Images `[B, C, H, W]` in native units to displayable `[B, H, W, 1 or 3]` in [0, 1].

    8-bit pictures are drawn as they are; other channels are stretched linearly between their
    2nd and 98th percentile in that image (invalid pixels left out); see `stretch_limits`.
    Invalid (NaN) pixels are black.

    Args:
        images: `[B, C, H, W]`, NaN where invalid.
        bands: One channel index (grey) or three (red, green, blue); None for
            `default_composite` without names: grey for 1 or 2 channels, else the first three.
        limits: `(low, high)` `[B, C, 1, 1]` from `stretch_limits` of other images, to draw
            several panels on one scale; None computes them from `images`.
    """
    chans = images.shape[1]
    if bands is None:
        bands = default_composite(None, chans)
    if len(bands) not in (1, 3) or any(not 0 <= b < chans for b in bands):
        raise ValueError(f"bands {bands}: give 1 or 3 channel indices below {chans}")
    low, high = limits if limits is not None else stretch_limits(images)
    picked = images[:, bands].float()
    low, high = low[:, bands], high[:, bands]
    scaled = ((picked - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    return scaled.nan_to_num(0.0).permute(0, 2, 3, 1)


def embedding_figure(
    features: str | Path, out: str | Path, method: str = "umap", seed: int = 0
) -> Path:
    """Save a 2-D map of a features file's embeddings, one dot per file, coloured by class.

    The vectors are L2-normalised first, so distances on the map follow cosine similarity.
    UMAP (`pip install 'sslvit[umap]'`) falls back to t-SNE, with a warning, when umap-learn is
    missing; t-SNE uses scikit-learn with perplexity min(30, (N - 1) / 3).

    Args:
        features: A features file written by `sslvit embed` (one vector per file).
        out: PNG path to write.
        method: "umap" or "tsne".
        seed: Seed of the map's layout.
    """
    from sslvit.evaluate.embed import load_embeddings

    embeddings = load_embeddings(features)
    x = torch.nn.functional.normalize(embeddings.vectors(features).float(), dim=1).numpy()
    if len(x) < 3:
        raise ValueError(f"{features}: a map needs at least 3 files, this one has {len(x)}")
    points, name = _project(x, method, seed)

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    if embeddings.labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=8, color="tab:blue")
    else:
        classes = sorted(set(embeddings.labels))
        colours = plt.get_cmap(
            "tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"
        )
        for c, cls in enumerate(classes):
            mine = [i for i, label in enumerate(embeddings.labels) if label == cls]
            colour = colours(c if len(classes) <= 20 else c / max(1, len(classes) - 1))
            ax.scatter(points[mine, 0], points[mine, 1], s=8, color=colour, label=cls)
        if len(classes) <= 20:
            ax.legend(fontsize=7, markerscale=2, loc="best", frameon=False)
    tokens = embeddings.meta.get("tokens", "?")
    ax.set_title(f"{name} of {len(x)} embeddings ({tokens} tokens)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, out)


def _project(x, method: str, seed: int):
    """`(points [N, 2], method's display name)` for normalised vectors `x` `[N, D]`."""
    if method not in ("umap", "tsne"):
        raise ValueError(f"unknown map method {method!r}; choose umap or tsne")
    if method == "umap" and len(x) < 10:
        # UMAP's spectral start fails on a handful of points; t-SNE copes
        log.warning("%d files are too few for UMAP: drawing t-SNE", len(x))
        method = "tsne"
    if method == "umap":
        try:
            import umap
        except ImportError:
            log.warning("umap-learn is not installed (pip install 'sslvit[umap]'): drawing t-SNE")
        else:
            reducer = umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1)
            return reducer.fit_transform(x), "UMAP"
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ValueError("t-SNE maps need scikit-learn: pip install 'sslvit[umap]'") from None
    tsne = TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(x), "t-SNE"


def curve_panels(records: list[dict]) -> dict[str, dict[str, tuple[list, list]]]:
    """The curves of a run's `metrics.jsonl` records, grouped in panels.

    Panels: the training loss per logged step (with each epoch's mean as dots), the learning
    rate, the other numbers logged with the loss (such as the collapse monitor `emb_std`;
    throughput is left out), the evaluations recorded with each epoch (fine-tuning's `top1`,
    segmentation's `miou`, ...), and every record of another kind (evaluations) by step.
    Panels with nothing to show are left out.

    Returns:
        `{panel title: {curve name: (steps, values)}}`, in drawing order.
    """

    def series(kind: str, skip=()) -> dict[str, tuple[list, list]]:
        found: dict[str, tuple[list, list]] = {}
        for r in records:
            if r.get("kind", "train") != kind or "step" not in r:
                continue
            for key, value in r.items():
                if (
                    key not in skip
                    and isinstance(value, int | float)
                    and not isinstance(value, bool)
                ):
                    found.setdefault(key, ([], []))
                    found[key][0].append(r["step"])
                    found[key][1].append(value)
        return found

    fixed = ("kind", "step", "epoch")
    train = series("train", fixed)
    per_epoch = series("epoch", (*fixed, "stage"))  # a segmentation run's stage is not a curve
    epoch_loss = per_epoch.pop("loss", None)
    panels = {
        "loss": {k: v for k, v in (("loss", train.get("loss")), ("epoch mean", epoch_loss)) if v},
        "learning rate": {"lr": train["lr"]} if "lr" in train else {},
        "monitors": {k: v for k, v in train.items() if k not in ("loss", "lr", "images_per_s")},
        "evaluation": per_epoch,
    }
    for kind in sorted({r.get("kind") for r in records} - {"train", "epoch", None}):
        panels[kind] = series(kind, fixed)
    return {title: lines for title, lines in panels.items() if lines}


def curves_figure(run_dir: str | Path, out: str | Path) -> Path:
    """Save a run's curves from its `metrics.jsonl`, one panel per kind of number (see
    `curve_panels`).

    Args:
        run_dir: A run folder of `sslvit pretrain`, `finetune` or `segment`.
        out: PNG path to write.
    """
    import json

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no metrics here; give a run folder of `sslvit pretrain`, `finetune` or "
            "`segment`"
        )
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}: line {n} is not JSON") from None
    panels = curve_panels(records)
    if not panels:
        raise ValueError(f"{path}: no step records to draw")

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for label, (steps, values) in lines.items():
            dots = label == "epoch mean" or len(steps) < 3
            ax.plot(steps, values, "o" if dots else "-", markersize=3, linewidth=1, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False)
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    """Write the figure to `out` (".png" added when it has no extension) and return the path
    written."""
    fig.tight_layout()
    out = Path(out)
    if out.is_dir():
        plt.close(fig)
        raise ValueError(f"{out}: is a folder; give a file name, such as {out / 'figure.png'}")
    if not out.suffix:
        out = out.with_suffix(".png")
    kinds = fig.canvas.get_supported_filetypes()
    if out.suffix[1:].lower() not in kinds:
        plt.close(fig)
        raise ValueError(f"{out}: cannot write a {out.suffix} picture; use {', '.join(kinds)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
