"""SimCLR, MoCo v3, BYOL and SimSiam: losses, EMA teacher, heads, collapse monitor, training."""

import json
import logging
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from sslvit.methods import build_method, method_config_class
from sslvit.methods.common import CollapseMonitor, embedding_std
from sslvit.methods.mocov3 import info_nce
from sslvit.methods.simclr import nt_xent
from sslvit.methods.teacher import EMATeacher, cosine_momentum
from sslvit.models import create_vit
from sslvit.models.heads import MLPHead
from sslvit.train.loop import Trainer

METHODS = ["simclr", "mocov3", "byol", "simsiam"]


def reference_nt_xent(z1, z2, t):
    """NT-Xent written out anchor by anchor, as in the SimCLR paper's algorithm box."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = torch.stack([z[i] @ z[k] / t for k in range(2 * n) if k != i])
        pos = z[i] @ z[j] / t
        total = total - (pos - torch.logsumexp(sims, 0))
    return total / (2 * n)


def test_nt_xent_matches_the_written_out_formula():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    assert nt_xent(z1, z2, 0.1).item() == pytest.approx(reference_nt_xent(z1, z2, 0.1).item())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank, world, port, z1, z2, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    n = z1.shape[0] // world
    a = z1[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    b = z2[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    loss = nt_xent(a, b, 0.2)
    loss.backward()
    # DDP averages gradients over processes: do the same by hand
    grads = torch.cat([a.grad, b.grad])
    moco = info_nce(a, b.detach(), 0.2)
    out[rank] = (loss.detach(), grads / world, moco.detach())
    torch.distributed.destroy_process_group()


def _run_dist(z1, z2):
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_dist_worker, args=(2, _free_port(), z1, z2, out), nprocs=2, join=True)
    return dict(out)


@pytest.mark.slow
def test_distributed_losses_equal_one_process_on_the_whole_batch():
    torch.manual_seed(1)
    z1, z2 = torch.randn(8, 6), torch.randn(8, 6)
    out = _run_dist(z1, z2)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    single = nt_xent(a, b, 0.2)
    single.backward()
    mean_loss = (out[0][0] + out[1][0]) / 2
    assert mean_loss.item() == pytest.approx(single.item(), abs=1e-6)
    for rank in (0, 1):
        got = out[rank][1]
        want = torch.cat([a.grad[rank * 4 : rank * 4 + 4], b.grad[rank * 4 : rank * 4 + 4]])
        assert torch.allclose(got, want, atol=1e-6), rank
    moco_single = info_nce(z1, z2, 0.2)
    assert ((out[0][2] + out[1][2]) / 2).item() == pytest.approx(moco_single.item(), abs=1e-6)


def test_ema_teacher_is_an_independent_frozen_copy():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    teacher = EMATeacher(student)
    s_ptrs = {p.data_ptr() for p in student.parameters()}
    s_ptrs |= {b.data_ptr() for b in student.buffers()}
    t_ptrs = {p.data_ptr() for p in teacher.parameters()} | {
        b.data_ptr() for b in teacher.buffers()
    }
    assert not s_ptrs & t_ptrs
    assert not any(p.requires_grad for p in teacher.parameters())
    old = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    teacher.update(student, 0.9)
    for t, o, s in zip(teacher.parameters(), old, student.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * o + 0.1 * s)
    before = [p.clone() for p in teacher.parameters()]
    teacher.update(student, 1.0)  # momentum 1: the teacher stays where it is
    assert all(torch.equal(t, b) for t, b in zip(teacher.parameters(), before, strict=True))


def test_cosine_momentum_rises_from_base_to_one():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)


def test_heads_run_one_image_in_eval_mode():
    head = MLPHead(16, 32, 8, layers=3, last_norm="bn_no_affine")
    head.train()
    head(torch.randn(4, 16))
    head.eval()
    assert head(torch.randn(1, 16)).shape == (1, 8)
    with pytest.raises(ValueError):
        head.train()
        head(torch.randn(1, 16))


@pytest.mark.parametrize(
    "method,field,value",
    [
        ("simclr", "crop_scale", (1.0, 0.4)),
        ("byol", "blur_prob", (1.5, 0.1)),
        ("mocov3", "hue", 0.7),
        ("simsiam", "pool", "max"),
        ("mae", "mask_ratio", 1.0),
        ("mae", "decoder_depth", 0),
        ("maskfeat", "mask_ratio", 0.0),
        ("maskfeat", "hog_bins", 0),
        ("maskfeat", "mask_aspect", (3.0, 0.3)),
        ("maskfeat", "cell_size", 3),
        ("maskfeat", "min_block", 17),
    ],
)
def test_method_settings_are_checked_before_any_work(method, field, value):
    config = method_config_class(method)(**{field: value})
    with pytest.raises(ValueError, match=f"method.{field} = "):
        build_method(config, create_vit("vit_tiny", 16, 4, 3))


def test_maskfeat_read_from_its_untrained_class_token_says_so(caplog):
    for pool, warned in (("cls", True), ("mean", False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sslvit"):
            config = method_config_class("maskfeat")(pool=pool)
            build_method(config, create_vit("vit_tiny", 16, 4, 3))
        assert any("never reaches" in r.message for r in caplog.records) == warned


@pytest.mark.parametrize(
    "name", ["mae", "mae_tiny32", "simclr", "mocov3", "byol", "simsiam", "dino", "ibot", "maskfeat"]
)
def test_the_recipes_pass_their_own_checks(name):
    from importlib import resources

    from sslvit.train.config import load_config

    load_config(resources.files("sslvit") / "recipes" / f"{name}.yaml").method.check()


def test_a_batch_of_one_is_a_clear_error():
    method = build_method(method_config_class("simsiam")(), create_vit("vit_tiny", 16, 4, 3))
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="at least 2 images"):
        method([x, x])


def test_embedding_std_is_one_over_sqrt_d_when_spread_and_zero_when_collapsed():
    torch.manual_seed(0)
    assert embedding_std(torch.randn(4096, 64)) == pytest.approx(1 / math.sqrt(64), rel=0.05)
    point = torch.randn(1, 64).expand(256, 64) + 1e-4 * torch.randn(256, 64)
    assert embedding_std(point) < 0.01 / math.sqrt(64)


def test_collapse_monitor_warns_once_when_the_window_mean_is_collapsed(caplog):
    monitor = CollapseMonitor("test", threshold=0.1, patience=3)
    spread, collapsed = torch.eye(16).repeat(2, 1), torch.ones(32, 16)
    with caplog.at_level(logging.WARNING, logger="sslvit"):
        for z in [collapsed, collapsed, spread]:  # one healthy step keeps the mean up
            monitor(z)
        assert not monitor.collapsed
        for _ in range(6):
            monitor(collapsed)
    assert monitor.collapsed and sum("collapse" in r.message for r in caplog.records) == 1


def test_heads_expose_their_output_before_the_last_batchnorm():
    head = MLPHead(8, 16, 4, 2, last_norm="bn_no_affine").eval()
    x = torch.randn(5, 8)
    out, before = head.forward_pre_norm(x)
    linear_part = torch.nn.Sequential(*list(head)[:-1])
    assert torch.allclose(out, head(x)) and torch.allclose(before, linear_part(x))
    plain = MLPHead(8, 16, 4, 2).eval()
    out, before = plain.forward_pre_norm(x)
    assert out is before and torch.allclose(out, plain(x))


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_simsiam_without_stop_gradient_triggers_the_collapse_warning(
    stop_gradient, digits_folder, tmp_path
):
    """The paper's collapse: without the stop-gradient the predictor output shrinks to a point
    within a hundred steps; with it the same run keeps its spread and stays silent."""
    config = _config(
        digits_folder,
        tmp_path,
        "simsiam",
        steps=100,
        stop_gradient=stop_gradient,
        **SMALL_HEADS["simsiam"],
    )
    config.optim.base_lr = 3e-3 * 256 / 20  # a peak learning rate of 3e-3
    config.run.log_every = 10
    trainer = Trainer(config)
    trainer.train()
    assert trainer.method.monitor.collapsed is (not stop_gradient)
    # the warning is in metrics.jsonl too, from the step it fired, not only in the log
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    flags = [r["collapsed"] for r in records if r["kind"] == "train"]
    assert len(flags) == 10 and flags[-1] == int(not stop_gradient) and flags[0] == 0


def test_mocov3_freezes_the_patch_projection_and_moves_its_teacher():
    torch.manual_seed(0)
    config = method_config_class("mocov3")(proj_hidden_dim=64, pred_hidden_dim=64, proj_dim=32)
    method = build_method(config, create_vit("vit_tiny", 16, 4, 3))
    proj = method.encoder.patch_embed.proj.weight.clone()
    teacher_block = method.teacher.net["encoder"].blocks[0].mlp.fc1.weight.clone()
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(8, 3, 16, 16)
    loss, logs = method([x, x.flip(-1)])
    loss.backward()
    opt.step()
    method.after_step(0, 10)
    assert torch.equal(method.encoder.patch_embed.proj.weight, proj)
    assert not torch.equal(method.teacher.net["encoder"].blocks[0].mlp.fc1.weight, teacher_block)
    assert method.momentum == pytest.approx(cosine_momentum(1, 10, 0.99))
    assert not any(p.requires_grad for p in method.teacher.parameters())


@pytest.mark.parametrize("method", ["simclr", "byol", "simsiam"])
def test_every_two_view_method_can_freeze_the_patch_projection(method):
    """MoCo v3's stability measure is a shared option: off by default, honoured by all."""
    small = {**SMALL_HEADS[method]}
    assert method_config_class(method)(**small).freeze_patch_embed is False
    method_ = build_method(
        method_config_class(method)(**small, freeze_patch_embed=True),
        create_vit("vit_tiny", 16, 4, 3),
    )
    frozen = [n for n, p in method_.named_parameters() if not p.requires_grad]
    assert [n for n in frozen if not n.startswith("teacher.")] == [
        "encoder.patch_embed.proj.weight",
        "encoder.patch_embed.proj.bias",
    ]


