"""MAE on 13-band GeoTIFF tiles cut from the real Samson scene, then kNN against random weights.

No labelled satellite set is at hand, so the tiles come from the airborne Samson hyperspectral
scene in ../shared/data/hyperspectral/samson (95 x 95 pixels, 156 bands, reflectance in [0, 1]):
13 bands evenly spaced over the 156 (indices 0, 13, ..., 155, named band000 ... band155), scaled
to reflectance x 10000 as uint16 (valid values clipped to 1..65534), no-data value 0. The file
gives no map coordinates, so each tile carries a synthetic geotransform (1 m pixels, the scene's
top-left corner at (0, 95)) and no CRS. The scene's top-left corner (row + column < 32) is
marked no-data, like the edge of a swath: tiles there are partly no-data, and the corner tile
has no valid pixel and is skipped by the folder scan.

Labels: the class of each pixel is the largest reference abundance in samson_end3.mat (rock,
tree, water); a tile's label is the majority class of its valid pixels.

Split by position, without overlap: tiles of 16 x 16 pixels every 4 pixels (plus one aligned to
the far edge) lie wholly in the top half (rows 0-46: training and pretraining) or wholly in the
bottom half (rows 48-94: test); row 47 belongs to neither, so no test pixel is in any training
tile. All three classes occur in both halves.

MAE pretrains ViT-Tiny (16 px, patch 4, 13 channels) on the training tiles only (labels
ignored), then the encoder, the same ViT with the random weights pretraining started from, and
the raw normalised pixels are scored by kNN (k=20, T=0.07) and the linear probe, training
tiles labelled, test tiles scored. Every number is measured in the run.

    python -m bench.multispectral [--epochs 150] [--out /tmp/sslvit-bench/multispectral]
"""

import argparse
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from sslvit.data import open_images
from sslvit.data.bands import encoder_images
from sslvit.evaluate.classify import evaluate_features, evaluate_pixels
from sslvit.evaluate.features import encoder_transform, extract_features
from sslvit.train.config import Config, apply_overrides
from sslvit.train.loop import Trainer

SAMSON = Path(__file__).resolve().parents[2] / "shared" / "data" / "hyperspectral" / "samson"
CLASSES = ("rock", "tree", "water")
SIDE, TILE, STRIDE, N_BANDS = 95, 16, 4, 13
NODATA = 0


