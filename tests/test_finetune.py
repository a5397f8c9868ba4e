"""Fine-tuning: layer-decay groups, few-label subsets, position-embedding resizing, mixing, and
the `finetune` command end to end on real digits."""

import json
import logging
import re
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslvit.cli import main
from sslvit.data import label_subset
from sslvit.evaluate.classifier import ViTClassifier, finetune_param_groups, load_classifier
from sslvit.evaluate.mixing import mix_batch, smooth_targets, soft_cross_entropy
from sslvit.models.vit import create_vit, patch_grid, resize_pos_embed
from sslvit.train.optim import set_learning_rate

# layer-wise learning-rate decay


@pytest.mark.parametrize("decay", [0.75, 0.5])
def test_each_block_trains_at_its_decayed_rate(decay):
    model = ViTClassifier(create_vit("vit_tiny", 16, 8, 1), n_classes=10, pool="cls")
    optimizer = torch.optim.AdamW(finetune_param_groups(model, 0.05, decay))
    lr, depth = 1e-3, len(model.encoder.blocks)
    set_learning_rate(optimizer, lr)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(group_of) == len(named)  # every parameter in exactly one group

    for name, param in named.items():
        group = group_of[id(param)]
        if name.startswith("encoder.blocks."):
            block = int(name.split(".")[2])
            expected = lr * decay ** (depth + 1 - (block + 1))
        elif name.startswith(("encoder.patch_embed", "encoder.pos_embed", "encoder.cls_token")):
            expected = lr * decay ** (depth + 1)
        else:
            assert name.startswith(("head.", "encoder.norm.")), name
            expected = lr
        assert group["lr"] == pytest.approx(expected, rel=1e-12), name
        no_decay = param.ndim == 1 or name in ("encoder.pos_embed", "encoder.cls_token")
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert group_of[id(named["head.weight"])]["lr"] == lr
    assert group_of[id(named["encoder.blocks.11.mlp.fc1.weight"])]["lr"] == lr * decay
    assert group_of[id(named["encoder.blocks.0.attn.qkv.weight"])]["lr"] == pytest.approx(
        lr * decay**12
    )


def test_head_reads_standardised_features_whatever_the_encoders_offset_and_scale():
    torch.manual_seed(0)
    encoder = create_vit("vit_tiny", (16, 16), 8, 1)
    with torch.no_grad():  # features of one large shared component and tiny differences
        encoder.norm.weight.mul_(0.1)
        encoder.norm.bias.add_(50.0)
    model = ViTClassifier(encoder, 3, "cls").train()
    seen = {}
    model.head.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    model(torch.randn(16, 1, 16, 16))
    assert seen["x"].mean(0).abs().max() < 0.05  # raw: about 50, differences of 0.1
    assert torch.allclose(seen["x"].std(0, unbiased=False), torch.ones(192), atol=0.05)
    model.eval()  # running statistics: one image at a time works
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 3)


def test_layer_decay_one_gives_every_parameter_the_same_rate():
    model = ViTClassifier(create_vit("vit_tiny", 16, 8, 3), n_classes=4, pool="mean")
    optimizer = torch.optim.AdamW(finetune_param_groups(model, 0.05, 1.0))
    set_learning_rate(optimizer, 2e-4)
    assert {g["lr"] for g in optimizer.param_groups} == {2e-4}


# few-label subsets


def test_label_subsets_are_stratified_and_seeded(caplog):
    labels = np.repeat(np.arange(3), [50, 20, 4])
    tenth = label_subset(labels, "10%", seed=0)
    assert Counter(labels[tenth].tolist()) == {0: 5, 1: 2, 2: 1}
    assert np.array_equal(label_subset(labels, 0.1, seed=0), tenth)
    assert not np.array_equal(label_subset(labels, "10%", seed=1), tenth)

    three = label_subset(labels, "3", seed=5)
    assert Counter(labels[three].tolist()) == {0: 3, 1: 3, 2: 3}
    assert np.array_equal(label_subset(labels, 3, seed=5), three)
    assert not np.array_equal(label_subset(labels, 3, seed=6), three)
    assert not caplog.records

    with caplog.at_level(logging.WARNING, logger="sslvit"):
        five = label_subset(labels, "5", seed=0, classes=["cat", "dog", "rare_bird"])
    assert Counter(labels[five].tolist()) == {0: 5, 1: 5, 2: 4}
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "'rare_bird' (4)" in warning and "cat" not in warning


# position embeddings at another input size


def _encoder_with_random_table(size):
    encoder = create_vit("vit_tiny", size, 4, 1)
    with torch.no_grad():
        encoder.pos_embed.copy_(torch.randn(encoder.pos_embed.shape, generator=_gen(0)))
    return encoder


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("size", [16, (16, 24), (24, 8)])
def test_resizing_to_the_original_size_keeps_the_table_exactly(size):
    encoder = _encoder_with_random_table(size)
    before = encoder.pos_embed.detach().clone()
    resize_pos_embed(encoder, size)
    assert torch.equal(encoder.pos_embed, before)


