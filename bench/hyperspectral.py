"""MAE on tiles of the Samson hyperspectral scene, plain and grouped patch embedding, then pixel
classification with a few labelled pixels per class against random weights.

The scene is ../shared/data/hyperspectral/samson (95 x 95 pixels, 156 bands, reflectance); a
pixel's class is its largest reference abundance (rock, tree, water). Pretraining sees the whole
scene without labels, as 441 tiles of 16 x 16 pixels every 4 pixels, and normalises each band
with statistics of the tiles: the transductive setting of self-supervised hyperspectral work,
where the unlabelled scene is the pretraining data. Two MAE runs of the same length (ViT-Tiny,
16 px, patch 4, mask 75 %, 96-wide 2-block decoder, base lr 1e-3, batch 64): the plain patch
embedding (16 tokens of 4 x 4 x 156 values) and 4 band groups (64 tokens of 4 x 4 x 39).

Pixel classification is the protocol of the field: N labelled pixels per class train a linear
probe (sslvit's, on frozen features) and every other pixel tests it, for several seeds of the
draw; a pixel's features are the encoder's pooled features of the 9 x 9 window around it
(reflection-padded), resized to 16 x 16. Each encoder is scored against the same ViT with the
random weights its pretraining started from, and against the raw spectrum of the pixel (156
normalised values, same probe). The table gives the mean and standard deviation over seeds of
OA and AA (percent) and Cohen's kappa. Every number is measured in the run.

    python -m bench.hyperspectral [--epochs 40] [--per-class 10] [--seeds 5]
"""

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from sslvit.data.cubes import read_cube
from sslvit.data.ground_truth import read_ground_truth
from sslvit.evaluate.pixels import WindowFeatures, classify_pixels, window_features
from sslvit.train.config import Config, apply_overrides
from sslvit.train.loop import Trainer

SAMSON = Path(__file__).resolve().parents[2] / "shared" / "data" / "hyperspectral" / "samson"
WINDOW = 9


def pretrain(cube_path: Path, band_groups: int, args) -> tuple[Trainer, float]:
    out = Path(args.out) / f"mae-groups{band_groups}"
    shutil.rmtree(out, ignore_errors=True)
    config = apply_overrides(
        Config(),
        [
            f"data.path={cube_path}",
            "data.img_size=16",
            "data.tile_stride=4",
            "data.workers=0",
            "model.name=vit_tiny",
            "model.patch_size=4",
            f"model.band_groups={band_groups}",
            "method.decoder_embed_dim=96",
            "method.decoder_depth=2",
            f"optim.epochs={args.epochs}",
            "optim.batch_size=64",
            "optim.base_lr=1e-3",
            "optim.warmup_epochs=5",
            f"run.out={out}",
            f"run.device={args.device}",
            "run.log_every=50",
        ],
    )
    start = time.perf_counter()
    trainer = Trainer(config)
    trainer.train()
    return trainer, (time.perf_counter() - start) / 60


def spectrum_features(cube, truth) -> WindowFeatures:
    """The raw-spectrum baseline: each labelled pixel's spectrum, each band standardised."""
    rows, cols = np.nonzero(truth.labels)
    pixels = cube.data.reshape(cube.n_bands, -1)
    spectra = (cube.data[:, rows, cols].T - pixels.mean(axis=1)) / pixels.std(axis=1)
    labels = truth.labels[rows, cols] - 1
    feats = torch.from_numpy(spectra.astype(np.float32))
    return WindowFeatures(feats, labels, rows, cols, truth, 1, "spectrum")


def scores(features: WindowFeatures, per_class: int, seeds: int) -> dict[str, tuple]:
    runs = [classify_pixels(features, per_class, seed)[0] for seed in range(seeds)]
    return {
        key: (float(np.mean([r[key] for r in runs])), float(np.std([r[key] for r in runs])))
        for key in ("oa", "aa", "kappa")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=40, help="pretraining epochs (40)")
    parser.add_argument("--per-class", type=int, default=10, help="training pixels per class")
    parser.add_argument("--seeds", type=int, default=5, help="draws of the training pixels")
    parser.add_argument("--groups", type=int, default=4, help="band groups of the grouped run")
    parser.add_argument("--out", default="/tmp/sslvit-bench/hyperspectral")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not SAMSON.is_dir():
        raise SystemExit(f"{SAMSON}: the Samson scene is not here (see its README)")

    cube = read_cube(SAMSON / "samson_1.mat")
    truth = read_ground_truth(SAMSON / "samson_end3.mat", cube.shape)
    rows = []
    for groups in (0, args.groups):
        trainer, minutes = pretrain(SAMSON / "samson_1.mat", groups, args)
        info = trainer.encoder_info()
        embedding = f"{groups} band groups" if groups else "plain"
        encoders = (("random weights", trainer.build_method().encoder, 0.0),)
        encoders += (("MAE", trainer.method.encoder, minutes),)
        for name, encoder, spent in encoders:
            start = time.perf_counter()
            features = window_features(encoder, info, cube, truth, WINDOW, device=trainer.device)
            logging.info(
                "%s, %s: features in %.1f min", name, embedding, (time.perf_counter() - start) / 60
            )
            rows.append((name, embedding, spent, scores(features, args.per_class, args.seeds)))
    spectra = spectrum_features(cube, truth)
    rows.append(("raw spectrum", "-", 0.0, scores(spectra, args.per_class, args.seeds)))

    print()
    print(
        f"Samson, {args.per_class} training pixels per class, {args.seeds} seeds; the other "
        f"{int((truth.labels > 0).sum()) - 3 * args.per_class} pixels test. ViT-Tiny 16 px "
        f"patch 4, {WINDOW} x {WINDOW} windows, MAE {args.epochs:g} epochs of 441 tiles"
    )
    print(f"{'encoder':<16}{'embedding':<16}{'pretrain min':>13}{'OA':>15}{'AA':>15}{'kappa':>17}")
    for name, embedding, spent, s in rows:
        oa, aa, kappa = s["oa"], s["aa"], s["kappa"]
        cells = f"{oa[0]:>9.2f} ± {oa[1]:<4.2f}{aa[0]:>9.2f} ± {aa[1]:<4.2f}"
        print(f"{name:<16}{embedding:<16}{spent:>13.1f}{cells}{kappa[0]:>9.4f} ± {kappa[1]:.4f}")


if __name__ == "__main__":
    main()
