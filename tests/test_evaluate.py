"""kNN and linear-probe protocols, feature extraction and result reports."""

import io
import json
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslvit.data import ArrayImages, Subset, eval_transform, load_sample
from sslvit.evaluate import (
    evaluate_encoder,
    evaluate_features,
    evaluate_pixels,
    extract_features,
    format_table,
    knn_accuracy,
    knn_classify,
    linear_probe,
    pixel_features,
    save_result,
    topk_accuracy,
)
from sslvit.models.io import EncoderInfo
from sslvit.models.vit import create_vit, pooled_features

# kNN


def test_knn_scores_match_hand_computed_weights():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[2.0, 1.0]])
    # Cosine similarities to the bank: 2/sqrt(5), 1/sqrt(5), 3/sqrt(10), -2/sqrt(5); the three
    # nearest are bank[2] (class 1), bank[0] (class 0), bank[1] (class 1).
    t = 0.07
    expected = torch.tensor(
        [
            [
                math.exp(2 / math.sqrt(5) / t),
                math.exp(3 / math.sqrt(10) / t) + math.exp(1 / math.sqrt(5) / t),
            ]
        ]
    )
    scores = knn_classify(bank, labels, query, n_classes=2, k=3, temperature=t)
    assert torch.allclose(scores, expected, rtol=1e-5)


def test_knn_weights_let_one_close_neighbour_outvote_two_far_ones():
    bank = torch.tensor([[1.0, 0.05], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.0]])
    sharp = knn_classify(bank, labels, query, n_classes=2, k=3, temperature=0.07)
    flat = knn_classify(bank, labels, query, n_classes=2, k=3, temperature=10.0)
    assert sharp.argmax().item() == 1  # exp(0.999 / 0.07) beats 2 * exp(0.6 / 0.07)
    assert flat.argmax().item() == 0  # nearly equal weights: the majority wins


def test_knn_with_k_larger_than_the_bank_uses_the_whole_bank():
    gen = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(4, 8, generator=gen), torch.randn(5, 8, generator=gen)
    labels = torch.tensor([0, 1, 2, 1])
    assert torch.equal(
        knn_classify(bank, labels, queries, 3, k=20), knn_classify(bank, labels, queries, 3, k=4)
    )


def test_knn_chunking_gives_the_same_scores():
    gen = torch.Generator().manual_seed(1)
    bank, queries = torch.randn(300, 16, generator=gen), torch.randn(101, 16, generator=gen)
    labels = torch.randint(0, 7, (300,), generator=gen)
    whole = knn_classify(bank, labels, queries, 7, chunk_size=1000)
    chunked = knn_classify(bank, labels, queries, 7, chunk_size=7)
    assert torch.allclose(whole, chunked, rtol=1e-5)


def test_topk_accuracy_counts_the_rank_of_the_true_class():
    scores = torch.tensor([[6.0, 5, 4, 3, 2, 1]]).repeat(3, 1)  # class 0 first, class 5 last
    assert topk_accuracy(scores, torch.tensor([0, 2, 5])) == pytest.approx(
        {"top1": 100 / 3, "top5": 200 / 3}
    )
    assert topk_accuracy(scores[:, :4], torch.tensor([0, 2, 3])) == pytest.approx({"top1": 100 / 3})


def test_knn_accuracy_on_nearest_points():
    bank, labels = torch.eye(4), torch.arange(4)
    queries = torch.eye(4)[[0, 1, 2]] + 0.1
    assert knn_accuracy(bank, labels, queries, torch.tensor([0, 1, 3]), 4, k=1) == pytest.approx(
        {"top1": 200 / 3}
    )


def test_knn_rejects_mismatched_widths():
    with pytest.raises(ValueError, match=r"same width, got \(4, 8\) and \(2, 9\)"):
        knn_classify(torch.zeros(4, 8), torch.zeros(4), torch.zeros(2, 9), 2)


# linear probe


def _blobs(n_per_class, n_classes, dim, seed):
    gen = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(n_classes, dim, generator=torch.Generator().manual_seed(99))
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=gen), labels


