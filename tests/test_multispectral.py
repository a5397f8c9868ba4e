"""Multi-band GeoTIFFs: both readers, band names and choice, no-data in statistics, the MAE loss,
views and pictures, and one run end to end on a folder of tiles."""

import json
import logging

import numpy as np
import pytest
import torch
import yaml

from sslvit.cli import main
from sslvit.data import (
    FolderImages,
    ViewAugment,
    augmented_view,
    channel_stats,
    rasters,
    read_image,
)
from sslvit.data.bands import (
    BandImages,
    FileImage,
    check_encoder_bands,
    default_composite,
    encoder_images,
    fill_images,
    select_bands,
)
from sslvit.data.rasters import read_raster
from sslvit.evaluate.features import encoder_transform
from sslvit.methods.base import Method
from sslvit.methods.mae import MAE, MAEConfig, masked_patch_loss, patchify
from sslvit.models import EncoderInfo, create_vit
from sslvit.viz import composite

rasterio = pytest.importorskip("rasterio", reason="writes GeoTIFFs: pip install 'sslvit[geo]'")
RNG = np.random.default_rng(6)
S2 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


def write_geotiff(path, array, nodata=None, names=None, interleave="pixel"):
    """A GeoTIFF through rasterio (GDAL): 10 m pixels in UTM 33N, optional descriptions."""
    count, height, width = array.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count,
        dtype=array.dtype.name, nodata=nodata, crs="EPSG:32633",
        transform=rasterio.Affine(10, 0, 500000, 0, -10, 4600000), interleave=interleave,
    ) as dst:  # fmt: skip
        dst.write(array)
        for k, name in enumerate(names or [], start=1):
            dst.set_band_description(k, name)
    return path


def reflectance(bands, size=8, dtype=np.uint16, nodata=0):
    """Surface-reflectance-like values x 10000 with a no-data corner."""
    array = RNG.integers(200, 6000, size=(bands, size, size)).astype(dtype)
    array[:, :2, :3] = nodata
    return array


@pytest.mark.parametrize(
    "dtype,bands,nodata,interleave",
    [
        (np.uint16, 13, 0, "pixel"),
        (np.uint16, 5, 65535, "band"),
        (np.int16, 13, -9999, "band"),
        (np.float32, 5, None, "pixel"),
        (np.uint8, 3, 255, "pixel"),
    ],
)
def test_both_readers_give_the_same_raster(tmp_path, dtype, bands, nodata, interleave):
    array = reflectance(bands, dtype=dtype, nodata=0 if nodata is None else nodata)
    if dtype == np.float32:
        array = array / np.float32(10000)
        array[1, 4, 4] = np.nan
    names = S2[:bands]
    path = write_geotiff(tmp_path / "t.tif", array, nodata, names, interleave)

    by_gdal = read_raster(path, backend="rasterio")
    by_tifffile = read_raster(path, backend="tifffile")
    for raster in (by_gdal, by_tifffile):
        assert raster.array.dtype == dtype and raster.array.shape == array.shape
        np.testing.assert_array_equal(raster.array, array)  # band order kept, NaN = NaN
        assert raster.names == tuple(names)
        assert raster.nodata == nodata or (nodata is None and raster.nodata is None)

    image = read_image(path)
    invalid = ~np.isfinite(array.astype(np.float64))
    if nodata is not None:
        invalid |= array == nodata
    assert torch.equal(image.isnan(), torch.from_numpy(invalid))
    assert torch.equal(image[~image.isnan()], torch.from_numpy(array[~invalid].astype(np.float32)))


def test_names_and_no_data_without_rasterio(tmp_path, monkeypatch):
    array = reflectance(5)
    write_geotiff(tmp_path / "a.tif", array, nodata=0, names=S2[:5], interleave="band")
    with_gdal = select_bands(FolderImages(tmp_path), "B4,B2", "tiles").read(0)
    monkeypatch.setattr(rasters, "_rasterio", lambda: None)
    without = select_bands(FolderImages(tmp_path), "B4,B2", "tiles")
    assert without.band_names == ["B4", "B2"]
    assert torch.equal(without.read(0).nan_to_num(-1), with_gdal.nan_to_num(-1))
    assert without.read(0).isnan().sum() == 2 * 2 * 3


def test_one_file_knows_its_bands(tmp_path):
    array = reflectance(5)
    image = FileImage(write_geotiff(tmp_path / "q.tif", array, nodata=0, names=S2[:5]))
    assert len(image) == 1 and image.in_chans == 5 and image.band_names == S2[:5]
    assert select_bands(image, "B3", "q.tif").read(0).isnan().sum() == 2 * 3
    unnamed = FileImage(write_geotiff(tmp_path / "u.tif", array, nodata=0))
    assert unnamed.band_names is None and select_bands(unnamed, None, "u.tif") is unnamed


