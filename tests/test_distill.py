"""DINO, iBOT and MaskFeat: losses against the papers' formulas, the teacher's views, centring,
masked-only losses, HOG targets, collapse warnings, and a few steps of each on real digits."""

import logging
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslvit.cli import main
from sslvit.methods import build_method
from sslvit.methods.dino import DINOConfig, dino_loss, local_crop_size
from sslvit.methods.ibot import IBOTConfig, masked_patch_distill
from sslvit.methods.maskfeat import MaskFeatConfig, default_cell_size, hog_targets, target_fit
from sslvit.methods.masking import block_masks
from sslvit.models import EncoderInfo, create_vit, save_encoder
from sslvit.models.heads import DINOHead
from sslvit.train.loop import Trainer

SMALL = {"out_dim": 128, "hidden_dim": 32, "bottleneck_dim": 16}


def reference_dino_loss(student, teacher, center, ts, tt):
    """The paper's Algorithm 1, element by element: H(t, s) over pairs of different views."""
    total, pairs = 0.0, 0
    for ti, t in enumerate(teacher):
        for si, s in enumerate(student):
            if si == ti:
                continue
            for b in range(t.shape[0]):
                p_t = np.exp((t[b] - center) / tt)
                p_t /= p_t.sum()
                z = s[b] / ts
                log_p_s = z - np.log(np.exp(z).sum())
                total += -(p_t * log_p_s).sum() / t.shape[0]
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("n_local", [0, 1, 4])
@pytest.mark.parametrize("temps", [(0.1, 0.04), (0.2, 0.07), (1.0, 1.0)])
def test_dino_loss_matches_the_paper(n_local, temps):
    rng = np.random.default_rng(n_local)
    k, b = 7, 3
    student = [rng.normal(size=(b, k)) for _ in range(2 + n_local)]
    teacher = [rng.normal(size=(b, k)) for _ in range(2)]
    center = rng.normal(size=k) * 0.1
    got = dino_loss(
        [torch.tensor(s) for s in student],
        [torch.tensor(t) for t in teacher],
        torch.tensor(center).view(1, -1),
        *temps,
    )
    assert got.item() == pytest.approx(reference_dino_loss(student, teacher, center, *temps))


def _views(b=4, size=16, local=8, n_local=2):
    return [torch.randn(b, 3, size, size) for _ in range(2)] + [
        torch.randn(b, 3, local, local) for _ in range(n_local)
    ]


@pytest.mark.parametrize("config", [DINOConfig(**SMALL), IBOTConfig(**SMALL, patch_out_dim=128)])
def test_teacher_sees_only_the_global_views(config):
    method = build_method(config, create_vit("vit_tiny", 16, 4, 3))
    method.start_step(0, 10, 5)
    seen = []
    proj = method.teacher.net["encoder"].patch_embed.proj
    proj.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    method(_views())
    assert seen and all(shape[-1] == 16 for shape in seen)
    assert sum(shape[0] for shape in seen) == 2 * 4


def test_centre_is_an_ema_of_the_teachers_batch_mean():
    torch.manual_seed(0)
    method = build_method(DINOConfig(**SMALL, local_crops=0), create_vit("vit_tiny", 16, 4, 3))
    method.start_step(0, 10, 5)
    views = _views(n_local=0)
    with torch.no_grad():
        t = method.teacher.net
        logits = torch.cat([t["head"](c) for c in method.encode(t["encoder"], views)])
    method(views)
    assert torch.allclose(method.center, 0.1 * logits.mean(0, keepdim=True), atol=1e-6)


def test_uniform_start_during_the_warm_up_is_not_called_collapse(caplog):
    """A fresh head sits at ln(K): the monitor starts counting when the warm-up ends."""
    method = build_method(DINOConfig(**SMALL), create_vit("vit_tiny", 16, 4, 3))
    uniform = torch.full((4, 128), 1 / 128)
    with caplog.at_level(logging.WARNING, logger="sslvit"):
        for step in range(60):
            method.start_step(step, 100, 10, warmup_steps=30)
            method.monitor(uniform, math.log(128))
            assert method.monitor.collapsed == (step >= 30 + 20 - 1), step
    assert len([r for r in caplog.records if "ln(128)" in r.message]) == 1


