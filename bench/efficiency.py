"""Label efficiency on CIFAR-10: an MAE encoder against the same ViT from scratch, 1-100 % labels.

Pretrains MAE with the settings of `bench.methods` (mae_tiny32 recipe; ViT-Tiny, 32 px, patch 4,
batch 128, base lr 1e-3, short warm-up) on the CIFAR-10 train split from ../shared/data with
labels ignored, or takes a finished run with --encoder. Then runs the protocol of
`sslvit eval efficiency` with the train split as the labelled pool and the test split for
scoring: linear probe and fine-tuning of the MAE encoder and of its scratch baseline (random
weights for the probe, training from random weights for fine-tuning), each budget and seed on
one stratified subset shared by all four, 3 seeds below 100 %. Finished results are kept in
OUT/eval/efficiency.json; running the same command again runs only the missing ones.

    python -m bench.efficiency [--encoder RUN] [--images 50000] [--epochs 10]
    python -m bench.efficiency --images 2000 --bank 1000 --test-images 500 --epochs 2  # a try
"""

import argparse
import logging
import time
from pathlib import Path

from bench.cifar10 import cifar10_folders
from bench.methods import RECIPES, SMALL
from sslvit.data import Subset, label_subset, open_images
from sslvit.evaluate.efficiency import EfficiencyConfig, label_efficiency
from sslvit.evaluate.efficiency_report import print_table
from sslvit.evaluate.finetune import FinetuneConfig
from sslvit.train.config import apply_overrides, load_config
from sslvit.train.loop import Trainer


def pretrain(args, train_dir: Path, n_images: int) -> Path:
    """MAE on the train split for `args.images` images seen; resumes a run left in OUT/mae."""
    out = Path(args.out) / "mae"
    config = apply_overrides(
        load_config(RECIPES / "mae_tiny32.yaml"),
        [
            *SMALL,
            f"data.path={train_dir}",
            f"optim.epochs={args.images / n_images}",
            f"run.out={out}",
            f"run.device={args.device}",
            *args.set,
        ],
    )
    Trainer(config, resume=(out / "checkpoints" / "last.pt").is_file()).train()
    return out


def stratified(images, n: int):
    """`n` images, n / 10 of each class (seed 0), or all of them for 0."""
    return images if not n else Subset(images, label_subset(images.labels, n // 10, 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", help="a finished run folder or .safetensors: no pretraining")
    parser.add_argument("--images", type=int, default=50_000, help="images seen in pretraining")
    parser.add_argument("--out", default="/tmp/sslvit-bench/efficiency")
    parser.add_argument("--fractions", default="1%,10%,100%", help="label budgets")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per budget below 100%%")
    parser.add_argument("--protocols", default="linear,finetune")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs per run")
    parser.add_argument(
        "--min-steps", type=int, default=0, help="fine-tuning steps at least, for small budgets"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning lr per 256 images")
    parser.add_argument("--min-crop", type=float, default=0.08, help="fine-tuning crop scale")
    parser.add_argument("--bank", type=int, default=0, help="labelled pool (0 = all 50,000)")
    parser.add_argument("--test-images", type=int, default=0, help="test images (0 = 10,000)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument("--set", action="append", default=[], help="pretraining overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    finetune = FinetuneConfig(
        epochs=args.epochs,
        min_steps=args.min_steps,
        base_lr=args.lr,
        crop_scale=(args.min_crop, 1.0),
        device=args.device,
        workers=args.workers,
        eval_every=0,  # test once, after the last epoch
    )
    config = EfficiencyConfig(
        budgets=tuple(args.fractions.split(",")),
        n_seeds=args.seeds,
        protocols=tuple(args.protocols.split(",")),
        finetune=finetune,
        device=args.device,
    )
    train_dir, test_dir = cifar10_folders()
    train = open_images(train_dir, labeled=True)
    test = open_images(test_dir, labeled=True)
    start = time.perf_counter()
    encoder = args.encoder or pretrain(args, train_dir, len(train))
    pretrain_minutes = (time.perf_counter() - start) / 60
    pool, test = stratified(train, args.bank), stratified(test, args.test_images)
    data = {
        "data": str(train_dir),
        "bank": args.bank,
        "test_data": str(test_dir),
        "test_images": args.test_images,
    }
    outcome = label_efficiency(encoder, pool, test, args.out, config, data)
    minutes = (time.perf_counter() - start) / 60 - pretrain_minutes

    print()
    print(f"CIFAR-10 label efficiency, encoder {encoder}")
    if not args.encoder:
        print(f"  MAE pretraining: {args.images:,} images seen ({pretrain_minutes:.1f} min)")
    print(
        f"  labelled pool {len(pool):,}, test {len(test):,}; fine-tuning {args.epochs} epochs, "
        f"lr {args.lr:g} per 256, min crop {args.min_crop:g}; {minutes:.1f} min"
    )
    print_table(outcome["summary"])
    for name, path in outcome["paths"].items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