def test_all_no_data_tile_is_skipped_and_counted(tmp_path, caplog):
    for i in range(3):
        write_geotiff(tmp_path / f"{i}.tif", reflectance(5), nodata=0)
    write_geotiff(tmp_path / "empty.tif", np.zeros((5, 8, 8), np.uint16), nodata=0)
    with caplog.at_level(logging.WARNING):
        images = FolderImages(tmp_path)
    assert len(images) == 3
    assert images.skipped == [
        ("empty.tif", "no valid pixel, every value is the no-data value 0 or NaN")
    ]
    assert "skipped 1 of 4 files" in caplog.text


def test_bands_by_index_and_by_name(tmp_path):
    array = reflectance(13)
    write_geotiff(tmp_path / "a.tif", array, nodata=0, names=S2)
    images = FolderImages(tmp_path)

    by_index = select_bands(images, "3,2,1", "tiles")
    by_name = select_bands(images, ["B4", "b3", "B2"], "tiles")  # one case-insensitive match
    assert by_index.band_names == by_name.band_names == ["B4", "B3", "B2"]
    assert torch.equal(by_index.read(0).nan_to_num(-1), by_name.read(0).nan_to_num(-1))
    expected = torch.from_numpy(array[[3, 2, 1]].astype(np.float32))
    assert torch.equal(by_name.read(0)[:, 2:], expected[:, 2:])
    assert select_bands(images, None, "tiles").band_names == S2

    with pytest.raises(ValueError, match=r"tiles: no band is named 'B13'; its bands: B1, B2, B3"):
        select_bands(images, "B13", "tiles")
    with pytest.raises(ValueError, match=r"band index 13 is out of range; it has 13 bands"):
        select_bands(images, "13", "tiles")


def test_bands_file_names_unnamed_rasters(tmp_path):
    write_geotiff(tmp_path / "a.tif", reflectance(5), nodata=0)
    images = FolderImages(tmp_path)
    assert select_bands(images, None, "tiles") is images  # nothing named, nothing chosen
    with pytest.raises(ValueError, match="have no names; choose bands by index .* bands.txt"):
        select_bands(images, "red", "tiles")
    assert select_bands(images, "4,0", "tiles").band_names == ["4", "0"]

    (tmp_path / "bands.txt").write_text("# Landsat-like\nblue\ngreen\nred\nnir\nswir1\n")
    chosen = select_bands(FolderImages(tmp_path), "nir,red", "tiles")
    assert chosen.band_names == ["nir", "red"] and chosen.indices == [3, 2]
    (tmp_path / "bands.txt").write_text("blue\ngreen\n")
    with pytest.raises(ValueError, match=r"bands.txt: names 2 bands, the images have 5"):
        select_bands(FolderImages(tmp_path), None, "tiles")


def test_encoder_bands_are_checked_by_name(caplog):
    check_encoder_bands(["B4", "B3", "B2"], ["B4", "B3", "B2"], "tiles")
    check_encoder_bands(["3", "2", "1"], ["3", "2", "1"], "tiles")  # unnamed on both sides
    with pytest.raises(ValueError, match=r"reads bands \[B4, B3, B8\], .* \[B4, B3, B2\]"):
        check_encoder_bands(["B4", "B3", "B8"], ["B4", "B3", "B2"], "tiles")
    with pytest.raises(ValueError, match=r"reads bands \[B4, B3\], .* \[B4, B3, B2\]"):
        check_encoder_bands(["B4", "B3"], ["B4", "B3", "B2"], "tiles")
    with caplog.at_level(logging.WARNING):
        check_encoder_bands(["3", "2", "1"], ["B4", "B3", "B2"], "tiles")
    assert "cannot check bands 3, 2, 1 against the encoder's B4, B3, B2" in caplog.text


def test_statistics_leave_out_no_data_and_nan(tmp_path):
    tiles = []
    for i in range(4):
        tile = (RNG.normal(0.2, 0.05, (5, 8, 8)) + 0.1 * np.arange(5)[:, None, None]).astype(
            np.float32
        )
        tile[:, i : i + 2, :] = -1.0  # no-data rows
        tile[2, 7, i] = np.nan
        tiles.append(tile)
        write_geotiff(tmp_path / f"{i}.tif", tile, nodata=-1.0)
    mean, std = channel_stats(FolderImages(tmp_path))

    stack = np.stack(tiles).astype(np.float64)
    valid = np.isfinite(stack) & (stack != -1.0)
    for band in range(5):
        values = stack[:, band][valid[:, band]]
        assert mean[band] == pytest.approx(values.mean(), rel=1e-6)
        assert std[band] == pytest.approx(values.std(), rel=1e-6)
    assert mean[2] > mean[0] + 0.15  # the no-data value -1 would pull every band down


