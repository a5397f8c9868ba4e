"""Classification protocols on frozen features: kNN and the linear probe.

An encoder and the raw-pixel baseline go through the same path: features of a stratified
subset of the labelled training set and of the whole test set, then `evaluate_features`.
"""

import torch
from timm.models.vision_transformer import VisionTransformer

from sslvit.data import Subset, label_subset
from sslvit.evaluate.features import encoder_transform, extract_features, pixel_features
from sslvit.evaluate.knn import DEFAULT_K, DEFAULT_TEMPERATURE, knn_accuracy
from sslvit.evaluate.linear import linear_probe
from sslvit.models.io import EncoderInfo

KINDS = ("knn", "linear")


def evaluate_features(
    kind: str,
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    n_classes: int,
    seed: int = 0,
    **options,
) -> dict[str, float]:
    """Accuracy of a kNN classifier or a linear probe trained on `train_feats`.

    Args:
        kind: "knn" (DINO's weighted 20-NN) or "linear" (MAE's linear probe).
        train_feats: Labelled features `[N, D]`.
        train_labels: Class indices `[N]`.
        test_feats: Test features `[Q, D]`.
        test_labels: Class indices `[Q]`.
        n_classes: Number of classes.
        seed: Seed of the linear probe (kNN is deterministic).
        **options: Passed on to `knn_accuracy` (k, temperature) or `linear_probe` (epochs,
            batch_size, base_lr, warmup_epochs).

    Returns:
        `top1` (and `top5` when `n_classes >= 5`) in percent, plus the protocol's settings
        (`k`, `temperature`) or training summary (`train_loss`, `epochs`, `lr`).
    """
    if kind == "knn":
        settings = {"k": DEFAULT_K, "temperature": DEFAULT_TEMPERATURE, **options}
        scores = knn_accuracy(
            train_feats, train_labels, test_feats, test_labels, n_classes, **settings
        )
        return {**scores, **settings}
    if kind == "linear":
        return linear_probe(
            train_feats, train_labels, test_feats, test_labels, n_classes, seed=seed, **options
        )
    raise ValueError(f"unknown evaluation {kind!r}; choose one of {', '.join(KINDS)}")


def _n_classes(train_images, test_images) -> int:
    """Classes of a labelled train/test pair; both must name the same classes."""
    for role, images in (("training", train_images), ("test", test_images)):
        if getattr(images, "labels", None) is None:
            raise ValueError(
                f"the {role} images have no labels; classification needs class sub-folders "
                "or a labels CSV"
            )
        if len(images) == 0:
            raise ValueError(f"the {role} image set is empty")
    train_classes, test_classes = train_images.classes, test_images.classes
    if train_classes is not None and test_classes is not None:
        if list(train_classes) != list(test_classes):
            raise ValueError(
                f"training and test sets name different classes: {list(train_classes)} "
                f"vs {list(test_classes)}"
            )
        n = len(train_classes)
    else:
        n = 1 + max(max(train_images.labels), max(test_images.labels))
    if n < 2:
        named = f" ({train_classes[0]})" if train_classes else ""
        raise ValueError(
            f"the images hold one class{named}: classification needs at least 2 (one "
            "sub-folder per class, or a labels CSV)"
        )
    return n


def _run(kind, train_images, test_images, labels_spec, seed, pool, featurize, options) -> dict:
    """Subset the training labels, featurize both sets, score, and describe the run."""
    if kind not in KINDS:
        raise ValueError(f"unknown evaluation {kind!r}; choose one of {', '.join(KINDS)}")
    n_classes = _n_classes(train_images, test_images)
    chosen = label_subset(train_images.labels, labels_spec, seed, train_images.classes)
    train_images = Subset(train_images, chosen)
    train_feats, train_labels = featurize(train_images)
    test_feats, test_labels = featurize(test_images)
    scores = evaluate_features(
        kind, train_feats, train_labels, test_feats, test_labels, n_classes, seed, **options
    )
    return {
        "kind": kind,
        **scores,
        "n_train": len(train_images),
        "n_test": len(test_images),
        "n_classes": n_classes,
        "pool": pool,
        "labels": labels_spec,
        "seed": seed,
    }


def evaluate_encoder(
    kind: str,
    encoder: VisionTransformer,
    info: EncoderInfo,
    train_images,
    test_images,
    labels_spec: str | float | int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    pool: str | None = None,
    batch_size: int = 256,
    **options,
) -> dict:
    """Classify `test_images` with a kNN or linear probe on the encoder's frozen features.

    Args:
        kind: "knn" or "linear".
        encoder: The ViT encoder.
        info: Its `EncoderInfo` (input size and normalisation used for both image sets).
        train_images: A labelled image set; the probe learns from a subset of it.
        test_images: A labelled image set with the same classes.
        labels_spec: Labels to use from `train_images`, stratified by class: "10%" or 0.1 for
            a fraction, "50" or 50 for a count per class, None for all.
        seed: Seed of the label subset and the linear probe.
        device: Where the encoder runs.
        pool: "cls" or "mean"; None for `info.pool`.
        batch_size: Images per forward pass of the encoder.
        **options: Passed to the protocol (see `evaluate_features`).

    Returns:
        `kind`, `top1` (and `top5` with at least 5 classes) in percent, `n_train`, `n_test`,
        `n_classes`, `pool`, `labels` (`labels_spec` as given), `seed`, plus what the protocol
        reports.
    """
    pool = pool or info.pool
    for role, images in (("training", train_images), ("test", test_images)):
        encoder_transform(info, images.in_chans, f"the {role}")  # fail before any work

    def featurize(images):
        transform = encoder_transform(info, images.in_chans)
        return extract_features(encoder, images, transform, pool, batch_size, device)

    return _run(kind, train_images, test_images, labels_spec, seed, pool, featurize, options)


def evaluate_pixels(
    kind: str,
    train_images,
    test_images,
    img_size: int | tuple[int, int],
    mean: list[float],
    std: list[float],
    labels_spec: str | float | int | None = None,
    seed: int = 0,
    **options,
) -> dict:
    """The raw-pixel baseline of `evaluate_encoder`: flattened normalised pixels as features.

    Features are `C * img_size**2` wide and all held in memory, so keep `img_size` small
    (the encoder's input size for 28-32 px data).

    Args:
        kind: "knn" or "linear".
        train_images: A labelled image set.
        test_images: A labelled image set with the same classes.
        img_size: Side the images are resized and centre-cropped to.
        mean: Per-channel mean, in the images' native units.
        std: Per-channel standard deviation.
        labels_spec: Labels to use from `train_images` (see `evaluate_encoder`).
        seed: Seed of the label subset and the linear probe.
        **options: Passed to the protocol (see `evaluate_features`).

    Returns:
        The keys of `evaluate_encoder`, with `pool` set to "pixels".
    """

    def featurize(images):
        return pixel_features(images, img_size, mean, std), torch.as_tensor(list(images.labels))

    return _run(kind, train_images, test_images, labels_spec, seed, "pixels", featurize, options)