def _config(data, out, method, steps=6, **method_fields):
    from tests.test_train import tiny_config

    config = tiny_config(data, out)
    config.method = method_config_class(method)(**method_fields)
    config.data.img_size = 16
    config.optim.epochs = steps / 6  # 120 digits / batch 20 = 6 steps per epoch
    config.optim.warmup_epochs = 0.2
    return config


SMALL_HEADS = {
    "simclr": {"proj_hidden_dim": 64, "proj_dim": 32},
    "mocov3": {"proj_hidden_dim": 64, "pred_hidden_dim": 64, "proj_dim": 32},
    "byol": {"proj_hidden_dim": 64, "pred_hidden_dim": 64, "proj_dim": 32},
    "simsiam": {"proj_dim": 64, "pred_hidden_dim": 16},
}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_resumes_exactly_and_exports(method, digits_folder, tmp_path):
    heads = SMALL_HEADS[method]
    whole = Trainer(_config(digits_folder, tmp_path / "whole", method, **heads))
    whole.train()
    parted = _config(digits_folder, tmp_path / "parted", method, **heads)
    parted.run.stop_at_step = 3
    Trainer(parted).train()
    parted.run.stop_at_step = 0
    resumed = Trainer(parted, resume=True)
    resumed.train()
    a, b = whole.method.state_dict(), resumed.method.state_dict()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
    assert (tmp_path / "parted" / "encoder.safetensors").is_file()
    from tests.test_train import step_losses

    losses = step_losses(tmp_path / "whole")
    assert all(math.isfinite(v) for v in losses.values()) and len(losses) == 6


