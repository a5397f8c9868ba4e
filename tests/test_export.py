"""Exported encoders load strictly into plain timm and compute what our encoder computes."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from sslvit.export import check_timm_loadable, export_encoder
from sslvit.models.io import EncoderInfo, load_encoder, save_encoder
from sslvit.models.vit import create_vit


def _run_folder(tmp_path, in_chans, img_size, patch_size):
    torch.manual_seed(0)
    encoder = create_vit("vit_tiny", img_size, patch_size, in_chans).eval()
    info = EncoderInfo(
        model="vit_tiny",
        img_size=(img_size, img_size),
        patch_size=patch_size,
        in_chans=in_chans,
        mean=[0.5] * in_chans,
        std=[0.25] * in_chans,
        embed_dim=encoder.embed_dim,
        pool="mean",
        method="mae",
    )
    run = tmp_path / "run"
    save_encoder(encoder, info, run / "encoder.safetensors")
    return run, encoder


@pytest.mark.parametrize(
    ("in_chans", "img_size", "patch_size"), [(1, 28, 4), (3, 32, 4), (13, 48, 8)]
)
def test_export_loads_strictly_into_timm(tmp_path, in_chans, img_size, patch_size):
    run, encoder = _run_folder(tmp_path, in_chans, img_size, patch_size)
    out = export_encoder(run, tmp_path / "export" / "mae-t.safetensors", format="timm")

    assert out == tmp_path / "export" / "mae-t.safetensors"
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["timm_name"] == "vit_tiny_patch16_224"
    assert sidecar["img_size"] == [img_size, img_size]
    assert (sidecar["patch_size"], sidecar["in_chans"]) == (patch_size, in_chans)
    assert sidecar["mean"] == [0.5] * in_chans and sidecar["std"] == [0.25] * in_chans

    state = load_file(str(out))
    assert all(t.dtype == torch.float32 for t in state.values())
    model = timm.create_model(
        sidecar["timm_name"],
        img_size=sidecar["img_size"],
        patch_size=sidecar["patch_size"],
        in_chans=sidecar["in_chans"],
        num_classes=0,
        weight_init="skip",  # every weight comes from the file; skipping init saves seconds
    )
    model.load_state_dict(state, strict=True)
    model.eval()

    images = torch.randn(2, in_chans, img_size, img_size)
    with torch.no_grad():
        expected = encoder.forward_features(images)
        assert torch.allclose(model.forward_features(images), expected, atol=1e-5)

    # The export is also an sslvit encoder file.
    reloaded, info = load_encoder(out)
    assert info.pool == "mean" and info.method == "mae"
    with torch.no_grad():
        assert torch.allclose(reloaded.forward_features(images), expected, atol=1e-5)


def test_run_folder_without_encoder_or_sidecar_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty-run.*no encoder here"):
        export_encoder(empty, tmp_path / "out.safetensors")

    run, _ = _run_folder(tmp_path, 1, 28, 4)
    (run / "encoder.json").unlink()
    with pytest.raises(FileNotFoundError, match="encoder.json: the encoder's JSON sidecar"):
        export_encoder(run, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_bad_format_and_file_name_are_rejected(tmp_path):
    run, _ = _run_folder(tmp_path, 1, 28, 4)
    with pytest.raises(ValueError, match="unknown export format 'onnx'; choose one of timm"):
        export_encoder(run, tmp_path / "out.safetensors", format="onnx")
    with pytest.raises(ValueError, match=r"out\.pt: the export file name must end in"):
        export_encoder(run, tmp_path / "out.pt")


def test_weights_that_do_not_fit_the_timm_model_are_refused():
    encoder = create_vit("vit_tiny", 32, 4, 3)
    wrong = EncoderInfo("vit_tiny", (32, 32), 8, 3, [0.0] * 3, [1.0] * 3, encoder.embed_dim)
    with pytest.raises(ValueError, match="do not load into timm's vit_tiny_patch16_224"):
        check_timm_loadable(encoder.state_dict(), wrong)


def test_truncated_or_mismatched_encoder_files_are_named_errors(tmp_path):
    run, _ = _run_folder(tmp_path, 1, 28, 4)
    weights = run / "encoder.safetensors"
    full = weights.read_bytes()
    weights.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match=r"encoder\.safetensors: not a readable \.safetensors"):
        load_encoder(run)

    weights.write_bytes(full)
    sidecar = json.loads((run / "encoder.json").read_text())
    (run / "encoder.json").write_text(json.dumps({**sidecar, "patch_size": 7}))
    with pytest.raises(ValueError, match=r"do not fit the encoder its sidecar encoder\.json "
                       r"describes: size mismatch .*\(and \d+ more\)"):  # fmt: skip
        load_encoder(run)