def samson_scene() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The scene as uint16 `[13, 95, 95]` (no-data corner = 0), the class map `[95, 95]` and
    the band names."""
    if not SAMSON.is_dir():
        raise SystemExit(f"{SAMSON}: the Samson scene is not here (see its README)")
    spectra = loadmat(SAMSON / "samson_1.mat")["V"]  # [156, 9025], pixels column-major
    abundances = loadmat(SAMSON / "samson_end3.mat")["A"]  # [3, 9025]
    bands = np.linspace(0, spectra.shape[0] - 1, N_BANDS).round().astype(int)
    cube = spectra[bands].reshape(N_BANDS, SIDE, SIDE, order="F")
    scene = np.clip(np.round(cube * 10000), 1, 65534).astype(np.uint16)
    rows, cols = np.mgrid[:SIDE, :SIDE]
    scene[:, rows + cols < 32] = NODATA
    classes = abundances.argmax(axis=0).reshape(SIDE, SIDE, order="F")
    return scene, classes, [f"band{b:03d}" for b in bands]


def starts(first: int, last: int) -> list[int]:
    """Tile corners every STRIDE pixels so that tiles lie within rows/cols first..last."""
    out = list(range(first, last - TILE + 2, STRIDE))
    if out[-1] != last - TILE + 1:
        out.append(last - TILE + 1)
    return out


def write_tiles(root: Path) -> dict[str, Counter]:
    """Write train/ and test/ folders of labelled GeoTIFF tiles; returns class counts per split."""
    import rasterio
    from rasterio.transform import Affine

    scene, classes, names = samson_scene()
    valid = scene[0] != NODATA
    counts = {}
    for split, (top, bottom) in {"train": (0, 46), "test": (48, 94)}.items():
        counts[split] = Counter()
        for r in starts(top, bottom):
            for c in starts(0, SIDE - 1):
                window = (slice(r, r + TILE), slice(c, c + TILE))
                kept = classes[window][valid[window]]
                label = CLASSES[np.bincount(kept, minlength=3).argmax()] if kept.size else "rock"
                counts[split][label] += kept.size > 0
                path = root / split / label / f"r{r:02d}_c{c:02d}.tif"
                path.parent.mkdir(parents=True, exist_ok=True)
                profile = {
                    "driver": "GTiff", "width": TILE, "height": TILE, "count": N_BANDS,
                    "dtype": "uint16", "nodata": NODATA,
                    "transform": Affine(1.0, 0.0, float(c), 0.0, -1.0, float(SIDE - r)),
                }  # fmt: skip
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(scene[:, window[0], window[1]])
                    for k, name in enumerate(names, start=1):
                        dst.set_band_description(k, name)
    return counts


def probes(features_of, train, test) -> dict[str, float]:
    train_feats, train_labels = features_of(train)
    test_feats, test_labels = features_of(test)
    return {
        kind: evaluate_features(
            kind, train_feats, train_labels, test_feats, test_labels, len(CLASSES)
        )["top1"]
        for kind in ("knn", "linear")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=150, help="pretraining epochs")
    parser.add_argument("--out", default="/tmp/sslvit-bench/multispectral")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], help="config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    counts = write_tiles(out / "tiles")
    config = apply_overrides(
        Config(),
        [
            f"data.path={out / 'tiles' / 'train'}",
            "data.img_size=16",
            "model.patch_size=4",
            "data.workers=0",
            f"optim.epochs={args.epochs}",
            "optim.batch_size=64",
            "optim.warmup_epochs=10",
            f"run.out={out / 'run'}",
            f"run.device={args.device}",
            "run.log_every=100",
            *args.set,
        ],
    )
    start = time.perf_counter()
    trainer = Trainer(config)
    trainer.train()
    minutes = (time.perf_counter() - start) / 60
    info = trainer.encoder_info()

    # the labelled sets exactly as `sslvit eval` reads them: the encoder's bands, no-data filled
    train, test = (
        encoder_images(
            open_images(out / "tiles" / split, labeled=True), info.bands, info.mean, None, split
        )
        for split in ("train", "test")
    )
    transform = encoder_transform(info, train.in_chans)

    def encoder_features(encoder):
        return lambda images: extract_features(
            encoder, images, transform, info.pool, device=trainer.device
        )

    pixels = {
        kind: evaluate_pixels(kind, train, test, 16, info.mean, info.std)["top1"]
        for kind in ("knn", "linear")
    }
    random_encoder = trainer.build_method().encoder
    rows = [
        ("raw pixels", 0, pixels),
        ("random-weight ViT-Tiny", 0, probes(encoder_features(random_encoder), train, test)),
        (
            "MAE ViT-Tiny",
            trainer.total_steps * trainer.effective_batch,
            probes(encoder_features(trainer.method.encoder), train, test),
        ),
    ]

    print()
    print(
        f"Samson, 13 bands as uint16 GeoTIFF tiles of {TILE} px every {STRIDE} px; "
        f"MAE {minutes:.1f} min on {trainer.device} ({trainer.precision})"
    )
    for split, tally in counts.items():
        listed = ", ".join(f"{c} {tally[c]}" for c in CLASSES)
        print(f"{split}: {sum(tally.values())} tiles ({listed})")
    print(f"bands: {', '.join(info.bands)}")
    print(f"{'features':<24}{'images seen':>12}{'kNN top-1':>11}{'linear top-1':>14}")
    for name, seen, acc in rows:
        print(f"{name:<24}{seen:>12,}{acc['knn']:>11.2f}{acc['linear']:>14.2f}")


if __name__ == "__main__":
    main()