@pytest.mark.parametrize("fix_pred_lr", [True, False])
def test_simsiam_predictor_rate_stays_at_its_peak_after_warm_up(
    fix_pred_lr, digits_folder, tmp_path
):
    heads = {**SMALL_HEADS["simsiam"], "fix_pred_lr": fix_pred_lr}
    trainer = Trainer(_config(digits_folder, tmp_path / "run", "simsiam", steps=6, **heads))
    trainer.train()  # ends on the last step's rates: the cosine is near its end
    predictor = {id(p) for p in trainer.method.predictor.parameters()}
    rates = {True: set(), False: set()}
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            rates[id(param) in predictor].add(group["lr"])
    (others,) = rates[False]
    assert others < trainer.peak_lr / 2
    assert rates[True] == ({trainer.peak_lr} if fix_pred_lr else {others})
    # every trainable parameter is in exactly one group
    grouped = [id(p) for g in trainer.optimizer.param_groups for p in g["params"]]
    trainable = [id(p) for p in trainer.method.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)


def test_resuming_with_other_parameter_groups_is_a_clear_error(digits_folder, tmp_path):
    heads = SMALL_HEADS["simsiam"]
    config = _config(digits_folder, tmp_path / "run", "simsiam", fix_pred_lr=False, **heads)
    config.run.stop_at_step = 1
    Trainer(config).train()
    changed = _config(digits_folder, tmp_path / "run", "simsiam", fix_pred_lr=True, **heads)
    with pytest.raises(ValueError, match="optimiser state does not fit") as caught:
        Trainer(changed, resume=True)
    assert str(tmp_path / "run" / "checkpoints" / "last.pt") in str(caught.value)
