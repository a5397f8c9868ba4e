"""Medical imagery: DICOM (HU, windows, frames, series), NIfTI slices, MedMNIST `.npz` sets."""

import importlib.util
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sslvit.cli import main
from sslvit.data import open_images, read_array
from sslvit.data.dicom import read_dicom_series
from sslvit.data.medical import WINDOWS, apply_window, open_medical, parse_window
from sslvit.data.readers import UnreadableImageError
from sslvit.data.slices import SliceImages
from tests.conftest import shared_data

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")
from nibabel.testing import data_path as NIBABEL_DATA  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

TINY = [
    "--model", "vit_tiny", "--img-size", "16", "--patch-size", "4", "--epochs", "1",
    "--batch-size", "32", "--workers", "0", "--device", "cpu", "--precision", "fp32",
    "--set", "method.decoder_embed_dim=32", "--set", "method.decoder_depth=1",
    "--set", "optim.warmup_epochs=0.5",
]  # fmt: skip


def write_dicom(path, pixels, series="1.2.826.0.1.3680043.8.498.1", position=None, **tags):
    """A CT slice of unsigned 12-bit `pixels`, with `position` (ImagePositionPatient) if given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import set_pixel_data
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.SeriesInstanceUID = "CT", series
    if position is not None:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = tags.pop("orientation", [1, 0, 0, 0, 1, 0])
    for name, value in tags.items():
        setattr(ds, name, value)
    photometric = tags.get("PhotometricInterpretation", "MONOCHROME2")
    set_pixel_data(ds, np.asarray(pixels, dtype=np.uint16), photometric, 12)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- DICOM -----------------------------------------------------------------------------------


def test_ct_is_rescaled_to_hounsfield_units_from_its_tags():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    stored = ds.pixel_array
    hu = read_array(path)
    assert hu.shape == (1, 128, 128) and hu.dtype == np.float32
    # by hand: HU = stored * 1 - 1024, at a few pixels and over the whole image
    for y, x in [(0, 0), (64, 64), (100, 27)]:
        assert hu[0, y, x] == float(stored[y, x]) - 1024.0
    np.testing.assert_array_equal(hu[0], stored.astype(np.float32) - 1024.0)


def test_slope_and_monochrome1_inversion(tmp_path):
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) * 300
    write_dicom(tmp_path / "a.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000)
    np.testing.assert_array_equal(read_array(tmp_path / "a.dcm")[0], stored * 2.0 - 1000)
    write_dicom(tmp_path / "x.dcm", stored, PhotometricInterpretation="MONOCHROME1")
    # 12 bits stored: 0 (white in MONOCHROME1) becomes 4095, bright as elsewhere
    np.testing.assert_array_equal(read_array(tmp_path / "x.dcm")[0], 4095 - stored)


def test_windows_against_the_formula():
    assert parse_window("lung") == [(-600.0, 1500.0)] == [WINDOWS["lung"]]
    assert parse_window("Soft-Tissue, 40:80") == [(50.0, 400.0), (40.0, 80.0)]
    path = get_testdata_file("CT_small.dcm")
    hu = torch.from_numpy(read_array(path))
    images = open_images(path, window="lung,brain,-600:1500")
    assert images.in_chans == 3 and images.names == ["CT_small.dcm"]
    image = images.read(0)
    for channel, (centre, width) in enumerate([(-600, 1500), (40, 80), (-600, 1500)]):
        low = centre - width / 2  # by hand: the window's range onto [0, 1], clipped
        expected = ((hu[0] - low) / width).clamp(0, 1)
        torch.testing.assert_close(image[channel], expected)
    assert image[1].min() == 0 and image[1].max() == 1  # HU -896..1167 cut by brain 0..80
    assert apply_window(torch.tensor([-1350.0, 150.0, 100.0]), -600, 1500).tolist() == [
        0.0,
        1.0,
        pytest.approx(1450 / 1500),
    ]
    for bad in ("lungs", "40", "40:0", "a:b", "nan:100", "50:inf", "-inf:10", "", "lung,"):
        with pytest.raises(ValueError, match="expected a preset"):
            parse_window(bad)


def test_multi_frame_gives_one_image_per_frame():
    path = get_testdata_file("rtdose.dcm")
    frames = pydicom.dcmread(path).pixel_array
    images = open_images(path)
    assert len(images) == 15 == int(pydicom.dcmread(path).NumberOfFrames)
    assert images.names[0] == "rtdose.dcm#f000" and images.names[-1] == "rtdose.dcm#f014"
    np.testing.assert_array_equal(images.read(7)[0].numpy(), frames[7].astype(np.float32))
    with pytest.raises(UnreadableImageError, match="rtdose.dcm: 15 frames"):
        read_array(path)
    colour = open_images(get_testdata_file("examples_ybr_color.dcm"))
    assert len(colour) == 30 and colour.in_chans == 3 and colour.read(29).shape == (3, 240, 320)


def test_compressed_pixel_data_names_file_and_transfer_syntax():
    if any(importlib.util.find_spec(m) for m in ("pylibjpeg", "gdcm", "jpeg_ls")):
        pytest.skip("a JPEG-LS decoder is installed here")
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    with pytest.raises(UnreadableImageError) as caught:
        read_array(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot decode pixel data compressed as JPEG-LS Lossless")
    assert "1.2.840.10008.1.2.4.80" in message and "\n" not in message


def test_series_is_ordered_by_position_then_instance_number(tmp_path):
    rng = np.random.default_rng(0)
    slices = [rng.integers(0, 4000, (5, 6)) for _ in range(4)]
    z = [-7.5, 12.0, 0.0, 3.0]  # file k holds slice k at height z[k]; sorted: 0, 2, 3, 1
    for k in range(4):
        write_dicom(tmp_path / f"s{k}.dcm", slices[k], position=(0, 0, z[k]), InstanceNumber=9 - k)
    volume, ordered = read_dicom_series(sorted(tmp_path.glob("*.dcm")))
    assert [p.name for p in ordered] == ["s0.dcm", "s2.dcm", "s3.dcm", "s1.dcm"]
    assert volume.shape == (5, 6, 4)
    for position, k in enumerate([0, 2, 3, 1]):
        np.testing.assert_array_equal(volume[..., position], slices[k])

    # sagittal slices: normal = row (0, 1, 0) x column (0, 0, -1) = (-1, 0, 0), so larger x first
    sagittal = tmp_path / "sagittal"
    sagittal.mkdir()
    for k, x in enumerate([1.0, 5.0, 3.0]):
        orientation = [0, 1, 0, 0, 0, -1]
        write_dicom(sagittal / f"{k}.dcm", slices[k], position=(x, 0, 0), orientation=orientation)
    assert [p.name for p in read_dicom_series(sorted(sagittal.glob("*")))[1]] == [
        "1.dcm",
        "2.dcm",
        "0.dcm",
    ]

    numbered = tmp_path / "numbered"
    numbered.mkdir()
    for k in range(3):
        write_dicom(numbered / f"{k}.dcm", slices[k], InstanceNumber=3 - k)
    assert [p.name for p in read_dicom_series(sorted(numbered.glob("*")))[1]] == [
        "2.dcm",
        "1.dcm",
        "0.dcm",
    ]


def test_series_folder_cut_along_another_axis(tmp_path):
    rng = np.random.default_rng(1)
    slices = [rng.integers(0, 4000, (5, 6)) for _ in range(4)]
    for k, z in enumerate([3.0, 1.0, 2.0, 0.0]):
        write_dicom(tmp_path / f"im{k}", slices[k], position=(0, 0, z))  # no extension: "DICM"
    (tmp_path / "notes.txt").write_text("not an image")
    plain = open_images(tmp_path)
    assert plain.names == ["im0", "im1", "im2", "im3"]  # one image per file, by name
    np.testing.assert_array_equal(plain.read(2)[0].numpy(), slices[2])

    rows = SliceImages(tmp_path, slice_axis=0)
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert rows.names == [f"{uid}#x{r:03d}" for r in range(5)] and rows.n_empty == 0
    by_z = np.stack([slices[k] for k in (3, 1, 2, 0)], axis=-1)  # z = 0, 1, 2, 3
    np.testing.assert_array_equal(rows.read(4)[0].numpy(), by_z[4])  # [columns, slices]
    assert open_images(tmp_path, slice_axis=1).read(0).shape == (1, 5, 4)


def test_folder_with_unreadable_dicom_skips_it_or_stops_when_strict(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / "plan.dcm")
    images = open_images(tmp_path)
    assert images.names == ["ct.dcm"]
    assert images.skipped == [("plan.dcm", "no image in this RT Plan Storage object")]
    with pytest.raises(UnreadableImageError, match="plan.dcm: no image"):
        open_images(tmp_path, strict=True)


def test_undecodable_12_bit_jpeg_is_one_line_and_pydicom_stays_quiet(tmp_path, caplog, capfd):
    if any(importlib.util.find_spec(m) for m in ("pylibjpeg", "gdcm")):
        pytest.skip("a 12-bit JPEG decoder is installed here")
    shutil.copy(get_testdata_file("JPEG-lossy.dcm"), tmp_path / "jpeg12.dcm")  # JPEG Extended
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    pydicom_level = logging.getLogger("pydicom").level
    with caplog.at_level(logging.DEBUG):
        images = open_images(tmp_path)
    assert images.names == ["ct.dcm"] and images.skipped[0][0] == "jpeg12.dcm"
    assert "JPEG Extended" in images.skipped[0][1]
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("sslvit")]
    assert len(ours) == 1 and ours[0].count("jpeg12.dcm") == 1 and "\n" not in ours[0]
    assert "Traceback" not in capfd.readouterr().err
    assert logging.getLogger("pydicom").level == pydicom_level  # restored after each read


def test_series_keeps_its_slices_of_the_majority_size(tmp_path):
    rng = np.random.default_rng(2)
    slices = [rng.integers(1, 4000, (5, 6)) for _ in range(4)]
    for k, z in enumerate([0.0, 1.0, 2.0, 3.0]):
        write_dicom(tmp_path / f"s{k}.dcm", slices[k], position=(0, 0, z))
    write_dicom(tmp_path / "odd.dcm", rng.integers(1, 4000, (3, 3)), position=(0, 0, 1.5))
    images = SliceImages(tmp_path, slice_axis=0)
    assert images.skipped == [("odd.dcm", "3x3 pixels, the other slices of its series are 5x6")]
    assert len(images) == 5 and images.read(0).shape == (1, 6, 4)  # 5 rows of 6 x 4 slices
    np.testing.assert_array_equal(images.read(2)[0].numpy(), np.stack(slices, axis=-1)[2])
    with pytest.raises(UnreadableImageError, match="odd.dcm: 3x3 pixels"):
        SliceImages(tmp_path, slice_axis=0, strict=True)


def test_colour_dicom_stays_rgb_and_is_refused_by_windows(tmp_path):
    from pydicom.pixels import apply_color_lut

    palette = get_testdata_file("examples_palette.dcm")
    shutil.copy(palette, tmp_path / "palette.dcm")
    shutil.copy(get_testdata_file("SC_rgb_small_odd.dcm"), tmp_path / "rgb.dcm")
    colour = open_images(tmp_path)
    assert colour.in_chans == 3 and colour.native_chans == [3, 3]
    expected = apply_color_lut(pydicom.dcmread(palette).pixel_array, pydicom.dcmread(palette))
    np.testing.assert_array_equal(colour.read(0).numpy(), np.moveaxis(expected, -1, 0))
    rgb = pydicom.dcmread(tmp_path / "rgb.dcm").pixel_array
    np.testing.assert_array_equal(colour.read(1).numpy(), np.moveaxis(rgb, -1, 0))

    # in a mostly grey CT folder a colour file would be read as grey luma, not HU: refused
    for k in range(2):
        write_dicom(tmp_path / f"ct{k}.dcm", np.full((4, 4), 1000 + k) + np.eye(4, dtype=int))
    with pytest.raises(ValueError, match="windows apply to one-channel images; palette.dcm has 3"):
        open_images(tmp_path, window="lung")
    (tmp_path / "palette.dcm").unlink()
    (tmp_path / "rgb.dcm").unlink()
    assert open_images(tmp_path, window="lung,bone").read(1).shape == (2, 4, 4)
    # the same for PNGs: a colour one among grey ones is refused, not windowed as grey
    pngs = tmp_path / "png"
    pngs.mkdir()
    for name, mode in (("a.png", "L"), ("b.png", "L"), ("c.png", "RGB")):
        Image.new(mode, (4, 4)).save(pngs / name)
    with pytest.raises(ValueError, match="windows apply to one-channel images; c.png has 3"):
        open_images(pngs, window="lung")


def test_text_named_dcm_is_not_a_dicom_file(tmp_path):
    (tmp_path / "notes.dcm").write_text("hello, this is not DICOM at all\n" * 4)
    with pytest.raises(UnreadableImageError) as caught:
        open_images(tmp_path / "notes.dcm")
    assert str(caught.value).startswith(f"{tmp_path / 'notes.dcm'}: not a DICOM file")
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    assert open_images(tmp_path).skipped[0][1].startswith("not a DICOM file")


def test_empty_folder_lists_every_kind_read(tmp_path):
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match=r"\.nii, \.nii\.gz, .*and DICOM files of any name"):
        open_images(tmp_path)


# --- NIfTI -----------------------------------------------------------------------------------


def _nifti(path, data, slope=None):
    image = nibabel.Nifti1Image(data, np.eye(4))
    if slope is not None:
        image.header.set_slope_inter(*slope)
    nibabel.save(image, path)
    return path


def test_nifti_slices_skip_constant_ones_and_apply_scaling(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 100, (6, 5, 7)).astype(np.int16)
    data[:, :, [0, 1, 6]] = 0  # empty slices at both ends
    data[:, :, 4] = 42  # constant but not zero: empty too
    _nifti(tmp_path / "vol.nii.gz", data, slope=(2.0, 10.0))
    images = open_images(tmp_path / "vol.nii.gz")
    assert images.names == ["vol.nii.gz#z002", "vol.nii.gz#z003", "vol.nii.gz#z005"]
    assert images.n_empty == 4 and images.labels is None
    np.testing.assert_array_equal(images.read(1)[0].numpy(), data[:, :, 3] * 2.0 + 10.0)

    along_x = open_images(tmp_path / "vol.nii.gz", slice_axis=0)
    assert len(along_x) == 6 and along_x.n_empty == 0 and along_x.names[0] == "vol.nii.gz#x000"
    np.testing.assert_array_equal(along_x.read(5)[0].numpy(), data[5] * 2.0 + 10.0)
    with pytest.raises(ValueError, match="slice axis 3"):
        SliceImages(tmp_path / "vol.nii.gz", slice_axis=3)


def test_nibabel_test_files_and_a_labelled_folder_of_volumes(tmp_path):
    anatomical = nibabel.load(f"{NIBABEL_DATA}/anatomical.nii").get_fdata()
    n_varied = sum(np.ptp(anatomical[:, :, k]) > 0 for k in range(anatomical.shape[2]))
    images = open_images(f"{NIBABEL_DATA}/anatomical.nii")
    assert len(images) == n_varied and len(images) + images.n_empty == 25
    four_d = open_images(f"{NIBABEL_DATA}/example4d.nii.gz")  # (128, 96, 24, 2): 2 volumes
    assert len(four_d) + four_d.n_empty == 48 and four_d.read(0).shape == (1, 128, 96)
    # volume indices are padded like slice indices, to three digits at least
    assert four_d.names[0] == "example4d.nii.gz#t000z000" and four_d.names[-1].startswith(
        "example4d.nii.gz#t001z"
    )

    for cls in ("healthy", "tumour"):
        (tmp_path / cls).mkdir()
        shutil.copy(f"{NIBABEL_DATA}/anatomical.nii", tmp_path / cls / "a.nii")
    _nifti(tmp_path / "tumour" / "b.nii.gz", np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    folder = open_images(tmp_path)
    assert folder.classes == ["healthy", "tumour"]
    assert folder.labels.count(0) == len(images) and folder.labels.count(1) == len(images) + 5
    assert "tumour/b.nii.gz#z004" in folder.names


# --- MedMNIST --------------------------------------------------------------------------------


def _medmnist(path, shape=(8, 8), labels=None):
    rng = np.random.default_rng(0)
    sizes = {"train": 12, "val": 4, "test": 6}
    arrays = {}
    for split, n in sizes.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1).astype(np.uint8)
    arrays["test_labels"] = arrays["test_labels"] % 2  # the test split lacks class 2
    arrays.update(labels or {})
    np.savez(path, **arrays)
    return arrays


def test_medmnist_npz_splits_labels_grey_and_rgb(tmp_path):
    arrays = _medmnist(tmp_path / "grey.npz")
    train = open_images(tmp_path / "grey.npz")
    test = open_images(f"{tmp_path / 'grey.npz'}:test", labeled=True)
    assert (len(train), len(open_images(f"{tmp_path}/grey.npz:val")), len(test)) == (12, 4, 6)
    assert train.in_chans == 1 and train.names[:2] == ["train/00", "train/01"]
    assert train.classes == test.classes == ["0", "1", "2"]  # counted over every split
    assert test.labels == arrays["test_labels"].ravel().tolist()
    np.testing.assert_array_equal(test.read(5)[0].numpy(), arrays["test_images"][5])
    assert open_images(tmp_path / "grey.npz", labeled=False).labels is None

    rgb = _medmnist(tmp_path / "rgb.npz", shape=(8, 8, 3))
    images = open_images(f"{tmp_path}/rgb.npz:val")
    assert images.in_chans == 3
    np.testing.assert_array_equal(images.read(1).numpy(), rgb["val_images"][1].transpose(2, 0, 1))

    np.savez(tmp_path / "cube.npz", cube=np.zeros((4, 4, 4)))
    assert open_medical(tmp_path / "cube.npz") is None  # not MedMNIST: the cube reader's


def test_medmnist_errors_name_the_file(tmp_path):
    multi = {"train_labels": np.zeros((12, 14), dtype=np.uint8)}
    _medmnist(tmp_path / "chest.npz", labels=multi)
    with pytest.raises(ValueError, match=r"chest.npz: train_labels has shape \(12, 14\)"):
        open_images(tmp_path / "chest.npz", labeled=True)
    assert len(open_images(tmp_path / "chest.npz", labeled=False)) == 12  # pretraining is fine
    _medmnist(tmp_path / "organ3d.npz", shape=(8, 8, 8))
    with pytest.raises(ValueError, match="organ3d.npz: train_images of shape .* are 3-D"):
        open_images(tmp_path / "organ3d.npz")
    np.savez(tmp_path / "only.npz", train_images=np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="only.npz: no test split; it holds train"):
        open_images(f"{tmp_path}/only.npz:test")


def test_medmnist_unknown_split_and_label_count_name_file_and_key(tmp_path):
    _medmnist(tmp_path / "m.npz")
    with pytest.raises(
        ValueError, match=r"m.npz: unknown split 'bogus'; .* holds train, val, test"
    ):
        open_images(f"{tmp_path}/m.npz:bogus")
    _medmnist(tmp_path / "short.npz", labels={"val_labels": np.zeros((3, 1), dtype=np.uint8)})
    with pytest.raises(ValueError, match="short.npz: val_labels holds 3 labels for the 4 images"):
        open_images(f"{tmp_path}/short.npz:val", labeled=True)


def test_cli_refuses_bad_windows_while_parsing(capsys):
    for bad in ("--window=nan:100", "--window=50:inf", "--window=", "--window=lung,"):
        with pytest.raises(SystemExit) as stopped:
            main(["pretrain", bad, "--out", "/nonexistent/never-written"])
        assert stopped.value.code == 2
        assert "argument --window: window" in capsys.readouterr().err


def test_pneumoniamnist_real_file():
    path = shared_data("medmnist") / "pneumoniamnist.npz"
    train, test = open_images(path), open_images(f"{path}:test")
    assert (len(train), len(test), train.in_chans) == (4708, 624, 1)
    assert train.classes == ["0", "1"] and set(test.labels) == {0, 1}
    raw = np.load(path)
    assert sum(train.labels) == int(raw["train_labels"].sum())
    np.testing.assert_array_equal(test.read(100)[0].numpy(), raw["test_images"][100])


# --- command line ----------------------------------------------------------------------------


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_pretrain_and_knn_on_medmnist_npz(tmp_path, capsys):
    data = shared_data("medmnist") / "breastmnist.npz"
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(data), "--out", str(out), *TINY]) == 0
    args = ["eval", "knn", "--encoder", str(out), "--data", str(data), "--device", "cpu"]
    assert main([*args, "--test-data", f"{data}:test", "--labels", "30"]) == 0
    result = last_json(capsys)
    assert (result["n_train"], result["n_test"], result["n_classes"]) == (60, 156, 2)
    assert 0.0 <= result["top1"] <= 100.0 and result["test_data"] == f"{data}:test"
    saved = json.loads((out / "eval" / "knn-30-seed0.json").read_text())
    assert saved["top1"] == result["top1"]


def test_cli_window_is_stored_and_reused_downstream(tmp_path, capsys, caplog):
    rng = np.random.default_rng(0)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.int64)
    for cls, shift in (("a", 0), ("b", 600)):
        (tmp_path / "ct" / cls).mkdir(parents=True)
        for k in range(8):
            pixels = np.roll(base, rng.integers(0, 128), axis=1)[::4, ::4] + shift
            write_dicom(tmp_path / "ct" / cls / f"{k}.dcm", np.clip(pixels, 0, 4095))
    out = tmp_path / "run"
    pretrain = ["pretrain", "--data", str(tmp_path / "ct"), "--out", str(out), *TINY]
    assert main([*pretrain, "--window", "lung,bone", "--set", "optim.batch_size=8"]) == 0
    assert "window: lung,bone" in (out / "config.yaml").read_text()
    assert json.loads((out / "encoder.json").read_text())["in_chans"] == 2
    assert (out / "figures" / "recon.png").stat().st_size > 1000  # drawn through the windows
    # eval reads the data through the run's two windows: 2 channels, as the encoder takes
    args = ["eval", "knn", "--encoder", str(out), "--data", str(tmp_path / "ct"), "--split", "0.5"]
    assert main([*args, "--device", "cpu"]) == 0
    assert last_json(capsys)["n_test"] == 8
    feats = tmp_path / "feats.npy"
    embed = ["embed", "--encoder", str(out), "--data", str(tmp_path / "ct"), "--out", str(feats)]
    assert main([*embed, "--device", "cpu", "--workers", "0"]) == 0
    assert np.load(feats).shape == (16, 192)
    # the run's windows are recorded with the result
    assert json.loads((out / "eval" / "knn.json").read_text())["window"] == "lung,bone"
    # other windows of the same channel count: a warning naming both, and the result says which
    with caplog.at_level(logging.WARNING, logger="sslvit"):
        assert main([*args, "--device", "cpu", "--window", "brain,bone"]) == 0
    assert last_json(capsys)["window"] == "brain,bone"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("--window brain,bone" in m and "--window lung,bone" in m for m in warned)
    # another channel count is refused before any data is read, raw values (none) included
    for window, n_chans in (("none", 1), ("lung", 1), ("lung,bone,brain", 3)):
        assert main([*args, "--device", "cpu", "--window", window]) == 2
        err = capsys.readouterr().err.strip()
        assert f"--window {window} gives {n_chans} channel(s), but the encoder" in err
        assert "takes 2 (it was trained with --window lung,bone)" in err