def test_linear_probe_separates_separable_features_and_repeats():
    train, train_labels = _blobs(200, 10, 32, seed=0)
    test, test_labels = _blobs(50, 10, 32, seed=1)
    # Features far from zero mean and unit scale: the BatchNorm takes care of them.
    train, test = 50 + 30 * train, 50 + 30 * test
    first = linear_probe(train, train_labels, test, test_labels, 10, seed=3)
    assert first["top1"] >= 99.0 and first["top5"] == 100.0
    assert linear_probe(train, train_labels, test, test_labels, 10, seed=3) == first


def test_linear_probe_rejects_a_single_training_feature():
    with pytest.raises(ValueError, match="at least 2 training features"):
        linear_probe(torch.zeros(1, 4), torch.zeros(1), torch.zeros(3, 4), torch.zeros(3), 2)


# on real images: the built-in MNIST sample


@pytest.fixture(scope="module")
def mnist():
    try:
        train, test = load_sample("train"), load_sample("test")
    except ValueError as err:
        pytest.skip(f"built-in sample unavailable: {err}")
    # Keep the suite fast: 60 test digits, every class present.
    return train, Subset(test, list(range(0, len(test), len(test) // 60)))


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    encoder = create_vit("vit_tiny", 28, 7, 1)
    info = EncoderInfo("vit_tiny", (28, 28), 7, 1, [33.3], [78.6], encoder.embed_dim, pool="mean")
    return encoder, info


def test_extract_features_keeps_order_labels_and_training_mode(mnist, tiny_encoder):
    encoder, info = tiny_encoder
    images = Subset(mnist[1], [5, 0, 17, 3, 9])
    transform = eval_transform(28, info.mean, info.std)
    encoder.train()
    feats, labels = extract_features(encoder, images, transform, "cls", batch_size=2)
    assert encoder.training
    assert feats.shape == (5, 192) and feats.dtype == torch.float32
    assert labels.tolist() == images.labels
    batch = torch.stack([transform(images.read(i)) for i in range(5)])
    with torch.no_grad():
        expected = pooled_features(encoder.eval(), batch, "cls")
    assert torch.allclose(feats, expected, atol=1e-5)

    unlabelled = ArrayImages(np.zeros((3, 28, 28), np.uint8))
    assert extract_features(encoder, unlabelled, transform, "mean")[1] is None


def test_linear_probe_and_knn_on_mnist_pixels_beat_chance(mnist):
    train, test = mnist
    train = Subset(train, list(range(0, len(train), 4)))  # 1,000 digits
    mean, std = [33.3], [78.6]
    train_feats, test_feats = (
        pixel_features(train, 28, mean, std),
        pixel_features(test, 28, mean, std),
    )
    assert train_feats.shape == (len(train), 784)
    train_labels, test_labels = torch.tensor(train.labels), torch.tensor(test.labels)
    for kind in ("linear", "knn"):
        result = evaluate_features(kind, train_feats, train_labels, test_feats, test_labels, 10)
        assert result["top1"] > 70.0, (kind, result)  # chance is 10 %


@pytest.mark.parametrize(("spec", "n_train"), [("5", 50), ("2%", 80)])
def test_evaluate_encoder_uses_the_label_subset(mnist, tiny_encoder, spec, n_train):
    encoder, info = tiny_encoder
    result = evaluate_encoder("knn", encoder, info, mnist[0], mnist[1], labels_spec=spec, seed=1)
    keys = ["kind", "top1", "top5", "n_train", "n_test", "n_classes", "pool", "labels", "seed"]
    assert [key for key in result if key in keys] == keys
    assert (result["k"], result["temperature"]) == (20, 0.07)
    assert result["n_train"] == n_train and result["n_test"] == len(mnist[1])
    assert (result["n_classes"], result["pool"], result["labels"]) == (10, "mean", spec)
    # Random-weight ViT features of digits already beat chance (10 %) by a margin (32-38 %).
    assert result["top1"] > 20.0


def test_evaluate_encoder_linear_and_pixels_share_one_path(mnist, tiny_encoder):
    encoder, info = tiny_encoder
    linear = evaluate_encoder("linear", encoder, info, mnist[0], mnist[1], "10%", pool="cls")
    assert linear["n_train"] == 400 and linear["pool"] == "cls" and linear["top1"] > 35.0
    pixels = evaluate_pixels("knn", mnist[0], mnist[1], 28, info.mean, info.std, "10%")
    assert pixels["pool"] == "pixels" and pixels["n_train"] == 400 and pixels["top1"] > 70.0


def test_evaluate_encoder_rejects_bad_sets(mnist, tiny_encoder):
    encoder, info = tiny_encoder
    unlabelled = ArrayImages(np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="the test images have no labels"):
        evaluate_encoder("knn", encoder, info, mnist[0], unlabelled)
    rgb = ArrayImages(np.zeros((4, 28, 28, 3), np.uint8), labels=[0, 1, 0, 1])
    with pytest.raises(ValueError, match="training images have 3 channel.* but the encoder"):
        evaluate_encoder("knn", encoder, info, rgb, mnist[1])
    with pytest.raises(ValueError, match="unknown evaluation 'svm'"):
        evaluate_encoder("svm", encoder, info, mnist[0], mnist[1])
    one_class = ArrayImages(np.zeros((4, 28, 28), np.uint8), labels=[0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"one class.*: classification needs at least 2"):
        evaluate_encoder("knn", encoder, info, one_class, one_class)


# reports


def test_format_table_aligns_columns():
    rows = [
        {"kind": "knn", "top1": 97.123, "n_train": 4000},
        {"kind": "linear", "top1": 9.5, "n_train": 40, "labels": "1%"},
    ]
    lines = format_table(rows, ["kind", "labels", "top1", "n_train"]).splitlines()
    assert lines[0] == "kind    labels   top1  n_train"
    assert lines[2] == "knn     -       97.12     4000"
    assert lines[3] == "linear  1%       9.50       40"
    assert len({len(line) for line in lines}) == 1


def test_save_result_writes_json_atomically(tmp_path):
    result = {"kind": "knn", "top1": 91.5}
    path = save_result(tmp_path / "run", "knn-10pct", result)
    assert path == tmp_path / "run" / "eval" / "knn-10pct.json"
    assert json.loads(path.read_text()) == result
    assert [p.name for p in path.parent.iterdir()] == ["knn-10pct.json"]
    with pytest.raises(ValueError, match="result name '../x'"):
        save_result(tmp_path / "run", "../x", result)


# the linear probe's defaults on real CIFAR-10 features (slow)

CIFAR_ZIP = Path(__file__).resolve().parents[2] / "shared/data/cifar10/cifar10-jpg.zip"


def _cifar_images(archive, split, per_class):
    classes = sorted({n.split("/")[1] for n in archive.namelist() if n.startswith("train/")} - {""})
    arrays, labels = [], []
    for label, name in enumerate(classes):
        for j in range(per_class):
            member = archive.read(f"{split}/{name}/{j:04d}.jpg")
            arrays.append(np.asarray(Image.open(io.BytesIO(member)).convert("RGB")))
            labels.append(label)
    return ArrayImages(np.stack(arrays), labels=labels, classes=classes)


@pytest.mark.slow
def test_linear_probe_defaults_reach_a_plateau_on_cifar10_features():
    if not CIFAR_ZIP.is_file():
        pytest.skip(f"{CIFAR_ZIP} is absent; the CIFAR-10 check needs the shared data")
    with zipfile.ZipFile(CIFAR_ZIP) as archive:
        train, test = _cifar_images(archive, "train", 200), _cifar_images(archive, "test", 50)
    torch.manual_seed(0)
    encoder = create_vit("vit_tiny", 32, 8, 3)
    transform = eval_transform(32, [125.3, 123.0, 113.9], [63.0, 62.1, 66.7])
    train_feats, train_labels = extract_features(encoder, train, transform, "mean")
    test_feats, test_labels = extract_features(encoder, test, transform, "mean")

    start = time.perf_counter()
    default = linear_probe(train_feats, train_labels, test_feats, test_labels, 10)
    seconds = time.perf_counter() - start
    longer = linear_probe(
        train_feats, train_labels, test_feats, test_labels, 10, epochs=2 * default["epochs"]
    )
    assert default["top1"] > 25.0  # chance is 10 %
    assert abs(longer["top1"] - default["top1"]) < 4.0, (default, longer)
    assert seconds < 30.0


def test_saved_results_carry_no_float_noise(tmp_path):
    from sslvit.evaluate.report import save_result

    path = save_result(tmp_path, "knn", {"top1": 100 / 3, "lr": 0.9 / 64, "per": [1 / 7], "n": 3})
    assert json.loads(path.read_text()) == {
        "top1": 33.3333,
        "lr": 0.0140625,
        "per": [0.142857],
        "n": 3,
    }
