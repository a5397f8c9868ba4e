"""MAE on PneumoniaMNIST without labels, then probes and fine-tuning with 10 % of the labels.

Pretrains a ViT-Tiny at the images' own 28 px with 4 px patches (a 7x7 grid; no resizing) with
MAE (the mae_tiny32 recipe's decoder and learning rate) on the 4,708 training images of
../shared/data/medmnist/pneumoniamnist.npz, labels unused. Then, with a stratified 10 % of the
training labels (the same subset for every row) and the 624-image test split for scoring:
kNN and the linear probe on frozen features, for the MAE encoder and for the same ViT with the
random weights pretraining started from; and fine-tuning (MAE's recipe, layer decay 0.75) of the
MAE encoder against the same ViT fine-tuned from scratch (`finetune --encoder none`). One
process, data loaded in it (`--workers 0`), so the times are one core's with OMP_NUM_THREADS=1.

    OMP_NUM_THREADS=1 python -m bench.medical [--epochs 6] [--finetune-epochs 30] [--labels 10%]
"""

import argparse
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

from sslvit.data import open_images
from sslvit.evaluate.classify import evaluate_encoder
from sslvit.evaluate.finetune import FinetuneConfig, finetune
from sslvit.train.config import apply_overrides, load_config
from sslvit.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"
RECIPE = ROOT / "sslvit" / "recipes" / "mae_tiny32.yaml"


def pretrain(args, out: Path) -> tuple[Trainer, float]:
    config = apply_overrides(
        load_config(RECIPE),
        [
            f"data.path={args.data}",
            "data.img_size=28",
            "data.workers=0",
            f"optim.epochs={args.epochs}",
            "optim.warmup_epochs=0.5",
            f"run.out={out}",
            f"run.device={args.device}",
            "run.log_every=20",
        ],
    )
    start = time.perf_counter()
    trainer = Trainer(config)
    trainer.train()
    return trainer, (time.perf_counter() - start) / 60


def probes(encoder, info, train, test, args, device) -> dict:
    return {
        kind: evaluate_encoder(
            kind, encoder.eval(), info, train, test, args.labels, args.seed, device
        )["top1"]
        for kind in ("knn", "linear")
    }


def fine_tune(encoder, train, test, out: Path, args) -> tuple[float, float]:
    config = FinetuneConfig(
        epochs=args.finetune_epochs,
        warmup_epochs=max(1, args.finetune_epochs // 10),
        labels=args.labels,
        seed=args.seed,
        img_size=28,
        patch_size=4,
        device=args.device,
        workers=0,
        eval_every=args.finetune_epochs,
    )
    start = time.perf_counter()
    result = finetune(encoder, train, test, out, config)
    return result["top1"], (time.perf_counter() - start) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="MedMNIST .npz (pneumoniamnist)")
    parser.add_argument("--epochs", type=float, default=6, help="pretraining epochs (6)")
    parser.add_argument("--finetune-epochs", type=int, default=30, help="fine-tuning epochs (30)")
    parser.add_argument("--labels", default="10%", help="labelled share of the train split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the label subset and probes")
    parser.add_argument("--out", default="/tmp/sslvit-bench/medical")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not Path(args.data).is_file():
        raise SystemExit(f"{args.data}: not found (see ../shared/data/medmnist/README.md)")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)

    trainer, pretrain_minutes = pretrain(args, out / "mae")
    info = trainer.encoder_info()
    train = open_images(args.data, labeled=True)
    test = open_images(f"{args.data}:test", labeled=True)
    random_encoder = trainer.build_method().encoder  # the weights pretraining started from
    rows = {
        "random weights / scratch": probes(random_encoder, info, train, test, args, trainer.device),
        "MAE": probes(trainer.method.encoder, info, train, test, args, trainer.device),
    }
    minutes = {}
    for name, encoder in (("random weights / scratch", None), ("MAE", out / "mae")):
        folder = out / ("finetune-scratch" if encoder is None else "finetune-mae")
        rows[name]["finetune"], minutes[name] = fine_tune(encoder, train, test, folder, args)

    majority = max(Counter(test.labels).values()) / len(test) * 100
    print()
    print(
        f"PneumoniaMNIST, ViT-Tiny 28 px patch 4; MAE {args.epochs:g} epochs on "
        f"{len(train):,} unlabelled images in {pretrain_minutes:.1f} min on {trainer.device}"
    )
    print(
        f"labels: {args.labels} of the train split (seed {args.seed}); test: {len(test)} images "
        f"(majority class {majority:.1f} %); fine-tuning {args.finetune_epochs} epochs"
    )
    print(
        f"{'encoder':<26}{'kNN top-1':>11}{'linear top-1':>14}{'fine-tune top-1':>17}{'ft min':>8}"
    )
    for name, row in rows.items():
        print(
            f"{name:<26}{row['knn']:>11.2f}{row['linear']:>14.2f}{row['finetune']:>17.2f}"
            f"{minutes[name]:>8.1f}"
        )


if __name__ == "__main__":
    main()