def _hand_loss(pred, target, mask, valid, norm_pix_loss):
    """MAE's loss written out patch by patch: mean over valid values, over hidden patches."""
    total, counted = 0.0, 0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            keep = valid[b, n].astype(bool)
            if not mask[b, n] or not keep.any():
                continue
            t = target[b, n, keep].astype(np.float64)
            if norm_pix_loss:
                var = t.var(ddof=1) if len(t) > 1 else 0.0
                t = (t - t.mean()) / np.sqrt(var + 1e-6)
            total += np.mean((pred[b, n, keep] - t) ** 2)
            counted += 1
    return total / max(counted, 1)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_mae_loss_counts_valid_pixels_only(norm_pix_loss):
    pred = torch.randn(3, 6, 12, dtype=torch.float64)
    target = torch.randn(3, 6, 12, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1, 0, 1]] * 3, dtype=torch.float64)
    valid = (torch.rand(3, 6, 12) > 0.3).double()
    valid[0, 0] = 0  # a hidden patch without any valid value: left out
    valid[1, 1, 1:] = 0  # one valid value: variance 0
    loss = masked_patch_loss(pred, target, mask, norm_pix_loss, valid)
    expected = _hand_loss(pred.numpy(), target.numpy(), mask.numpy(), valid.numpy(), norm_pix_loss)
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    # whatever the invalid positions hold, prediction or target, the loss is the same
    garbage = torch.where(valid > 0, target, torch.full_like(target, 1e30))
    noisy_pred = torch.where(valid > 0, pred, torch.full_like(pred, float("nan")))
    assert masked_patch_loss(noisy_pred, garbage, mask, norm_pix_loss, valid).item() == loss.item()

    # all valid: the paper's loss
    plain = target
    if norm_pix_loss:
        plain = (target - target.mean(-1, keepdim=True)) / (
            target.var(-1, keepdim=True) + 1e-6
        ) ** 0.5
    paper = (((pred - plain) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert masked_patch_loss(pred, target, mask, norm_pix_loss).item() == pytest.approx(
        paper.item()
    )


def test_mae_trains_on_partly_invalid_tiles_and_skips_empty_views():
    torch.manual_seed(0)
    mae = MAE(MAEConfig(decoder_embed_dim=32, decoder_depth=1), create_vit("vit_tiny", 16, 4, 5))
    images = torch.randn(4, 5, 16, 16)
    images[0, :, :6] = float("nan")  # partly no-data
    images[3] = float("nan")  # no valid pixel at all

    def loss_of(batch):
        torch.manual_seed(1)  # the same masks
        return mae(batch)[0]

    loss = loss_of(images)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in mae.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    # +inf marks invalid values as NaN does; the empty view adds nothing to the loss
    assert loss_of(images.nan_to_num(nan=float("inf"))).item() == pytest.approx(loss.item())
    torch.manual_seed(1)
    latent, mask, ids_restore = mae.encode_visible(images.nan_to_num(0.0), 0.75)
    pred = mae.decode(latent, ids_restore)
    valid = patchify(images.isfinite().float(), 4)
    three = masked_patch_loss(
        pred[:3], patchify(images.nan_to_num(0.0), 4)[:3], mask[:3], True, valid[:3]
    )
    assert loss.item() == pytest.approx(three.item(), rel=1e-5)


def test_thirteen_band_views_never_mix_bands(tmp_path):
    array = (
        np.full((13, 24, 24), 1000, np.uint16) + 100 * np.arange(13, dtype=np.uint16)[:, None, None]
    )
    array[0] = np.linspace(200, 5000, 24 * 24).reshape(24, 24)  # band 0 alone has structure
    image = read_image(write_geotiff(tmp_path / "s2.tif", array, nodata=0, names=S2))
    strong = ViewAugment(jitter_prob=1.0, grayscale_prob=1.0, blur_prob=1.0, solarize_prob=1.0)
    mean, std = [1500.0] * 13, [500.0] * 13
    ops = [type(op).__name__ for op in augmented_view(16, mean, std, strong).transforms]
    assert not {"ColorJitter", "RandomGrayscale", "RandomSolarize", "_InUnitRange"} & set(ops)
    for seed in range(5):
        torch.manual_seed(seed)
        view = augmented_view(16, mean, std, strong)(image)
        assert view.shape == (13, 16, 16) and torch.isfinite(view).all()
        assert view[0].std() > 0.01  # band 0 keeps its gradient ...
        assert torch.allclose(view[1:].std(dim=(1, 2)), torch.zeros(12), atol=1e-4)  # ... alone


def test_encoder_input_is_the_encoder_normalisation_with_invalid_as_zero(tmp_path):
    array = reflectance(13)
    write_geotiff(tmp_path / "a.tif", array, nodata=0, names=S2)
    mean, std = [float(v) for v in 100 + np.arange(4)], [float(v) for v in 50 + np.arange(4)]
    info = EncoderInfo("vit_tiny", (8, 8), 4, 4, mean, std, 192, bands=["B8", "B4", "B3", "B2"])
    images = encoder_images(FolderImages(tmp_path), info.bands, info.mean, source="tiles")
    assert images.band_names == ["B8", "B4", "B3", "B2"] and images.in_chans == 4
    x = encoder_transform(info, images.in_chans)(images.read(0))

    chosen = array[[7, 3, 2, 1]].astype(np.float64)
    expected = (chosen - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    expected[chosen == 0] = 0.0  # no-data enters as the band mean
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_only_mae_sees_invalid_pixels(tmp_path):
    write_geotiff(tmp_path / "a.tif", reflectance(5), nodata=0)
    images = select_bands(FolderImages(tmp_path), "0,1", "tiles")
    assert images.read(0).isnan().any()
    filled = fill_images(images, [7.0, 9.0]).read(0)
    assert filled[0, 0, 0] == 7.0 and filled[1, 0, 0] == 9.0 and not filled.isnan().any()
    assert isinstance(fill_images(images, [7.0, 9.0]), BandImages)
    assert MAE.keeps_invalid_pixels and not Method.keeps_invalid_pixels


def test_composite_stretch_and_default_bands():
    assert default_composite(S2, 13) == [3, 2, 1]
    assert default_composite(["Red", "nir", "Green", "Blue"], 4) == [0, 2, 3]
    assert default_composite(["a", "b", "c", "d"], 4) == [0, 1, 2] and default_composite(
        None, 2
    ) == [0]

    images = torch.rand(2, 5, 10, 10) * 1000
    images[0, :, 0, 0] = float("nan")
    picture = composite(images, [3, 2, 1])
    assert picture.shape == (2, 10, 10, 3) and (picture[0, 0, 0] == 0).all()
    band = images[1, 2].numpy()
    low, high = np.nanpercentile(band, [2, 98])
    expected = np.clip((band - low) / (high - low), 0, 1)
    np.testing.assert_allclose(picture[1, ..., 1].numpy(), expected, atol=1e-4)

    # 8-bit photos keep their colours: a dim grey-blue stays dim grey-blue, not stretched to
    # full black and white per channel
    photo = torch.tensor([60.0, 80.0, 120.0]).view(1, 3, 1, 1).repeat(1, 1, 4, 4)
    photo[0, :, 0, 0] = torch.tensor([0.0, 10.0, 200.0])
    drawn = composite(photo)
    np.testing.assert_allclose(drawn[0, 1, 1].numpy(), [60 / 255, 80 / 255, 120 / 255], atol=1e-6)
    np.testing.assert_allclose(drawn[0, 0, 0].numpy(), [0.0, 10 / 255, 200 / 255], atol=1e-6)
    photo[0, 2, 0, 0] = 262.0  # a bicubic resize's overshoot at an edge: still 8-bit, clipped
    np.testing.assert_allclose(composite(photo)[0, 1, 1].numpy(), drawn[0, 1, 1].numpy())
    assert composite(photo)[0, 0, 0, 2] == 1.0


def _tile_folder(root):
    """Two classes of 5-band uint16 tiles that differ in their spectrum; some partly no-data."""
    for label, spectrum in (
        ("crop", [800, 1200, 900, 4000, 2500]),
        ("water", [600, 500, 300, 150, 80]),
    ):
        (root / label).mkdir(parents=True)
        for i in range(8):
            array = (np.array(spectrum)[:, None, None] * RNG.uniform(0.8, 1.2, (5, 16, 16))).astype(
                np.uint16
            )
            if i % 3 == 0:
                array[:, :, :5] = 0
            write_geotiff(
                root / label / f"{i}.tif",
                array,
                nodata=0,
                names=["blue", "green", "red", "nir", "swir"],
            )
    return root


def test_pretrain_eval_and_pictures_on_tiles(tmp_path, capsys):
    data = _tile_folder(tmp_path / "tiles")
    out = tmp_path / "run"
    tiny = [
        "--img-size", "16", "--patch-size", "4", "--epochs", "1", "--batch-size", "8",
        "--workers", "0", "--device", "cpu", "--precision", "fp32",
        "--set", "method.decoder_embed_dim=32", "--set", "method.decoder_depth=1",
    ]  # fmt: skip
    assert (
        main(
            ["pretrain", "--data", str(data), "--out", str(out), "--bands", "nir,red,green", *tiny]
        )
        == 0
    )
    info = json.loads((out / "encoder.json").read_text())
    assert info["bands"] == ["nir", "red", "green"] and info["in_chans"] == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["bands"] == info["bands"]
    assert all(np.isfinite(json.loads(line)["loss"]) for line in (out / "metrics.jsonl").open())

    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "knn",
                "--encoder",
                str(out),
                "--data",
                str(data),
                "--split",
                "0.25",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_test"] == 4 and result["n_train"] == 12 and 0 <= result["top1"] <= 100

    attention = tmp_path / "attention.png"
    args = ["show", "attention", "--encoder", str(out), "--data", str(data), "--n", "2"]
    assert main([*args, "--out", str(attention), "--bands", "green,red,nir"]) == 0
    assert attention.stat().st_size > 1000

    picture = tmp_path / "recon.png"
    assert (
        main(
            [
                "show",
                "recon",
                "--encoder",
                str(out),
                "--data",
                str(data),
                "--out",
                str(picture),
                "--n",
                "2",
            ]
        )
        == 0
    )
    assert picture.stat().st_size > 1000

    assert (
        main(
            ["eval", "knn", "--encoder", str(out), "--data", str(data), "--bands", "nir,swir,green"]
        )
        == 2
    )
    assert (
        "reads bands [nir, swir, green], the encoder was trained on [nir, red, green]"
        in capsys.readouterr().err
    )


def test_band_choice_errors_read_right(tmp_path):
    write_geotiff(tmp_path / "a.tif", reflectance(13), nodata=0, names=S2)
    images = FolderImages(tmp_path)
    with pytest.raises(ValueError, match=r"tiles: bands B4,3 choose band B4 twice; give each"):
        select_bands(images, "B4,3", "tiles")  # B4 is band 3
    one = tmp_path / "one"
    one.mkdir()
    write_geotiff(one / "a.tif", reflectance(1), nodata=0)
    with pytest.raises(ValueError, match=r"index 2 is out of range; it has 1 band \(index 0\)$"):
        select_bands(FolderImages(one), "2", "one")
    with pytest.raises(
        ValueError, match=r"no band named 'red', its 1 band \(index 0\) has no name"
    ):
        select_bands(FolderImages(one), "red", "one")


def test_corrupt_tiff_is_named_without_tifffile_log_lines(tmp_path, caplog):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + (2062208232).to_bytes(4, "little") + bytes(64))
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(rasters.UnreadableImageError, match=r"bad\.tif: not a valid TIFF"):
            read_raster(bad)
        with pytest.raises(rasters.UnreadableImageError, match=r"bad\.tif: not a valid TIFF"):
            read_image(bad)
    assert not [r for r in caplog.records if r.name == "tifffile"]


def test_show_tells_how_to_name_unnamed_data_for_a_named_encoder(tmp_path, capsys):
    named, unnamed = tmp_path / "named", tmp_path / "unnamed"
    for root, names in ((named, ["blue", "green", "red"]), (unnamed, None)):
        root.mkdir()
        for k in range(8):
            write_geotiff(root / f"t{k}.tif", reflectance(3, size=16), nodata=0, names=names)
    run = tmp_path / "run"
    tiny = ["--img-size", "16", "--patch-size", "4", "--epochs", "1", "--batch-size", "4"]
    tiny += ["--workers", "0", "--device", "cpu", "--precision", "fp32"]
    tiny += ["--set", "method.decoder_embed_dim=32", "--set", "method.decoder_depth=1"]
    assert main(["pretrain", "--data", str(named), "--out", str(run), *tiny]) == 0
    capsys.readouterr()
    args = ["show", "attention", "--encoder", str(run), "--data", str(unnamed), "--n", "2"]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert (
        "the encoder reads bands [blue, green, red]: name the data's bands so in a bands.txt"
        in (err)
    )
    assert "choose bands by index" not in err
    (unnamed / "bands.txt").write_text("blue\ngreen\nred\n")
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
