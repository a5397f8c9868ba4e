"""MAE on unlabelled images, then segmentation: the pretrained encoder against the same ViT from
scratch, on ISBI 2012 EM membranes (default) or CamVid street scenes (`--data camvid`).

ISBI 2012: cuts every 512 px image of ../shared/data/isbi2012-em (30 labelled, 30 unlabeled)
into four 256 px tiles, halved to `--size` px (membranes stay a pixel or two wide). MAE pretrains a
ViT-Tiny on all 240 tiles, masks unused. Segmentation then trains on the tiles of images 0-23
and tests on those of images 24-29 (whole images held out, never a tile of a training image),
once on the MAE encoder and once on the same ViT from random weights (`--encoder none`): stage
one with the encoder frozen, stage two with it unfrozen at a tenth of the decoder's rate. The
table gives mIoU and pixel accuracy at the end of each stage.

CamVid (11 classes, void ignored): MAE pretrains on the 468 train and val images (masks unused)
resized to `--size` x 4/3 `--size` px, taking square random crops of `--size` px; segmentation
runs at that non-square size (the encoder's position embeddings resized to the grid) on
`--train-images` training pairs drawn by seed from the 367 (default: all) and is scored on the
233 test images at their full 360x480 pixels. Few training pairs is the setting in which a
pretrained encoder is expected to matter most.

    python -m bench.segment [--data isbi|camvid] [--size 128] [--pretrain-epochs 200]
        [--epochs 40] [--train-images N] [--device auto]
"""

import argparse
import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sslvit.data.masks import SegmentationPairs, read_mask
from sslvit.evaluate.segment import SegmentConfig, segment
from sslvit.train.config import Config, apply_overrides
from sslvit.train.loop import Trainer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ISBI = SHARED / "isbi2012-em"
N_TRAIN_IMAGES = 24  # of 30 labelled; the other 6 are the test set
CAMVID = SHARED / "camvid"
CAMVID_CLASSES = "sky building pole road pavement tree sign fence car pedestrian bicyclist".split()
CAMVID_VOID = 11


def _tiles(path: Path, size: int, resample) -> list[Image.Image]:
    """The four 256 px quarters of a 512 px file, each resized to `size`."""
    with Image.open(path) as full:
        return [
            full.crop((x, y, x + 256, y + 256)).resize((size, size), resample)
            for y in (0, 256)
            for x in (0, 256)
        ]


def make_tiles(out: Path, size: int) -> None:
    """`out/pretrain/` (all 240 image tiles) and `out/{train,test}/{images,masks}/`."""
    (out / "pretrain").mkdir(parents=True)
    for kind in ("images", "masks", "unlabeled"):
        resample = Image.NEAREST if kind == "masks" else Image.BICUBIC
        for path in sorted((ISBI / kind).glob("*.png")):
            split = "train" if int(path.stem) < N_TRAIN_IMAGES else "test"
            for k, tile in enumerate(_tiles(path, size, resample)):
                if kind != "masks":
                    tile.save(out / "pretrain" / f"{kind}-{path.stem}-{k}.png")
                if kind != "unlabeled":
                    (out / split / kind).mkdir(parents=True, exist_ok=True)
                    tile.save(out / split / kind / f"{path.stem}-{k}.png")


def _link_pairs(split: Path, out: Path, stems: list[str]) -> None:
    """Symbolic links to the chosen image/mask pairs of a CamVid split, at full size."""
    for kind, ext in (("images", ".jpg"), ("masks", ".png")):
        (out / kind).mkdir(parents=True)
        for stem in stems:
            (out / kind / f"{stem}{ext}").symlink_to(split / kind / f"{stem}{ext}")


