"""Hyperspectral cubes: readers, tiles, pixel classification and the grouped patch embedding."""

import json
import logging
import os

import h5py
import numpy as np
import pytest
import scipy.io
import timm
import torch
import yaml
from torch.profiler import ProfilerActivity, profile

from sslvit.cli import main
from sslvit.data import UnreadableImageError, open_images
from sslvit.data.cubes import (
    CubeTiles,
    PixelWindows,
    is_cube_spec,
    read_cube,
    tile_starts,
)
from sslvit.data.ground_truth import read_ground_truth
from sslvit.data.splits import parse_label_spec
from sslvit.evaluate.pixels import agreement_scores, pixel_split
from sslvit.export import export_encoder
from sslvit.methods.mae import MAE, MAEConfig
from sslvit.models.band_groups import band_ranges, grouped_embed_layer
from sslvit.models.io import EncoderInfo, load_encoder, save_encoder
from sslvit.models.vit import create_vit
from tests.conftest import shared_data

RNG = np.random.default_rng(0)


def _hwb(h=7, w=5, b=6, dtype=np.float32):
    return (RNG.random((h, w, b)) * 1000).astype(dtype)


# Readers.


def test_mat_v5_reads_hwb_and_chooses_the_variable(tmp_path):
    cube, small = _hwb(), _hwb(2, 2, 2)
    scipy.io.savemat(tmp_path / "s.mat", {"cube": cube, "small": small, "note": "x"})
    read = read_cube(tmp_path / "s.mat")
    assert read.data.shape == (6, 7, 5) and read.source.endswith("s.mat:cube")
    assert np.array_equal(read.data, np.moveaxis(cube, -1, 0))
    assert np.array_equal(read_cube(f"{tmp_path / 's.mat'}:small").data[:, 1, 0], small[1, 0])
    with pytest.raises(UnreadableImageError, match=r"s\.mat: no variable 'V'.*cube \(7, 5, 6\)"):
        read_cube(f"{tmp_path / 's.mat'}:V")