def test_local_crop_size_scales_with_the_image():
    assert local_crop_size(224, 16) == 96
    assert local_crop_size(32, 4) == 16


def test_ibot_patch_loss_counts_only_masked_positions():
    torch.manual_seed(0)
    s, t = torch.randn(3, 6, 5), torch.randn(3, 6, 5)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]])
    center = torch.zeros(1, 1, 5)
    on = mask.bool()
    base = masked_patch_distill(s[on], t[on], mask, center, 0.1, 0.04)
    s3 = s.clone()
    s3[0, 0, 0] += 3.0  # one logit of a masked patch
    moved = masked_patch_distill(s3[on], t[on], mask, center, 0.1, 0.04)
    assert moved.item() != pytest.approx(base.item())
    # written out: per image, mean cross-entropy over its masked patches; then mean over all
    # images, the unmasked third counting 0
    ce = -(torch.softmax(t / 0.04, -1) * torch.log_softmax(s / 0.1, -1)).sum(-1)
    want = ((ce[0, 0] + ce[0, 2]) / 2 + ce[1, 5] + 0) / 3
    assert base.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_head_on_selected_rows_equals_the_full_head_there(batch_norm):
    """iBOT's student evaluates its patch head on the masked tokens only: the same logits as
    the full head read at those positions, BatchNorm statistics included."""
    torch.manual_seed(0)
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, batch_norm=batch_norm).train()
    x = torch.randn(3, 7, 16)
    select = torch.rand(3, 7) < 0.3
    assert torch.allclose(head(x, select=select), head(x)[select], atol=1e-6)