def test_resizing_to_a_size_the_patch_does_not_divide_names_the_patch_size():
    with pytest.raises(ValueError, match="30x30 is not divisible by the encoder's patch size 4"):
        resize_pos_embed(create_vit("vit_tiny", 32, 4, 1), 30)


@pytest.mark.parametrize(
    ("old", "new"),
    [(16, 32), (16, 8), ((16, 24), (32, 40)), ((16, 24), (8, 12)), ((24, 16), (12, 20))],
    ids=["square-up", "square-down", "nonsquare-up", "nonsquare-down", "tall-to-wide"],
)
def test_resizing_keeps_rows_as_rows_and_the_class_position(old, new):
    encoder = create_vit("vit_tiny", old, 4, 1)
    rows, cols = patch_grid(encoder)
    # channel 0 counts rows, channel 1 columns: a transposed grid would mix them up
    ramp = torch.zeros(1, 1 + rows * cols, encoder.embed_dim)
    ramp[0, 1:, 0] = torch.arange(rows).repeat_interleave(cols).float()
    ramp[0, 1:, 1] = torch.arange(cols).repeat(rows).float()
    ramp[0, 0] = torch.randn(encoder.embed_dim, generator=_gen(1))
    with torch.no_grad():
        encoder.pos_embed.copy_(ramp)
    resize_pos_embed(encoder, new)

    new_rows, new_cols = (new, new) if isinstance(new, int) else new
    new_rows, new_cols = new_rows // 4, new_cols // 4
    assert patch_grid(encoder) == (new_rows, new_cols)
    table = encoder.pos_embed.detach()
    assert table.shape == (1, 1 + new_rows * new_cols, encoder.embed_dim)
    assert torch.equal(table[0, 0], ramp[0, 0])
    grid = table[0, 1:].reshape(new_rows, new_cols, -1)
    assert torch.allclose(grid[..., 0], grid[:, :1, 0].expand(-1, new_cols), atol=1e-5)
    assert torch.allclose(grid[..., 1], grid[:1, :, 1].expand(new_rows, -1), atol=1e-5)
    assert (grid[1:, 0, 0] > grid[:-1, 0, 0]).all() and (grid[0, 1:, 1] > grid[0, :-1, 1]).all()
    # the resized encoder takes images of the new size
    height, width = (new, new) if isinstance(new, int) else new
    assert encoder.forward_features(torch.zeros(2, 1, height, width)).shape[1] == table.shape[1]


# label smoothing, mixup and cutmix


def test_smoothed_targets_give_torch_smoothed_cross_entropy():
    logits, labels = torch.randn(6, 5, generator=_gen(2)), torch.tensor([0, 1, 2, 3, 4, 0])
    targets = smooth_targets(labels, 5, 0.1)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert targets[0, 0] == pytest.approx(0.92) and targets[0, 1] == pytest.approx(0.02)
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert soft_cross_entropy(logits, targets) == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_sum_to_one_and_match_the_pixels(mixup, cutmix):
    rng = np.random.default_rng(0)
    n, height, width = 8, 12, 20  # non-square
    # image i is the constant i + 1, so every pixel tells whose it is
    images = torch.arange(1, n + 1).float().view(n, 1, 1, 1).expand(n, 2, height, width)
    targets = smooth_targets(torch.arange(n) % 4, 4, 0.1)
    for _ in range(20):
        mixed, mixed_targets, lam = mix_batch(images, targets, mixup, cutmix, rng)
        assert 0.0 <= lam <= 1.0
        assert torch.allclose(mixed_targets.sum(1), torch.ones(n))
        assert torch.allclose(mixed_targets, lam * targets + (1 - lam) * targets.flip(0))
        own = (mixed == images).float().mean(dim=(1, 2, 3))
        blended = torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-5)
        # cutmix: the share of an image's own pixels is its target weight
        assert blended or torch.allclose(own, torch.full((n,), lam), atol=1e-6)
    assert mix_batch(images, targets, 0.0, 0.0, rng)[2] == 1.0


# the command end to end, on 120 real digits

# Short and easy: 10 epochs, crops of at least 80 % of a digit, no mirrored digits, and a
# learning rate for a batch of 10 that moves within 90 steps.
FAST = [
    "--split", "0.25", "--epochs", "10", "--batch-size", "10", "--lr", "5e-3", "--drop-path", "0",
    "--min-crop", "0.8", "--no-hflip", "--workers", "0", "--device", "cpu", "--precision", "fp32",
]  # fmt: skip
RUN_FILES = (
    "finetune.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt",
    "confusion.json", "figures/confusion.png", "eval/finetune.json",
)  # fmt: skip