def make_camvid(out: Path, size: int, n_train: int | None, seed: int) -> None:
    """`out/pretrain/` (train and val images, resized) and `out/{train,test}/{images,masks}/`."""
    (out / "pretrain").mkdir(parents=True)
    shape = (size * 4 // 3, size)  # PIL's (width, height); CamVid is 480x360
    for split in ("train", "val"):
        for path in sorted((CAMVID / split / "images").glob("*.jpg")):
            with Image.open(path) as image:
                image.convert("RGB").resize(shape, Image.BICUBIC).save(
                    out / "pretrain" / f"{path.stem}.png"
                )
    stems = sorted(p.stem for p in (CAMVID / "train" / "images").glob("*.jpg"))
    if n_train is not None:
        stems = sorted(random.Random(seed).sample(stems, n_train))
    _link_pairs(CAMVID / "train", out / "train", stems)
    test = sorted(p.stem for p in (CAMVID / "test" / "images").glob("*.jpg"))
    _link_pairs(CAMVID / "test", out / "test", test)


def pretrain(out: Path, args) -> Path:
    config = apply_overrides(
        Config(),
        [
            f"data.path={out / 'data' / 'pretrain'}",
            f"data.img_size={args.size}",
            f"model.patch_size={args.patch_size}",
            "method.name=mae",
            "method.norm_pix_loss=true",
            "method.decoder_embed_dim=128",
            "method.decoder_depth=2",
            f"optim.epochs={args.pretrain_epochs}",
            f"optim.batch_size={args.batch_size}",
            "optim.base_lr=1e-3",
            f"optim.warmup_epochs={args.pretrain_epochs / 20}",
            f"run.out={out / 'mae'}",
            f"run.device={args.device}",
            "run.log_every=50",
            *args.set,
        ],
    )
    return Trainer(config).train()


def stage_scores(run_dir: Path) -> dict:
    """The record of the last tested epoch of each stage (1, 2), from metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tested = [r for r in records if r["kind"] == "epoch" and "miou" in r]
    return {r["stage"]: r for r in tested}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("isbi", "camvid"), default="isbi")
    parser.add_argument(
        "--size", type=int, default=128, help="ISBI: tile side after halving; CamVid: height"
    )
    parser.add_argument(
        "--train-images", type=int, help="CamVid: training pairs drawn by --seed (default all)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--pretrain-epochs", type=float, default=200.0)
    parser.add_argument("--batch-size", type=int, default=64, help="MAE batch (64)")
    parser.add_argument("--epochs", type=int, default=40, help="each segmentation stage (40)")
    parser.add_argument(
        "--unfreeze-epochs", type=int, help="stage two's epochs (default --epochs; 0: none)"
    )
    parser.add_argument("--decoder", choices=("conv", "linear"), default="conv")
    parser.add_argument("--levels", type=int, default=4, help="blocks the decoder reads (4)")
    parser.add_argument(
        "--eval-every", type=int, help="test every N epochs (default: each stage's end only)"
    )
    parser.add_argument("--seg-batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="decoder learning rate")
    parser.add_argument("--out", default="/tmp/sslvit-bench/segment")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="MAE config overrides")
    parser.add_argument(
        "--mae", help="a finished MAE run folder to use instead of pretraining one (same --size)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    source = ISBI if args.data == "isbi" else CAMVID
    if not source.is_dir():
        raise SystemExit(f"needs the {args.data} data in {source}")

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    if args.data == "isbi":
        make_tiles(out / "data", args.size)
        seg_size, ignore, names = args.size, None, None
    else:
        make_camvid(out / "data", args.size, args.train_images, args.seed)
        seg_size, ignore, names = (args.size, args.size * 4 // 3), CAMVID_VOID, CAMVID_CLASSES
    start = time.perf_counter()
    mae_dir = Path(args.mae) if args.mae else pretrain(out, args)
    pretrain_minutes = (time.perf_counter() - start) / 60
    mae_text = (
        f"MAE from {mae_dir}"
        if args.mae
        else f"MAE {args.pretrain_epochs:g} epochs ({pretrain_minutes:.1f} min)"
    )

    data = out / "data"
    train = SegmentationPairs(data / "train" / "images", data / "train" / "masks")
    test = SegmentationPairs(data / "test" / "images", data / "test" / "masks")
    rows = []
    for name, encoder in (("MAE", mae_dir), ("scratch", None)):
        config = SegmentConfig(
            epochs=args.epochs,
            unfreeze_epochs=args.epochs if args.unfreeze_epochs is None else args.unfreeze_epochs,
            decoder=args.decoder,
            n_levels=args.levels,
            batch_size=args.seg_batch_size,
            lr=args.lr,
            img_size=seg_size,
            patch_size=args.patch_size,
            ignore_index=ignore,
            class_names=names,
            eval_every=args.eval_every or 2 * args.epochs,
            seed=args.seed,
            device=args.device,
            workers=args.workers,
        )
        start = time.perf_counter()
        segment(encoder, train, test, out / f"seg-{name}", config)
        stages = stage_scores(out / f"seg-{name}")  # each stage's last tested epoch
        rows.append((name, stages[1], stages.get(2), (time.perf_counter() - start) / 60))

    print()
    if args.data == "isbi":
        interior = np.concatenate([read_mask(p).ravel() == 255 for p in test.mask_paths]).mean()
        print(
            f"ISBI 2012 EM membranes, 256 px tiles at {args.size} px, ViT-Tiny patch "
            f"{args.patch_size}; {mae_text} on 240 tiles; {len(train)} training tiles, "
            f"{len(test)} test tiles"
        )
        print(f"pixel accuracy of 'all cell interior': {100 * interior:.2f}")
    else:
        print(
            f"CamVid, 11 classes, at {seg_size[0]}x{seg_size[1]} px, ViT-Tiny patch "
            f"{args.patch_size}; {mae_text} on 468 train+val images; {len(train)} training "
            f"pairs (seed {args.seed}), {len(test)} test images scored at full size"
        )
    print(f"decoder: {args.decoder} on {args.levels} block(s)")
    header = f"{'encoder':<10}{'frozen mIoU':>13}{'frozen acc':>12}{'mIoU':>8}{'acc':>8}{'min':>6}"
    print(header)
    for name, frozen, unfrozen, minutes in rows:
        tuned = (
            f"{unfrozen['miou']:>8.2f}{unfrozen['pixel_acc']:>8.2f}" if unfrozen else f"{'-':>16}"
        )
        print(
            f"{name:<10}{frozen['miou']:>13.2f}{frozen['pixel_acc']:>12.2f}{tuned}{minutes:>6.1f}"
        )


if __name__ == "__main__":
    main()
