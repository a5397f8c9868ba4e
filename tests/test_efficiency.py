"""Label efficiency: budgets and seeds, the summary's statistics, and `eval efficiency` end to
end on real digits (shared subsets, every table cell, the figure, resume)."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sslvit.cli import main
from sslvit.data import open_images
from sslvit.evaluate.efficiency import EfficiencyConfig, LabelEfficiency, budget_name, budget_seeds
from sslvit.evaluate.efficiency_report import display_rows, markdown_table, summarize
from sslvit.evaluate.finetune import FinetuneConfig, Finetuner

# budgets, seeds and settings


def test_budgets_read_as_one_canonical_name_and_all_labels_take_one_seed():
    assert [budget_name(b) for b in ("0.1", "10%", 0.1, "1%", "2.5%")] == [
        "10%", "10%", "10%", "1%", "2.5%"
    ]  # fmt: skip
    assert [budget_name(b) for b in ("100%", 1.0, None, "5", 5)] == ["100%"] * 3 + ["5"] * 2
    assert budget_seeds("10%", 3) == [0, 1, 2] and budget_seeds("5", 2) == [0, 1]
    assert budget_seeds("100%", 3) == [0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"budgets": ("1%", "ten")}, "label spec 'ten'"),
        ({"budgets": ()}, "--fractions"),
        ({"n_seeds": 0}, "--seeds 0"),
        ({"protocols": ("linear", "svm")}, "--protocols linear,svm"),
        ({"finetune": FinetuneConfig(epochs=0)}, "--epochs 0"),
    ],
)
def test_bad_settings_fail_when_the_config_is_made(fields, message):
    with pytest.raises(ValueError, match=message):
        EfficiencyConfig(**fields)


# the summary


def _result(protocol, encoder, labels, seed, top1, n_train):
    return dict(
        protocol=protocol, encoder=encoder, labels=labels, seed=seed, top1=top1,
        n_train=n_train, share=100 * n_train / 400,
    )  # fmt: skip


def test_summary_takes_mean_sample_std_and_margin_per_protocol_and_budget():
    results = [
        _result("linear", "pretrained", "10%", 0, 80.0, 40),
        _result("linear", "pretrained", "10%", 1, 82.0, 40),
        _result("linear", "pretrained", "10%", 2, 87.0, 40),
        _result("linear", "scratch", "10%", 0, 70.0, 40),
        _result("linear", "scratch", "10%", 1, 74.0, 40),
        _result("linear", "pretrained", "100%", 0, 90.0, 400),
        _result("linear", "scratch", "100%", 0, 85.5, 400),
        _result("finetune", "pretrained", "10%", 0, 60.0, 40),
    ]
    ten, full, ft_ten, ft_full = summarize(results, ["linear", "finetune"], ["10%", "100%"])

    assert ten["pretrained"] == pytest.approx(83.0)
    assert ten["pretrained_std"] == pytest.approx(math.sqrt((9 + 1 + 16) / 2))  # n - 1
    assert (ten["scratch"], ten["scratch_std"]) == (pytest.approx(72.0), pytest.approx(8**0.5))
    assert ten["margin"] == pytest.approx(11.0)
    assert (ten["n_train"], ten["share"], ten["pretrained_seeds"]) == (40, 10.0, 3)
    assert full["pretrained_std"] is None and full["margin"] == pytest.approx(4.5)
    assert ft_ten["scratch"] is None and ft_ten["margin"] is None
    assert ft_full["pretrained"] is None and ft_full["n_train"] is None

    shown = display_rows([ten, full, ft_ten])
    assert shown[0]["pretrained"] == "83.00 ± 3.61" and shown[0]["margin"] == "+11.00"
    assert shown[1]["scratch"] == "85.50" and shown[1]["seeds"] == 1
    assert (shown[2]["scratch"], shown[2]["margin"]) == ("-", "-")
    lines = markdown_table(shown).splitlines()
    assert lines[0] == "| protocol | labels | n_train | seeds | pretrained | scratch | margin |"
    assert lines[3] == "| linear | 100% | 400 | 1 | 90.00 | 85.50 | +4.50 |"
    assert lines[4] == "| finetune | 10% | 40 | 1 | 60.00 | - | - |"


# end to end on 120 real digits


@pytest.fixture(scope="module")
def pretrained(digits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("eff") / "mae"
    args = [
        "pretrain", "--data", str(digits_folder), "--out", str(out), "--model", "vit_tiny",
        "--img-size", "16", "--patch-size", "8", "--epochs", "2", "--batch-size", "20",
        "--workers", "0", "--device", "cpu", "--precision", "fp32",
        "--set", "method.decoder_embed_dim=32", "--set", "method.decoder_depth=1",
        "--set", "optim.warmup_epochs=0.5",
    ]  # fmt: skip
    assert main(args) == 0
    return out


def _efficiency_args(pretrained, digits_folder, out):
    return [
        "eval", "efficiency", "--encoder", str(pretrained), "--data", str(digits_folder),
        "--out", str(out), "--fractions", "10%,100%", "--seeds", "2", "--epochs", "2",
        "--lr", "5e-3", "--no-hflip", "--workers", "0", "--device", "cpu", "--precision", "fp32",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def study(pretrained, digits_folder, tmp_path_factory):
    """One `eval efficiency` run: 2 protocols x 2 budgets x (2, 1) seeds x 2 encoders."""
    out = tmp_path_factory.mktemp("study")
    assert main(_efficiency_args(pretrained, digits_folder, out)) == 0
    return out


def _saved(out) -> dict:
    return json.loads((out / "eval" / "efficiency.json").read_text())


def test_every_cell_of_the_table_is_filled_from_its_results(study):
    saved = _saved(study)
    results, summary = saved["results"], saved["summary"]
    assert len(results) == 2 * (2 + 1) * 2
    assert [(r["protocol"], r["labels"]) for r in summary] == [
        (p, b) for p in ("linear", "finetune") for b in ("10%", "100%")
    ]
    for row in summary:
        assert row["pretrained"] is not None and row["scratch"] is not None, row
        for encoder in ("pretrained", "scratch"):
            top1 = [
                r["top1"]
                for r in results
                if (r["protocol"], r["labels"], r["encoder"])
                == (row["protocol"], row["labels"], encoder)
            ]
            assert len(top1) == row[f"{encoder}_seeds"] == (1 if row["labels"] == "100%" else 2)
            assert row[encoder] == pytest.approx(np.mean(top1))
            if len(top1) > 1:
                assert row[f"{encoder}_std"] == pytest.approx(np.std(top1, ddof=1))
            assert all(0.0 <= t <= 100.0 for t in top1)
        assert row["margin"] == pytest.approx(row["pretrained"] - row["scratch"])

    table = (study / "eval" / "efficiency.md").read_text().splitlines()
    rows = [line.split(" | ")[:2] for line in table if line.startswith("| ")][1:]
    assert rows == [
        ["| linear", "10%"],
        ["| linear", "100%"],
        ["| finetune", "10%"],
        ["| finetune", "100%"],
    ]
    with Image.open(study / "figures" / "efficiency.png") as figure:
        assert figure.size[0] > 300 and figure.size[1] > 200


def test_one_subset_per_budget_and_seed_for_every_protocol_and_encoder(study, digits_folder):
    results = _saved(study)["results"]
    by_draw = {}
    for r in results:
        by_draw.setdefault((r["labels"], r["seed"]), set()).add((r["subset"], r["n_train"]))
    assert set(by_draw) == {("10%", 0), ("10%", 1), ("100%", 0)}
    for draw, subsets in by_draw.items():
        assert len(subsets) == 1, draw  # linear and finetune, pretrained and scratch alike
    assert by_draw[("10%", 0)] != by_draw[("10%", 1)]  # seeds draw different subsets
    n_pool = len(open_images(digits_folder, labeled=True)) - 24  # 0.2 held out for testing
    assert {n for _, n in by_draw[("100%", 0)]} == {n_pool}
    assert {n for _, n in by_draw[("10%", 0)]} == {10}  # one of each class's 9 or 10

    runs = sorted((study / "eval" / "efficiency").iterdir())
    assert len(runs) == 6 and all((run / "eval" / "finetune.json").is_file() for run in runs)
    assert not any((run / "checkpoints").exists() for run in runs)
    scratch = [r for r in results if r["protocol"] == "finetune" and r["encoder"] == "scratch"]
    assert {(r["layer_decay"], tuple(r["img_size"])) for r in scratch} == {(1.0, (16, 16))}


def test_a_rerun_keeps_finished_results_and_runs_only_the_missing(
    study, pretrained, digits_folder, capsys, caplog
):
    saved = _saved(study)
    kept = saved["results"]
    gone = [kept.pop(3), kept.pop(-1)]  # a linear and a fine-tune result, as if interrupted
    assert (gone[0]["protocol"], gone[1]["protocol"]) == ("linear", "finetune")
    (study / "eval" / "efficiency.json").write_text(json.dumps({**saved, "results": kept}))

    with caplog.at_level("INFO", logger="sslvit"):
        assert main(_efficiency_args(pretrained, digits_folder, study)) == 0
    assert "10 of 12 results already in" in caplog.text
    rerun = _saved(study)["results"]
    assert rerun[: len(kept)] == kept  # untouched, in their order
    for again, before in zip(rerun[len(kept) :], gone, strict=True):
        assert again["subset"] == before["subset"]
        assert again["top1"] == pytest.approx(before["top1"])  # same seed, same numbers
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
    assert summary == _saved(study)["summary"]

    args = _efficiency_args(pretrained, digits_folder, study)
    assert main([*args, "--epochs", "3"]) == 2  # the last --epochs counts
    err = capsys.readouterr().err.strip()
    assert "finetune.epochs 2 -> 3" in err and len(err.splitlines()) == 1, err
    # probes alone do not depend on the fine-tuning recipe, and leave the recorded one alone
    assert main([*args, "--epochs", "3", "--protocols", "linear"]) == 0
    assert _saved(study)["settings"]["finetune"]["epochs"] == 2


def test_probe_options_and_labels_are_refused_where_they_do_not_apply(pretrained, capsys):
    assert main(["eval", "linear", "--encoder", str(pretrained), "--epochs", "3"]) == 2
    assert "--epochs: only for `sslvit eval efficiency`" in capsys.readouterr().err
    args = ["eval", "efficiency", "--encoder", str(pretrained), "--labels", "10%"]
    assert main(args) == 2
    assert "--fractions" in capsys.readouterr().err


def test_the_random_probe_encoder_is_where_the_scratch_fine_tune_starts(pretrained, digits_folder):
    images = open_images(digits_folder, labeled=True)
    config = EfficiencyConfig(protocols=("linear",), device="cpu")
    study = LabelEfficiency(pretrained, images, images, pretrained / "unused", config)
    info = study.info
    finetune = dataclasses.replace(
        config.finetune, model=info.model, patch_size=info.patch_size, img_size=info.img_size
    )
    finetune.seed = 1
    start = Finetuner(None, images, images, pretrained / "unused", finetune).model.encoder
    probe = study.random_encoder(1).state_dict()
    assert probe.keys() == start.state_dict().keys()
    for name, weight in start.state_dict().items():
        assert torch.equal(weight, probe[name]), name
    assert not torch.equal(
        probe["blocks.0.attn.qkv.weight"],
        study.random_encoder(2).state_dict()["blocks.0.attn.qkv.weight"],
    )