def _check_run(out, result):
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(10)) and "top1" in epochs[-1]
    assert epochs[-1]["top1"] == pytest.approx(result["top1"], abs=1e-4)  # JSON: 6 digits
    confusion = json.loads((out / "confusion.json").read_text())
    matrix = np.array(confusion["matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == result["n_test"] == 30
    assert np.trace(matrix) / 30 * 100 == pytest.approx(result["top1"], abs=1e-4)
    assert confusion["per_class"] == result["per_class"]
    assert max(r["top1"] for r in epochs) == pytest.approx(result["best_top1"], abs=1e-4)
    assert json.loads((out / "eval" / "finetune.json").read_text()) == {
        k: v for k, v in result.items() if k != "data"
    }


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_finetune_from_scratch(digits_folder, tmp_path, capsys):
    out = tmp_path / "scratch"
    args = ["finetune", "--encoder", "none", "--data", str(digits_folder), "--out", str(out)]
    assert main([*args, "--img-size", "16", "--patch-size", "8", *FAST]) == 0
    result = _last_json(capsys)
    _check_run(out, result)
    assert (result["n_train"], result["layer_decay"], result["img_size"]) == (90, 1.0, [16, 16])
    # chance is 10 %; this run measured 50 % on the 30 test digits
    assert result["top1"] >= 25.0, result

    assert main([*args, "--img-size", "16", "--patch-size", "8", *FAST]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.fixture(scope="module")
def pretrained(digits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "mae"
    args = [
        "pretrain", "--data", str(digits_folder), "--out", str(out), "--model", "vit_tiny",
        "--img-size", "16", "--patch-size", "8", "--epochs", "2", "--batch-size", "20",
        "--workers", "0", "--device", "cpu", "--precision", "fp32",
        "--set", "method.decoder_embed_dim=32", "--set", "method.decoder_depth=1",
        "--set", "optim.warmup_epochs=0.5",
    ]  # fmt: skip
    assert main(args) == 0
    return out


def test_finetune_a_pretrained_encoder_at_another_size(pretrained, digits_folder, tmp_path, capsys):
    out = tmp_path / "ft"
    args = ["finetune", "--encoder", str(pretrained), "--data", str(digits_folder)]
    # pretrained on 16 x 16 px (2 x 2 patches), fine-tuned on 16 x 24 px (2 x 3 patches)
    assert main([*args, "--out", str(out), "--img-size", "16x24", "--labels", "6", *FAST]) == 0
    result = _last_json(capsys)
    _check_run(out, result)
    assert (result["n_train"], result["layer_decay"], result["labels"]) == (60, 0.75, "6")
    assert result["img_size"] == [16, 24] and result["patch_size"] == 8
    assert result["top1"] >= 25.0, result  # chance is 10 %; measured 53 %

    model, info, classes = load_classifier(out / "checkpoints" / "last.pt")
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert info.img_size == (16, 24) and info.patch_size == 8 and classes == list("0123456789")
    assert torch.equal(model.encoder.pos_embed, saved["model"]["encoder.pos_embed"])
    assert model(torch.zeros(3, 1, 16, 24)).shape == (3, 10)


def test_min_steps_adds_whole_epochs_and_eval_every_0_tests_once(digits_folder, tmp_path, capsys):
    out = tmp_path / "few"
    args = ["finetune", "--encoder", "none", "--data", str(digits_folder), "--out", str(out)]
    # 2 labels per class: 20 images, 2 steps of 10 per epoch; 7 steps need 4 epochs
    few = ["--labels", "2", "--min-steps", "7", "--eval-every", "0"]
    assert main([*args, "--img-size", "16", "--patch-size", "8", *FAST, *few, "--epochs", "1"]) == 0
    result = _last_json(capsys)
    assert (result["n_train"], result["epochs"]) == (20, 4)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in epochs] == [2, 4, 6, 8]
    assert ["top1" in r for r in epochs] == [False, False, False, True]
    assert json.loads((out / "finetune.json").read_text())["total_steps"] == 8


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--img-size", "20", "--patch-size", "8"], "not divisible"),
        (["--min-crop", "1.5"], "--min-crop 1.5"),
        (["--layer-decay", "0"], "--layer-decay 0"),
        (["--min-steps", "-1"], "--min-steps -1"),
    ],
)
def test_bad_finetune_options_are_one_clear_line(digits_folder, tmp_path, capsys, extra, message):
    args = ["finetune", "--encoder", "none", "--data", str(digits_folder), "--out", str(tmp_path)]
    assert main([*args, "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("labels", ["ten", "0", "0%", "150%", "-3"])
def test_a_bad_label_budget_names_the_option_before_anything_runs(tmp_path, capsys, labels):
    with pytest.raises(SystemExit) as stop:
        main(["finetune", "--encoder", "none", "--data", str(tmp_path), "--labels", labels])
    assert stop.value.code == 2
    spec = f"label spec '?{re.escape(labels)}'?: "
    assert re.search(f"argument --labels: {spec}", capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["eval", "efficiency", "--encoder", "none", "--data", str(tmp_path),
              "--fractions", f"1%,{labels}"])  # fmt: skip
    assert re.search(f"argument --fractions: {spec}", capsys.readouterr().err)


def test_short_runs_log_every_step_or_about_fifty_records():
    from sslvit.train.logger import log_interval

    assert [log_interval(20, n) for n in (8, 100, 1000, 5000)] == [1, 2, 20, 20]
