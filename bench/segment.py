"""MAE on ISBI 2012 EM tiles, then segmentation of the membranes: pretrained encoder vs scratch.

Cuts every 512 px image of ../shared/data/isbi2012-em (30 labelled, 30 unlabeled) into four
256 px tiles, halved to `--size` px (membranes stay a pixel or two wide). MAE pretrains a
ViT-Tiny on all 240 tiles, masks unused. Segmentation then trains on the tiles of images 0-23
and tests on those of images 24-29 (whole images held out, never a tile of a training image),
once on the MAE encoder and once on the same ViT from random weights (`--encoder none`): stage
one with the encoder frozen, stage two with it unfrozen at a tenth of the decoder's rate. The
table gives mIoU and pixel accuracy at the end of each stage.

    python -m bench.segment [--size 128] [--pretrain-epochs 200] [--epochs 40] [--device auto]
"""

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sslvit.data.masks import SegmentationPairs, read_mask
from sslvit.evaluate.segment import SegmentConfig, segment
from sslvit.train.config import Config, apply_overrides
from sslvit.train.loop import Trainer

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012-em"
N_TRAIN_IMAGES = 24  # of 30 labelled; the other 6 are the test set


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
    parser.add_argument("--size", type=int, default=128, help="tile side after halving (128)")
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--pretrain-epochs", type=float, default=200.0)
    parser.add_argument("--batch-size", type=int, default=64, help="MAE batch (64)")
    parser.add_argument("--epochs", type=int, default=40, help="each segmentation stage (40)")
    parser.add_argument("--seg-batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="decoder learning rate")
    parser.add_argument("--out", default="/tmp/sslvit-bench/segment")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="MAE config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not ISBI.is_dir():
        raise SystemExit(f"needs the ISBI 2012 data in {ISBI}")

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    make_tiles(out / "data", args.size)
    start = time.perf_counter()
    mae_dir = pretrain(out, args)
    pretrain_minutes = (time.perf_counter() - start) / 60

    data = out / "data"
    train = SegmentationPairs(data / "train" / "images", data / "train" / "masks")
    test = SegmentationPairs(data / "test" / "images", data / "test" / "masks")
    rows = []
    for name, encoder in (("MAE", mae_dir), ("scratch", None)):
        config = SegmentConfig(
            epochs=args.epochs,
            unfreeze_epochs=args.epochs,
            batch_size=args.seg_batch_size,
            lr=args.lr,
            img_size=args.size,
            patch_size=args.patch_size,
            device=args.device,
            workers=args.workers,
        )
        start = time.perf_counter()
        result = segment(encoder, train, test, out / f"seg-{name}", config)
        stages = stage_scores(out / f"seg-{name}")  # stage 2's last is the result
        rows.append((name, stages[1], result, (time.perf_counter() - start) / 60))

    interior = np.concatenate([read_mask(p).ravel() == 255 for p in test.mask_paths]).mean()
    print()
    print(
        f"ISBI 2012 EM membranes, 256 px tiles at {args.size} px, ViT-Tiny patch "
        f"{args.patch_size}; MAE {args.pretrain_epochs:g} epochs on 240 tiles "
        f"({pretrain_minutes:.1f} min); {len(train)} training tiles, {len(test)} test tiles"
    )
    print(f"pixel accuracy of 'all cell interior': {100 * interior:.2f}")
    header = f"{'encoder':<10}{'frozen mIoU':>13}{'frozen acc':>12}{'mIoU':>8}{'acc':>8}{'min':>6}"
    print(header)
    for name, frozen, unfrozen, minutes in rows:
        print(
            f"{name:<10}{frozen['miou']:>13.2f}{frozen['pixel_acc']:>12.2f}"
            f"{unfrozen['miou']:>8.2f}{unfrozen['pixel_acc']:>8.2f}{minutes:>6.1f}"
        )


if __name__ == "__main__":
    main()