def _write_v73(path, variables):
    """A MATLAB v7.3 file: a 512-byte text header, then HDF5 with every array transposed."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        for name, value in variables.items():
            handle.create_dataset(name, data=np.asarray(value).T)
            handle[name].attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as handle:
        handle.write(b"MATLAB 7.3 MAT-file, written by the sslvit tests".ljust(116))


def test_mat_v73_is_transposed_back(tmp_path):
    cube = _hwb(4, 9, 3).astype(np.float64)
    _write_v73(tmp_path / "c.mat", {"scene": cube, "nRow": [[4.0]]})
    assert np.array_equal(read_cube(tmp_path / "c.mat").data, np.moveaxis(cube, -1, 0))


def test_pixels_by_bands_with_nrow_ncol_is_column_major(tmp_path):
    cube = _hwb(4, 6, 3)  # [H, W, B]
    # MATLAB's reshape(cube, H*W, B)' : pixel p at row p % H, column p // H
    v = cube.reshape(4 * 6, 3, order="F").T
    scipy.io.savemat(tmp_path / "v5.mat", {"V": v, "nRow": 4, "nCol": 6})
    _write_v73(tmp_path / "v73.mat", {"V": v.T, "nRow": [[4.0]], "nCol": [[6.0]]})
    for name in ("v5.mat", "v73.mat"):
        assert np.array_equal(read_cube(tmp_path / name).data, np.moveaxis(cube, -1, 0)), name


def test_npy_and_npz_cubes(tmp_path):
    cube = _hwb()
    np.save(tmp_path / "c.npy", cube)
    np.savez(tmp_path / "c.npz", cube=cube)
    np.savez(tmp_path / "med.npz", train_images=np.zeros((2, 4, 4)), train_labels=np.zeros(2))
    for name in ("c.npy", "c.npz"):
        assert is_cube_spec(tmp_path / name)
        assert np.array_equal(read_cube(tmp_path / name).data, np.moveaxis(cube, -1, 0))
    assert not is_cube_spec(tmp_path / "med.npz") and not is_cube_spec(tmp_path)


def _write_envi(path, cube, interleave, dtype, offset=0, extra=""):
    """`cube` [B, H, W] as an ENVI header plus raw data in `interleave` order."""
    codes = {"int16": 2, "float32": 4}
    order = {"bsq": (0, 1, 2), "bil": (1, 0, 2), "bip": (1, 2, 0)}[interleave]
    data = np.transpose(cube, order).astype(dtype)
    path.with_suffix(".img").write_bytes(b"\0" * offset + data.tobytes())
    b, h, w = cube.shape
    path.write_text(
        f"ENVI\ndescription = {{written by a test,\n over two lines = yes}}\nsamples = {w}\n"
        f"lines = {h}\nbands = {b}\nheader offset = {offset}\nfile type = ENVI Standard\n"
        f"data type = {codes[np.dtype(dtype).name]}\ninterleave = {interleave}\n"
        f"byte order = {int(np.dtype(dtype).byteorder == '>')}\n{extra}"
    )


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
@pytest.mark.parametrize("dtype", [">i2", "<f4"])
def test_envi_interleaves_types_and_byte_orders(tmp_path, interleave, dtype):
    cube = RNG.integers(-3000, 3000, size=(4, 5, 3)).astype(np.float32)  # [B, H, W]
    extra = "band names = {a, b,\n c, d}\nwavelength = {400.5, 500, 600, 700.25}\n"
    _write_envi(tmp_path / "s.hdr", cube, interleave, dtype, offset=32, extra=extra)
    for spec in ("s.hdr", "s.img"):
        read = read_cube(tmp_path / spec)
        assert np.array_equal(read.data, cube), spec
    assert read.band_names == ["a", "b", "c", "d"] and read.wavelengths == [400.5, 500, 600, 700.25]


def test_envi_errors_name_the_file(tmp_path):
    cube = np.ones((2, 3, 3), dtype=np.float32)
    _write_envi(tmp_path / "s.hdr", cube, "bsq", "<f4")
    (tmp_path / "s.img").write_bytes(b"\0" * 10)
    with pytest.raises(UnreadableImageError, match=r"s\.img: 10 bytes, the header describes 72"):
        read_cube(tmp_path / "s.hdr")
    (tmp_path / "s.hdr").write_text("ENVI\nsamples = 3\nlines = 3\nbands = 2\ndata type = 6\n")
    with pytest.raises(UnreadableImageError, match=r"s\.hdr: data type 6 is not supported"):
        read_cube(tmp_path / "s.hdr")


def test_ground_truth_as_label_map_or_abundances(tmp_path):
    labels = RNG.integers(0, 4, size=(5, 6))
    abundances = RNG.random((5, 6, 3))
    abundances[0, 0] = 0.0
    scipy.io.savemat(tmp_path / "gt.mat", {"map": labels.astype(np.float64), "A": abundances})
    truth = read_ground_truth(f"{tmp_path / 'gt.mat'}:map", (5, 6))
    assert np.array_equal(truth.labels, labels) and truth.classes == ["1", "2", "3"]
    truth = read_ground_truth(f"{tmp_path / 'gt.mat'}:A", (5, 6))
    expected = abundances.argmax(axis=-1) + 1
    expected[0, 0] = 0
    assert np.array_equal(truth.labels, expected)
    with pytest.raises(UnreadableImageError, match=r"gt\.mat: no array fits a 7 x 6 scene"):
        read_ground_truth(tmp_path / "gt.mat", (7, 6))


def test_samson_is_read_as_its_readme_says():
    folder = shared_data("hyperspectral/samson")
    v = scipy.io.loadmat(folder / "samson_1.mat")["V"]
    cube = read_cube(folder / "samson_1.mat")
    assert cube.data.shape == (156, 95, 95)
    for p in (0, 1, 94, 95, 4567, 9024):  # the README: pixel p at row p % 95, column p // 95
        assert np.allclose(cube.data[:, p % 95, p // 95], v[:, p])
    truth = read_ground_truth(folder / "samson_end3.mat", cube.shape)
    a = scipy.io.loadmat(folder / "samson_end3.mat")["A"]
    assert truth.classes == ["1-rock", "2-Tree", "3-water"]
    assert np.array_equal(np.bincount(truth.labels.ravel()), [0, *np.bincount(a.argmax(0))])
    assert truth.labels[17, 40] == a[:, 40 * 95 + 17].argmax() + 1


# Tiles and windows.


def test_tiles_cover_the_scene_with_the_documented_count(tmp_path):
    cube = _hwb(20, 13, 3)
    np.save(tmp_path / "c.npy", cube)
    tiles = open_images(tmp_path / "c.npy", labeled=False, tile_size=8, tile_stride=4)
    assert isinstance(tiles, CubeTiles) and tiles.in_chans == 3 and tiles.labels is None
    assert tile_starts(20, 8, 4) == [0, 4, 8, 12] and tile_starts(13, 8, 4) == [0, 4, 5]
    assert len(tiles) == 4 * 3
    chw = torch.from_numpy(np.moveaxis(cube, -1, 0))
    covered = np.zeros((20, 13), dtype=bool)
    for i, (r, c) in enumerate(tiles.corners):
        assert torch.equal(tiles.read(i), chw[:, r : r + 8, c : c + 8])
        covered[r : r + 8, c : c + 8] = True
    assert covered.all()
    assert len(CubeTiles(tiles.cube, 8)) == len(tile_starts(20, 8, 4)) * len(tile_starts(13, 8, 4))
    with pytest.raises(ValueError, match="tile size 14 does not fit the 20 x 13 scene"):
        CubeTiles(tiles.cube, 14)
    with pytest.raises(ValueError, match="eval pixels"):
        open_images(tmp_path / "c.npy", labeled=True)


def test_windows_are_padded_by_reflection(tmp_path):
    np.save(tmp_path / "c.npy", _hwb(6, 7, 2))
    cube = read_cube(tmp_path / "c.npy")
    windows = PixelWindows(cube, [0, 3], [6, 2], 5, labels=[1, 0])
    corner = windows.read(0)
    assert corner.shape == (2, 5, 5)
    padded = np.pad(cube.data, ((0, 0), (2, 2), (2, 2)), mode="reflect")
    assert np.array_equal(corner.numpy(), padded[:, 0:5, 6:11])
    assert np.array_equal(corner[:, 2, 2].numpy(), cube.data[:, 0, 6])
    assert np.array_equal(corner[:, 0, 2].numpy(), cube.data[:, 2, 6])  # mirror, not repeat
    assert np.array_equal(windows.read(1).numpy(), cube.data[:, 1:6, 0:5])
    with pytest.raises(ValueError, match="odd"):
        PixelWindows(cube, [0], [0], 4)


# Split and scores.


def test_split_counts_per_class_reproducible_and_disjoint():
    labels = np.repeat([0, 1, 2], [30, 50, 12])
    train, test = pixel_split(labels, parse_label_spec(10), seed=3)
    assert np.bincount(labels[train]).tolist() == [10, 10, 10]
    assert np.intersect1d(train, test).size == 0 and len(train) + len(test) == len(labels)
    again, _ = pixel_split(labels, parse_label_spec(10), seed=3)
    other, _ = pixel_split(labels, parse_label_spec(10), seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    train, _ = pixel_split(labels, parse_label_spec(0.1), seed=0)
    assert np.bincount(labels[train]).tolist() == [3, 5, 1]
    with pytest.raises(ValueError, match="class '2' has 12 labelled pixels"):
        pixel_split(labels, parse_label_spec(12), seed=0)


def test_oa_aa_kappa_match_a_hand_computed_matrix():
    matrix = torch.tensor([[50, 2, 3], [5, 40, 5], [0, 10, 85]])
    scores = agreement_scores(matrix)
    # 200 items, 175 on the diagonal: OA = 87.5 %. Recalls 50/55, 40/50, 85/95: AA = 86.794 %.
    # Rows 55, 50, 95 and columns 55, 52, 93: p_e = (3025 + 2600 + 8835) / 40000 = 0.3615,
    # kappa = (0.875 - 0.3615) / (1 - 0.3615) = 0.80423.
    assert scores["oa"] == pytest.approx(87.5)
    assert scores["aa"] == pytest.approx(100 * (50 / 55 + 40 / 50 + 85 / 95) / 3)
    assert scores["aa"] == pytest.approx(86.794, abs=1e-3)
    assert scores["kappa"] == pytest.approx(0.5135 / 0.6385)
    assert agreement_scores(torch.eye(3) * 7)["kappa"] == pytest.approx(1.0)


# Grouped patch embedding.


def test_grouped_tokens_see_only_their_bands():
    torch.manual_seed(0)
    encoder = create_vit("vit_tiny", 16, 4, 10, band_groups=3)
    embed = encoder.patch_embed
    assert band_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)] and embed.group_size == 4
    assert encoder.pos_embed.shape == (1, 1 + 3 * 16, 192)
    images = torch.randn(2, 10, 16, 16)
    tokens = embed(images)
    assert tokens.shape == (2, 48, 192)
    assert encoder.forward_features(images).shape == (2, 49, 192)
    changed = images.clone()
    changed[:, 3:6] += 1.0  # group 1's bands: tokens 16..31 change, the others do not
    moved = (embed(changed) - tokens).abs().amax(dim=(0, 2)) > 1e-6
    assert moved.tolist() == [False] * 16 + [True] * 16 + [False] * 16
    # token k * 16 + i is group k's projection of its bands at patch i, plus the group's code
    w = embed.proj.weight.view(3, 192, 4, 4, 4).permute(0, 1, 3, 4, 2).reshape(3, 192, -1)
    values = embed.patchify(images)  # [2, 48, 4 * 4 * 4]
    manual = torch.einsum("bkip,kdp->bkid", values.view(2, 3, 16, -1), w)
    manual = manual + embed.proj.bias.view(1, 3, 1, 192) + embed.group_embed.view(1, 3, 1, 192)
    assert torch.allclose(manual.reshape(2, 48, 192), tokens, atol=1e-5)
    assert torch.equal(embed.unpatchify(values), images)
    # every group's tokens carry the same spatial positions
    table = encoder.pos_embed[0, 1:].view(3, 16, 192)
    assert torch.equal(table[0], table[2])


def test_grouped_mae_masks_tokens_and_learns():
    torch.manual_seed(0)
    encoder = create_vit("vit_tiny", 16, 4, 12, band_groups=3)
    mae = MAE(MAEConfig(decoder_embed_dim=32, decoder_depth=1), encoder)
    images = torch.randn(4, 12, 16, 16)
    latent, mask, _ = mae.encode_visible(images, 0.75)
    assert latent.shape == (4, 1 + 12, 192) and mask.shape == (4, 48)
    assert mae.targets(images).shape == (4, 48, 4 * 4 * 4)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        torch.manual_seed(1)  # the same mask every step: the loss must fall
        loss, _ = mae(images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert encoder.patch_embed.group_embed.grad is not None
    recon, hidden = mae.reconstruct(images)
    assert recon.shape == images.shape and hidden.shape == images.shape


def test_grouped_encoder_saves_exports_and_loads_in_timm(tmp_path):
    torch.manual_seed(0)
    encoder = create_vit("vit_tiny", 16, 4, 9, band_groups=2).eval()
    info = EncoderInfo("vit_tiny", (16, 16), 4, 9, [0.0] * 9, [1.0] * 9, 192, band_groups=2)
    save_encoder(encoder, info, tmp_path / "run" / "encoder.safetensors")
    loaded, loaded_info = load_encoder(tmp_path / "run")
    images = torch.randn(2, 9, 16, 16)
    assert loaded_info.band_groups == 2
    assert torch.equal(loaded.forward_features(images), encoder.forward_features(images))
    out = export_encoder(tmp_path / "run", tmp_path / "enc.safetensors")
    sidecar = json.loads(out.with_suffix(".json").read_text())
    model = timm.create_model(
        sidecar["timm_name"],
        img_size=sidecar["img_size"],
        patch_size=sidecar["patch_size"],
        in_chans=sidecar["in_chans"],
        num_classes=0,
        embed_layer=grouped_embed_layer(sidecar["band_groups"]),
    ).eval()
    from safetensors.torch import load_file

    model.load_state_dict(load_file(out), strict=True)
    assert torch.allclose(model(images), encoder.forward_features(images)[:, 0], atol=1e-5)


def _peak_bytes(encoder, images) -> int:
    """Peak of the bytes allocated during a forward and backward pass (torch profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        encoder.forward_features(images).pow(2).mean().backward()
    level = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        level += event.self_cpu_memory_usage
        peak = max(peak, level)
    return peak


def test_grouped_memory_grows_with_groups_not_bands():
    torch.manual_seed(0)
    peaks = {}
    for bands, groups in ((200, 0), (200, 4), (400, 4)):
        encoder = create_vit("vit_tiny", 32, 8, bands, band_groups=groups)
        peaks[bands, groups] = _peak_bytes(encoder, torch.randn(8, bands, 32, 32))
    # 4 groups make 4 x 16 tokens instead of 16: activations grow with the tokens, at most 4x
    assert peaks[200, 0] < peaks[200, 4] <= 4 * peaks[200, 0]
    # twice the bands in the same 4 groups: only the input and the projection grow
    assert peaks[400, 4] < 1.25 * peaks[200, 4]


# Command line.


def _scene(tmp_path):
    """A 24 x 20 scene of 12 bands, three materials with distinct spectra plus noise."""
    labels = np.ones((24, 20), dtype=np.int64)
    labels[:, 8:] = 2
    labels[14:, 12:] = 3
    labels[0, :] = 0
    spectra = np.stack([np.linspace(0.2, 0.8, 12), np.linspace(0.8, 0.2, 12), np.full(12, 0.5)])
    cube = spectra[np.maximum(labels - 1, 0)] + 0.05 * RNG.standard_normal((24, 20, 12))
    scipy.io.savemat(tmp_path / "scene.mat", {"cube": cube})
    np.save(tmp_path / "gt.npy", labels)
    return tmp_path / "scene.mat", tmp_path / "gt.npy"


TINY = [
    "--model", "vit_tiny", "--img-size", "16", "--patch-size", "4", "--epochs", "1",
    "--batch-size", "3", "--workers", "0", "--device", "cpu", "--precision", "fp32",
    "--set", "method.decoder_embed_dim=32", "--set", "method.decoder_depth=1",
    "--set", "optim.warmup_epochs=0.5", "--set", "data.tile_stride=4",
]  # fmt: skip


def test_pretrain_on_a_cube_then_classify_its_pixels(tmp_path, capsys):
    cube, gt = _scene(tmp_path)
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(cube), "--out", str(run), "--set", "model.band_groups=3"]
    assert main([*args, *TINY]) == 0
    info = json.loads((run / "encoder.json").read_text())
    assert info["band_groups"] == 3 and info["in_chans"] == 12 and len(info["mean"]) == 12
    assert (run / "figures" / "recon.png").is_file()

    base = ["eval", "pixels", "--cube", str(cube), "--gt", str(gt), "--device", "cpu"]
    assert main([*base, "--encoder", str(run), "--train-per-class", "5", "--seed", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_train"] == 15 and result["n_test"] == 24 * 20 - 20 - 15
    assert set(result["per_class"]) == {"1", "2", "3"} and 0 <= result["kappa"] <= 1
    assert (run / "eval" / "pixels-5perclass-seed1.json").is_file()
    assert (run / "figures" / "pixels-5perclass-seed1.png").stat().st_size > 1000

    out = tmp_path / "random"
    args = [
        "--encoder",
        "none",
        "--train-fraction",
        "0.05",
        "--out",
        str(out),
        "--band-groups",
        "2",
    ]
    assert main([*base, *args, "--pixel-window", "5"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the materials differ in their spectra, so even random features separate them
    assert result["oa"] > 90 and result["window"] == 5
    assert (out / "eval" / "pixels-5pct-seed0.json").is_file()


def test_eval_pixels_errors(tmp_path, capsys):
    cube, gt = _scene(tmp_path)
    base = ["eval", "pixels", "--encoder", "none", "--cube", str(cube)]
    assert main([*base, "--train-per-class", "5"]) == 2
    assert "needs --cube and --gt" in capsys.readouterr().err
    assert main([*base, "--gt", str(gt)]) == 2
    assert "--train-per-class N or --train-fraction F" in capsys.readouterr().err
    assert main([*base, "--gt", str(gt), "--train-per-class", "5", "--data", "x"]) == 2
    assert "--data: not for `sslvit eval pixels`" in capsys.readouterr().err
    assert main(["eval", "knn", "--encoder", "none", "--cube", str(cube)]) == 2
    assert "--cube: only for `sslvit eval pixels`" in capsys.readouterr().err
    assert main([*base, "--gt", str(gt), "--train-per-class", "5", "--train-fraction", "0.1"]) == 2
    assert "give only one of --train-per-class N and --train-fraction F" in capsys.readouterr().err
    assert main([*base, "--gt", str(gt), "--train-fraction", "1.5"]) == 2
    assert "--train-fraction 1.5: must lie between 0 and 1" in capsys.readouterr().err
    assert main([*base, "--gt", str(gt), "--train-per-class", "5", "--pixel-window", "8"]) == 2
    assert "--pixel-window 8: must be an odd number of pixels" in capsys.readouterr().err
    args = [*base, "--gt", str(gt), "--train-per-class", "5", "--bands", "B4,3"]
    assert main(args) == 2
    assert "scene.mat:cube: no band named 'B4', its 12 bands (indices 0-11) have no names" in (
        capsys.readouterr().err
    )
    assert main([*base, "--gt", str(gt), "--train-per-class", "5", "--bands", "3,3"]) == 2
    assert "bands 3,3 choose band 3 twice; give each band once" in capsys.readouterr().err


def test_downstream_commands_use_the_runs_tiles_and_bands(tmp_path, capsys, caplog):
    from sslvit.evaluate.embed import load_embeddings

    cube, gt = _scene(tmp_path)
    run = tmp_path / "run"
    # tile_size unset: tiles of --img-size (16 px), every data.tile_stride=4 px
    assert (
        main(["pretrain", "--data", str(cube), "--out", str(run), "--bands", "1,5,9", *TINY]) == 0
    )
    config = yaml.safe_load((run / "config.yaml").read_text())["data"]
    info = json.loads((run / "encoder.json").read_text())
    assert (config["tile_size"], config["tile_stride"]) == (16, 4)
    assert (info["tile_size"], info["tile_stride"], info["bands"]) == (16, 4, ["1", "5", "9"])
    umask = os.umask(0)
    os.umask(umask)
    assert (run / "encoder.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask

    n_tiles = len(CubeTiles(read_cube(cube), 16, 4))  # 3 rows x 2 columns of tiles
    features = tmp_path / "features.npy"
    args = ["embed", "--encoder", str(run), "--data", str(cube), "--out", str(features)]
    assert main([*args, "--workers", "0", "--device", "cpu"]) == 0
    assert len(load_embeddings(features).features) == n_tiles == 6
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sslvit"):
        picture = tmp_path / "recon.png"
        assert main(["show", "recon", "--encoder", str(run), "--out", str(picture)]) == 0
    assert "6 tiles of 16 px (stride 4)" in caplog.text and "32 px" not in caplog.text

    # eval pixels reads the encoder's three bands of the 12-band cube, or the ones given
    base = ["eval", "pixels", "--encoder", str(run), "--cube", str(cube), "--gt", str(gt)]
    base += ["--train-per-class", "5", "--device", "cpu", "--out", str(tmp_path / "px")]
    assert main(base) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_train"] == 15
    assert main([*base, "--bands", "1,5,9"]) == 0
    assert main([*base, "--bands", "1,5"]) == 2
    assert "reads bands [1, 5], the encoder was trained on [1, 5, 9]" in capsys.readouterr().err


def test_a_method_that_cannot_train_band_groups_leaves_no_run_folder(tmp_path, capsys):
    cube, _ = _scene(tmp_path)
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(cube), "--out", str(run), "--method", "dino"]
    assert main([*args, "--set", "model.band_groups=3", *TINY[:14]]) == 2
    assert "method dino with model.band_groups=3: this needs the plain patch embedding" in (
        capsys.readouterr().err
    )
    assert not run.exists()
