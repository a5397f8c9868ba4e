"""MAE on CIFAR-10 for a fixed number of images, then kNN and linear top-1 on its test split.

Pretrains with the mae_tiny32 recipe (ViT-Tiny, 32 px, patch 4) on the CIFAR-10 train split
from ../shared/data (labels ignored), then evaluates the encoder and the same ViT with the
random weights pretraining started from: kNN (k=20, T=0.07) and linear probe, the train split as
the labelled set and the test split for scoring.

    python -m bench.quality [--images 115000] [--out /tmp/sslvit-bench/quality]
"""

import argparse
import logging
import shutil
import time
from pathlib import Path

from bench.cifar10 import cifar10_folders
from sslvit.data import Subset, eval_transform, label_subset, open_images
from sslvit.evaluate.classify import evaluate_features
from sslvit.evaluate.features import extract_features
from sslvit.train.config import apply_overrides, load_config
from sslvit.train.loop import Trainer

RECIPE = Path(__file__).resolve().parents[1] / "sslvit" / "recipes" / "mae_tiny32.yaml"


def probe(encoder, pool, train, test, transform, device) -> dict:
    train_feats, train_labels = extract_features(encoder, train, transform, pool, device=device)
    test_feats, test_labels = extract_features(encoder, test, transform, pool, device=device)
    n_classes = len(train.classes)
    return {
        kind: evaluate_features(
            kind, train_feats, train_labels, test_feats, test_labels, n_classes
        )["top1"]
        for kind in ("knn", "linear")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=115_000, help="images seen in pretraining")
    parser.add_argument("--out", default="/tmp/sslvit-bench/quality")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--bank", type=int, default=0, help="labelled images for the probes (0 = all 50,000)"
    )
    parser.add_argument("--set", action="append", default=[], help="config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    train_dir, test_dir = cifar10_folders()
    train = open_images(train_dir, labeled=True)
    test = open_images(test_dir, labeled=True)
    # a smaller stratified bank keeps feature extraction short on a CPU; the table says so
    bank = train if not args.bank else Subset(train, label_subset(train.labels, args.bank // 10, 0))
    shutil.rmtree(args.out, ignore_errors=True)
    config = apply_overrides(
        load_config(RECIPE),
        [
            f"data.path={train_dir}",
            f"optim.epochs={args.images / len(train)}",
            "optim.warmup_epochs=0.2",
            f"run.out={args.out}",
            f"run.device={args.device}",
            "run.log_every=50",
            *args.set,
        ],
    )
    start = time.perf_counter()
    trainer = Trainer(config)
    trainer.train()
    minutes = (time.perf_counter() - start) / 60
    info = trainer.encoder_info()
    transform = eval_transform(config.data.img_size, info.mean, info.std)

    random_encoder = trainer.build_method().encoder
    rows = [
        (
            "random-weight ViT-Tiny",
            0,
            probe(random_encoder, info.pool, bank, test, transform, trainer.device),
        ),
        (
            "MAE",
            trainer.total_steps * trainer.effective_batch,
            probe(trainer.method.encoder, info.pool, bank, test, transform, trainer.device),
        ),
    ]
    print()
    print(f"CIFAR-10, ViT-Tiny 32 px patch 4, pretraining {minutes:.1f} min on {trainer.device}")
    print(f"labelled bank: {len(bank):,} train images; test: {len(test):,}")
    print(f"{'encoder':<24}{'images seen':>12}{'kNN top-1':>11}{'linear top-1':>14}")
    for name, seen, acc in rows:
        print(f"{name:<24}{seen:>12,}{acc['knn']:>11.2f}{acc['linear']:>14.2f}")


if __name__ == "__main__":
    main()