@pytest.mark.parametrize("fields", [{"mask_prob": 0.0}, {"pred_ratio": 0.0, "pred_ratio_var": 0.0}])
def test_ibot_that_masks_nothing_says_it_trains_as_dino(fields, caplog):
    config = IBOTConfig(**{**SMALL, "patch_out_dim": SMALL["out_dim"], **fields})
    vit = create_vit("vit_tiny", 16, 4, 3)
    with caplog.at_level(logging.WARNING, logger="sslvit"):
        build_method(config, vit)
    assert any("masks no patch" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sslvit"):
        build_method(IBOTConfig(**{**SMALL, "patch_out_dim": 128, "lambda_patch": 0.0}), vit)
    assert any("lambda_patch 0" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sslvit"):
        build_method(
            IBOTConfig(**{**SMALL, "patch_out_dim": 128}), create_vit("vit_tiny", 16, 4, 3)
        )
    assert not caplog.records


@pytest.mark.parametrize(
    "method,fields,named",
    [
        ("ibot", {"pred_ratio": -0.1}, "method.pred_ratio = -0.1"),
        ("ibot", {"pred_ratio_var": 0.5}, "method.pred_ratio_var = 0.5"),
        ("ibot", {"pred_ratio": 1.5, "pred_ratio_var": 0.0}, "method.pred_ratio = 1.5"),
        ("ibot", {"patch_out_dim": 0}, "method.patch_out_dim = 0"),
        ("ibot", {"mask_prob": 1.5}, "method.mask_prob = 1.5"),
        ("ibot", {"lambda_patch": -1.0}, "method.lambda_patch = -1.0"),
        ("ibot", {"lambda_cls": 0.0, "lambda_patch": 0.0}, "method.lambda_cls = 0.0"),
        ("dino", {"out_dim": 0}, "method.out_dim = 0"),
        ("dino", {"out_dim": -5}, "method.out_dim = -5"),
        ("dino", {"global_crop_scale": (1.0, 0.4)}, "method.global_crop_scale = (1.0, 0.4)"),
        ("dino", {"local_crop_scale": (0.5, 3.0)}, "method.local_crop_scale"),
        ("dino", {"teacher_temp": 0.0}, "method.teacher_temp = 0.0"),
        ("dino", {"momentum": 1.5}, "method.momentum = 1.5"),
        ("dino", {"local_crops": -2}, "method.local_crops = -2"),
        ("dino", {"hidden_dim": 0}, "method.hidden_dim = 0"),
    ],
)
def test_dino_and_ibot_settings_are_checked_before_any_work(method, fields, named):
    config = (DINOConfig if method == "dino" else IBOTConfig)(**{**SMALL, **fields})
    if method == "ibot" and "patch_out_dim" not in fields:
        config.patch_out_dim = config.out_dim
    with pytest.raises(ValueError, match=re.escape(named)):
        build_method(config, create_vit("vit_tiny", 16, 4, 3))


@pytest.mark.parametrize("local_size", [10, 64])
def test_local_crops_must_be_whole_patches_no_larger_than_the_image(local_size, tmp_path):
    with pytest.raises(ValueError, match=f"method.local_size = {local_size}: local crops"):
        build_method(DINOConfig(**SMALL, local_size=local_size), create_vit("vit_tiny", 32, 4, 3))


@pytest.mark.parametrize("name", ["dino", "byol"])
def test_a_resumed_step_logs_the_momentum_an_unbroken_run_logs(name):
    """The teacher momentum logged at step s is the one the step before left, also when the
    method object is new (a resume)."""
    from sslvit.methods.byol import BYOLConfig
    from sslvit.methods.teacher import cosine_momentum

    config = DINOConfig(**SMALL, local_crops=0) if name == "dino" else BYOLConfig()
    method = build_method(config, create_vit("vit_tiny", 16, 4, 3))
    method.start_step(7, 10, 5)
    views = _views(n_local=0)
    _, logs = method(views if name == "dino" else views[0:2])
    assert logs["momentum"] == pytest.approx(cosine_momentum(7, 10, config.momentum))


def test_block_masks_have_the_exact_count():
    masks = block_masks(5, (8, 8), [0.4, 0.1, 0.5, 0.0, 0.3])
    assert masks.sum(1).tolist() == [26, 6, 32, 0, 19]


def reference_hog(image: np.ndarray, patch: int, cell: int, bins: int) -> np.ndarray:
    """HOG of one channel written out pixel by pixel: Sobel gradients with reflected borders,
    unsigned orientation bins, Gaussian window per patch, sums per cell, L2 per patch."""
    h, w = image.shape
    padded = np.pad(image, 1, mode="reflect")
    coords = np.arange(patch) - (patch - 1) / 2
    g1 = np.exp(-(coords**2) / (2 * (patch / 2) ** 2))
    window = np.outer(g1, g1)
    hist = np.zeros((h // cell, w // cell, bins))
    for y in range(h):
        for x in range(w):
            win = padded[y : y + 3, x : x + 3]
            gx = (win[:, 0] * [1, 2, 1]).sum() - (win[:, 2] * [1, 2, 1]).sum()
            gy = (win[0] * [1, 2, 1]).sum() - (win[2] * [1, 2, 1]).sum()
            angle = math.atan2(gy, gx) % math.pi
            b = min(int(angle / math.pi * bins), bins - 1)
            hist[y // cell, x // cell, b] += math.hypot(gx, gy) * window[y % patch, x % patch]
    per = patch // cell
    out = []
    for py in range(h // patch):
        for px in range(w // patch):
            cells = hist[py * per : (py + 1) * per, px * per : (px + 1) * per]  # [per, per, bins]
            vec = cells.transpose(2, 0, 1).reshape(-1)  # bins, then cells row-major
            out.append(vec / max(np.linalg.norm(vec), 1e-12))
    return np.stack(out)


@pytest.mark.parametrize("cell", [2, 4])
def test_hog_targets_match_a_direct_computation(cell):
    rng = np.random.default_rng(0)
    image = rng.random((2, 8, 12))
    got = hog_targets(torch.tensor(image).unsqueeze(0).float(), 4, cell, 9)[0].numpy()
    want = np.concatenate([reference_hog(image[c], 4, cell, 9) for c in range(2)], axis=1)
    assert got.shape == (6, 2 * 9 * (4 // cell) ** 2)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_default_hog_cells_halve_the_patch_but_stay_at_least_4_px():
    assert [default_cell_size(p) for p in (16, 14, 8, 4, 2)] == [8, 7, 4, 4, 2]


def test_maskfeat_logs_how_much_of_the_target_variance_it_explains():
    torch.manual_seed(0)
    target = F.normalize(torch.rand(4, 16, 27), dim=-1)
    mask = (torch.rand(4, 16) < 0.4).float()

    def loss_of(pred):
        return ((pred - target).pow(2).mean(-1) * mask).sum() / mask.sum()

    mean = (target * mask.unsqueeze(-1)).sum((0, 1)) / mask.sum()
    fit = target_fit(loss_of(mean.expand_as(target)), target, mask)
    assert fit["explained"] == pytest.approx(0.0, abs=1e-5)
    assert fit["target_var"] == pytest.approx(float(loss_of(mean.expand_as(target))), rel=1e-5)
    assert target_fit(loss_of(target), target, mask)["explained"] == pytest.approx(1.0)


def test_maskfeat_starts_from_the_mean_target_and_a_resumed_run_keeps_its_head():
    torch.manual_seed(0)
    method = build_method(MaskFeatConfig(), create_vit("vit_tiny", 16, 4, 3)).train()
    images = torch.randn(8, 3, 16, 16)
    method.start_step(0, 10, 5)
    loss, logs = method(images)
    # first prediction: the batch's mean HOG for every masked patch, so nothing explained yet
    # and nothing worse than the mean either
    assert logs["explained"] == pytest.approx(0.0, abs=1e-4)
    assert float(loss.detach()) == pytest.approx(logs["target_var"], rel=1e-4)
    fitted = method.head.bias.clone()
    method.start_step(3, 10, 5)  # a resumed run: the bias is the one it learnt
    method(torch.randn(8, 3, 16, 16))
    assert torch.equal(method.head.bias, fitted)


def test_dino_head_batch_norm_pools_every_leading_dimension():
    torch.manual_seed(0)
    head = DINOHead(8, 32, hidden_dim=16, bottleneck_dim=4, batch_norm=True)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.mlp) == 2
    tokens = torch.randn(3, 5, 8) * 4 + 2  # iBOT's patch tokens: [B, N, D]
    out = head(tokens)
    assert out.shape == (3, 5, 32)
    assert torch.allclose(out.reshape(15, 32), head(tokens.reshape(15, 8)), atol=1e-6)
    # in training, the hidden layer is normalised over all 15 tokens together
    hidden = head.mlp[1](head.mlp[0](tokens.reshape(15, 8)))
    assert torch.allclose(hidden.mean(0), torch.zeros(16), atol=1e-5)
    assert head.eval()(tokens[:1, :1]).shape == (1, 1, 32)  # one token in eval mode


def test_hog_of_a_vertical_edge_is_all_in_the_horizontal_gradient_bin():
    image = torch.zeros(1, 1, 8, 8)
    image[..., 4:] = 1.0
    feats = hog_targets(image, 4, 2, 9)[0].view(4, 9, 4)  # patches, bins, cells
    assert feats[:, 1:].abs().sum() == 0 and feats[:, 0].sum() > 0


def _config(data, out, method, **fields):
    from tests.test_contrastive import _config as base

    config = base(data, out, method, **fields)
    return config


TINY = {
    "dino": {**SMALL, "local_crops": 2},
    "ibot": {**SMALL, "patch_out_dim": 128, "local_crops": 2},
    "maskfeat": {},
}


@pytest.mark.parametrize("method", ["dino", "ibot", "maskfeat"])
def test_each_method_trains_resumes_exactly_and_exports(method, digits_folder, tmp_path):
    whole = Trainer(_config(digits_folder, tmp_path / "whole", method, **TINY[method]))
    whole.train()
    parted = _config(digits_folder, tmp_path / "parted", method, **TINY[method])
    parted.run.stop_at_step = 3
    Trainer(parted).train()
    parted.run.stop_at_step = 0
    resumed = Trainer(parted, resume=True)
    resumed.train()
    a, b = whole.method.state_dict(), resumed.method.state_dict()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
    from tests.test_train import step_losses

    losses = step_losses(tmp_path / "whole")
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses.values())
    if method == "dino":
        # last layer frozen for the first epoch (6 steps here): its weights never moved
        fresh = Trainer(_config(digits_folder, tmp_path / "fresh", method, **TINY[method]))
        assert torch.equal(fresh.method.head.last_v, whole.method.head.last_v)


def _dino_run(data, out, caplog, **fields):
    config = _config(data, out, "dino", **{**TINY["dino"], "collapse_patience": 5, **fields})
    config.optim.epochs = 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sslvit"):
        trainer = Trainer(config)
        trainer.train()
    return trainer.method.monitor.collapsed, [r.message for r in caplog.records]


@pytest.mark.slow
def test_dino_collapse_warning(digits_folder, tmp_path, caplog):
    flat = {"teacher_temp": 1.0, "warmup_teacher_temp": 1.0, "student_temp": 1.0}
    collapsed, messages = _dino_run(digits_folder, tmp_path / "flat", caplog, **flat)
    assert collapsed and any("ln(128)" in m for m in messages)
    healthy, messages = _dino_run(digits_folder, tmp_path / "ok", caplog)
    assert not healthy and not any("collapse" in m for m in messages)


@pytest.mark.parametrize("chans,bands", [(1, None), (3, None), (5, "3,1,0")])
def test_show_attention_for_any_channel_count(tmp_path, chans, bands):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(chans)
    for i in range(3):
        np.save(data / f"{i}.npy", rng.random((chans, 16, 16)).astype(np.float32))
    info = EncoderInfo(
        model="vit_tiny", img_size=(16, 16), patch_size=4, in_chans=chans,
        mean=[0.5] * chans, std=[0.3] * chans, embed_dim=192, pool="cls", method="none",
    )  # fmt: skip
    enc = save_encoder(create_vit("vit_tiny", 16, 4, chans), info, tmp_path / "enc.safetensors")
    out = tmp_path / "attn.png"
    args = ["show", "attention", "--encoder", str(enc), "--data", str(data), "--out", str(out)]
    assert main(args + (["--bands", bands] if bands else [])) == 0
    assert out.stat().st_size > 1000


def test_show_attention_without_data_reads_the_runs_own_images(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(data / f"{i}.npy", rng.random((3, 16, 16)).astype(np.float32))
    run = tmp_path / "run"
    assert main([
        "pretrain", "--data", str(data), "--img-size", "16", "--patch-size", "4",
        "--batch-size", "4", "--workers", "0", "--device", "cpu", "--precision", "fp32",
        "--set", "run.stop_at_step=1", "--set", "method.decoder_embed_dim=32",
        "--set", "method.decoder_depth=1", "--out", str(run),
    ]) == 0  # fmt: skip
    out = tmp_path / "attn.png"
    assert main(["show", "attention", "--encoder", str(run), "--out", str(out), "--n", "2"]) == 0
    assert out.stat().st_size > 1000
    # an exported encoder has no run data: the built-in sample is 1-channel digits
    enc = run / "encoder.safetensors"
    capsys.readouterr()
    assert main(["show", "attention", "--encoder", str(enc), "--out", str(out)]) == 2
    assert "the encoder takes 3 (the built-in sample; give the images with --data)" in (
        capsys.readouterr().err
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(2):
        (bad / f"{i}.png").write_bytes(b"not a png")
    argv = ["show", "attention", "--encoder", str(run), "--data", str(bad), "--out", str(out)]
    assert main(argv) == 2
    assert f"{bad}: none of the 2 images could be read" in capsys.readouterr().err


def test_ibot_collapse_warning_names_the_class_token_loss(caplog):
    """iBOT's total loss adds the patch term; the warning quotes the class-token loss it judges."""
    config = IBOTConfig(**SMALL, patch_out_dim=128, collapse_patience=1)
    method = build_method(config, create_vit("vit_tiny", 16, 4, 3))
    with caplog.at_level(logging.WARNING, logger="sslvit"):
        method.monitor(torch.full((4, 128), 1 / 128), math.log(128))
    assert any("the class-token loss (loss_cls) 4.8520" in r.message for r in caplog.records)
