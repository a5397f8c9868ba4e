"""Each command end to end on a tiny folder of real digits, and the errors users will meet."""

import json
import logging
import os
import signal

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from sslvit.cli import main

TINY = [
    "--model", "vit_tiny", "--img-size", "16", "--patch-size", "4", "--epochs", "1",
    "--batch-size", "20", "--workers", "0", "--device", "cpu", "--precision", "fp32",
    "--set", "method.decoder_embed_dim=32", "--set", "method.decoder_depth=1",
    "--set", "optim.warmup_epochs=0.5",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(digits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["pretrain", "--data", str(digits_folder), "--out", str(out), *TINY]) == 0
    return out


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_pretrain_writes_the_run_folder(run_dir):
    for name in ("config.yaml", "metrics.jsonl", "encoder.safetensors", "figures/recon.png"):
        assert (run_dir / name).is_file(), name


@pytest.mark.parametrize("kind", ["knn", "linear"])
def test_eval_prints_table_then_json(run_dir, digits_folder, capsys, kind):
    args = ["eval", kind, "--encoder", str(run_dir), "--data", str(digits_folder)]
    assert main([*args, "--split", "0.25", "--labels", "50%", "--device", "cpu"]) == 0
    result = last_json(capsys)
    assert result["kind"] == kind and result["n_test"] == 30 and result["n_train"] == 50
    assert 0.0 <= result["top1"] <= 100.0
    saved = json.loads((run_dir / "eval" / f"{kind}-50pct-seed0.json").read_text())
    assert saved["top1"] == result["top1"] and saved["test_split"] == 0.25


def test_show_recon(run_dir, digits_folder, tmp_path, capsys):
    out = tmp_path / "recon.png"
    assert main(["show", "recon", "--encoder", str(run_dir), "--data", str(digits_folder),
                 "--out", str(out), "--n", "3"]) == 0  # fmt: skip
    assert out.stat().st_size > 1000
    # without an extension the PNG gets one, and the path printed is the file written
    capsys.readouterr()
    args = ["show", "recon", "--encoder", str(run_dir), "--data", str(digits_folder), "--n", "2"]
    assert main([*args, "--out", str(tmp_path / "pic")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "pic.png")
    assert (tmp_path / "pic.png").is_file()
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a folder; give a file name" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "pic.xyz")]) == 2
    assert "pic.xyz: cannot write a .xyz picture; use" in capsys.readouterr().err
    assert main([*args[:-1], "0", "--out", str(out)]) == 2
    assert "--n 0: the number of images must be at least 1" in capsys.readouterr().err


def test_export_loads_into_timm_strictly(run_dir, tmp_path):
    out = tmp_path / "enc.safetensors"
    assert main(["export", "--encoder", str(run_dir), "--out", str(out)]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    model = timm.create_model(
        info["timm_name"], img_size=info["img_size"], patch_size=info["patch_size"],
        in_chans=info["in_chans"], num_classes=0,
    )  # fmt: skip
    model.load_state_dict(load_file(str(out)), strict=True)
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 192)


def test_resume_of_a_finished_run_changes_nothing(run_dir):
    kept = ["checkpoints/last.pt", "config.yaml", "env.json", "metrics.jsonl"]
    before = {name: (run_dir / name).read_bytes() for name in kept}
    tb_files = sorted((run_dir / "tb").iterdir())
    assert main(["pretrain", "--out", str(run_dir), "--resume", "--set", "run.device=cpu"]) == 0
    assert {name: (run_dir / name).read_bytes() for name in kept} == before
    assert sorted((run_dir / "tb").iterdir()) == tb_files  # no new TensorBoard file


def test_resume_continues_the_folder_given_even_when_copied(
    run_dir, digits_folder, tmp_path, capsys
):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "figures" / "recon.png").unlink()
    original = (run_dir / "figures" / "recon.png").stat().st_mtime_ns
    assert main(["pretrain", "--out", str(copy), "--resume", "--device", "cpu"]) == 0
    assert (copy / "figures" / "recon.png").is_file()  # written in the copy, not the original
    assert (run_dir / "figures" / "recon.png").stat().st_mtime_ns == original
    assert main(["pretrain", "--out", str(copy), "--resume", "--epochs", "5"]) == 2
    assert "--epochs" in capsys.readouterr().err
    # a run whose images have gone says where the path came from and how to fix it
    config = (copy / "config.yaml").read_text()
    (copy / "config.yaml").write_text(config.replace(str(digits_folder), str(tmp_path / "gone")))
    assert main(["pretrain", "--out", str(copy), "--resume", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "gone" in err and "config.yaml" in err and "Traceback" not in err
    assert "--set data.path=" in err
    assert main(["pretrain", "--out", str(copy), "--resume", "--set", "run.stop_at_stp=1"]) == 2
    assert "unknown field(s) stop_at_stp" in capsys.readouterr().err
    # a method setting is the run's own (checked against the run's method, not the default's)
    for item in ("method.out_dim=9", "run.seed=5"):
        assert main(["pretrain", "--out", str(copy), "--resume", "--set", item]) == 2
        assert f"--set {item}: only run.* (not run.seed or run.out)" in capsys.readouterr().err
    # ... and the fix it names works
    moved = ["--set", f"data.path={digits_folder}"]
    assert main(["pretrain", "--out", str(copy), "--resume", "--device", "cpu", *moved]) == 0


def test_a_relative_data_path_is_saved_absolute(digits_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(digits_folder.parent)
    out = tmp_path / "rel"
    args = ["pretrain", "--data", digits_folder.name, "--out", str(out), "--device", "cpu"]
    small = ["--img-size", "16", "--patch-size", "4", "--epochs", "0.5", "--batch-size", "8"]
    assert main([*args, *small, "--set", "run.stop_at_step=1", "--workers", "0"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())["data"]["path"]
    assert saved == str(digits_folder)
    monkeypatch.chdir(tmp_path)  # resumed from elsewhere, it still finds the images
    assert main(["pretrain", "--out", str(out), "--resume", "--set", "run.stop_at_step=2"]) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pretrain", "--data", "/no/such/folder"], "/no/such/folder"),
        (["pretrain", "--set", "optim.nonsense=1"], "nonsense"),
        (["pretrain", "--set", "optim.base_lr=fast"], "optim.base_lr"),
        (["pretrain", "--img-size", "30", "--patch-size", "4"], "not divisible"),
        (["pretrain", "--config", "no_such_recipe"], "no_such_recipe"),
        (["eval", "knn", "--encoder", "/no/such/run"], "/no/such/run"),
        (["pretrain", "--epochs", "0"], "optim.epochs"),
        (["pretrain", "--batch-size", "0"], "optim.batch_size"),
        (["pretrain", "--set", "run.stop_at_step=-5"], "run.stop_at_step = -5: must be at least 0"),
        (["pretrain", "--epochs", "inf"], "optim.epochs = inf: must be a finite number above 0"),
        (["pretrain", "--patch-size", "0"], "model.patch_size = 0: must be at least 1"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, capsys, tmp_path):
    code = main([*args, "--out", str(tmp_path / "x")] if args[0] == "pretrain" else args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err


def test_an_odd_first_file_does_not_stop_the_pictures(tmp_path, digits_folder):
    import numpy as np

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for png in sorted(digits_folder.rglob("*.png"))[:40]:
        (mixed / f"{png.parent.name}_{png.name}").write_bytes(png.read_bytes())
    np.save(mixed / "aa.npy", np.zeros((5, 16, 16), np.float32))  # first in sort order
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(mixed), "--out", str(out), *TINY]) == 0
    assert (out / "figures" / "recon.png").stat().st_size > 1000


def test_empty_folder_and_bad_files(tmp_path, capsys, caplog, digits_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pretrain", "--data", str(empty), "--out", str(tmp_path / "a"), *TINY]) == 2
    assert "no image" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    for png in sorted(digits_folder.rglob("*.png"))[:40]:
        (bad / f"{png.parent.name}_{png.name}").write_bytes(png.read_bytes())
    (bad / "empty.png").write_bytes(b"")
    (bad / "cut.png").write_bytes((bad / "0_000.png").read_bytes()[:60])
    args = ["pretrain", "--data", str(bad), *TINY]
    assert main([*args, "--out", str(tmp_path / "b"), "--strict"]) == 2
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("skipped 2 of 42 files" in w for w in warnings), warnings
    # the run keeps the whole list, with reasons
    listed = (tmp_path / "c" / "skipped.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == ["cut.png", "empty.png"]
    assert "empty file" in listed[1]


def test_grey_images_evaluate_on_an_rgb_encoder(digits_folder, tmp_path, capsys):
    from sslvit.models import EncoderInfo, create_vit, save_encoder

    info = EncoderInfo(
        model="vit_tiny", img_size=(16, 16), patch_size=4, in_chans=3,
        mean=[33.0] * 3, std=[78.0] * 3, embed_dim=192, pool="cls", method="none",
    )  # fmt: skip
    enc = save_encoder(create_vit("vit_tiny", 16, 4, 3), info, tmp_path / "rgb.safetensors")
    args = ["eval", "knn", "--encoder", str(enc), "--data", str(digits_folder)]
    assert main([*args, "--split", "0.25", "--device", "cpu"]) == 0
    assert last_json(capsys)["n_test"] == 30


def test_show_skips_unreadable_files(run_dir, digits_folder, tmp_path, caplog):
    import shutil

    data = tmp_path / "mixed"
    shutil.copytree(digits_folder / "3", data)
    (data / "000.png").write_bytes(b"")  # the first file, which a picture would pick
    out = tmp_path / "recon.png"
    args = ["show", "recon", "--encoder", str(run_dir), "--data", str(data), "--out", str(out)]
    assert main([*args, "--n", "3"]) == 0
    assert out.stat().st_size > 1000
    assert any("000.png" in r.message for r in caplog.records)


def test_an_out_folder_that_is_not_a_new_run_is_refused(digits_folder, tmp_path, capsys):
    args = ["pretrain", "--data", str(digits_folder), *TINY]
    inside = digits_folder / "0" / "run"
    assert main([*args, "--out", str(inside)]) == 2
    err = capsys.readouterr().err
    assert f"--out {inside} lies inside the data folder {digits_folder}" in err
    assert not inside.exists()  # nothing written among the images
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("mine")
    assert main([*args, "--out", str(notes)]) == 2
    assert f"{notes} holds files that are not a run's (readme.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in notes.iterdir()) == ["readme.txt"]


@pytest.mark.parametrize("command", ["finetune", "eval efficiency", "segment"])
def test_finetune_and_segment_refuse_an_out_inside_their_data(command, digits_folder, capsys):
    inside = digits_folder / "0" / "run"
    if command == "segment":
        argv = ["segment", "--images", str(digits_folder), "--masks", str(digits_folder)]
    else:
        argv = [*command.split(), "--data", str(digits_folder)]
    assert main([*argv, "--encoder", "none", "--out", str(inside)]) == 2
    assert f"--out {inside} lies inside the data folder {digits_folder}" in (
        capsys.readouterr().err
    )
    assert not inside.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["embed", "--out", "{data}/feats.npy"],
        ["show", "attention", "--out", "{data}/0/attn.png"],
        ["eval", "knn", "--out-of-data-check"],
    ],
)
def test_outputs_are_not_written_among_the_images(argv, run_dir, digits_folder, tmp_path, capsys):
    import shutil

    if argv[-1] == "--out-of-data-check":  # eval saves into the encoder's folder
        data = tmp_path / "data"
        shutil.copytree(digits_folder, data)
        encoder = data / "enc.safetensors"
        assert main(["export", "--encoder", str(run_dir), "--out", str(encoder)]) == 0
        argv, out = [*argv[:2], "--encoder", str(encoder)], data
    else:
        data, out = digits_folder, argv[-1].format(data=digits_folder)
        argv = [*argv[:-1], out, "--encoder", str(run_dir)]
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert main([*argv, "--data", str(data)]) == 2
    assert f"{out} lies inside the data folder {data}" in capsys.readouterr().err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_export_refuses_a_folder_named_like_its_sidecar(run_dir, tmp_path, capsys):
    (tmp_path / "b.json").mkdir()
    args = ["export", "--encoder", str(run_dir), "--out", str(tmp_path / "b.safetensors")]
    assert main([*args, "--overwrite"]) == 2
    assert f"{tmp_path / 'b.json'} is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def _junk_ten(data):
    for path in sorted(data.rglob("*.png"))[:10]:
        path.write_bytes(b"not a png")


def _rename_one(data):  # same count, another image list
    first = sorted(data.rglob("*.png"))[0]
    first.rename(first.with_name("renamed.png"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_junk_ten, "the run {out} started on 120 images, 110 are readable now"),
        (_rename_one, "the run {out} started on other images (the same count, 120, but other"),
    ],
)
def test_resume_on_other_images_is_refused(change, message, digits_folder, tmp_path, capsys):
    import shutil

    data, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(digits_folder, data)
    args = ["pretrain", "--data", str(data), "--out", str(out), *TINY]
    assert main([*args, "--set", "run.stop_at_step=2"]) == 0
    before = (out / "checkpoints" / "last.pt").read_bytes()
    change(data)
    assert main(["pretrain", "--out", str(out), "--resume", "--set", "run.stop_at_step=0"]) == 2
    assert message.format(out=out) in capsys.readouterr().err
    assert (out / "checkpoints" / "last.pt").read_bytes() == before


def test_export_does_not_overwrite_without_being_asked(run_dir, tmp_path, capsys):
    target = tmp_path / "enc.safetensors"
    target.write_bytes(b"another encoder")
    args = ["export", "--encoder", str(run_dir), "--out", str(target)]
    assert main(args) == 2
    assert f"{target} exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert target.read_bytes() == b"another encoder"
    assert main([*args, "--overwrite"]) == 0
    assert load_file(target)
    notes = tmp_path / "notes.json"
    notes.write_text("mine")
    args = ["export", "--encoder", str(run_dir), "--out", str(tmp_path / "notes.safetensors")]
    assert main(args) == 2
    assert f"{notes} exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert notes.read_text() == "mine" and not (tmp_path / "notes.safetensors").exists()


def test_sigterm_stops_a_run_like_ctrl_c_and_it_resumes(
    digits_folder, tmp_path, monkeypatch, capsys
):
    import sslvit.train.loop as loop

    real_save, saves = loop.save_checkpoint, []

    def save_then_sigterm(state, path):
        real_save(state, path)
        saves.append(state["step"])
        if len(saves) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or a job scheduler would

    monkeypatch.setattr(loop, "save_checkpoint", save_then_sigterm)
    out, before = tmp_path / "run", signal.getsignal(signal.SIGTERM)
    args = ["pretrain", "--data", str(digits_folder), "--out", str(out), *TINY]
    assert main([*args, "--set", "run.checkpoint_every=1"]) == 143
    err = capsys.readouterr().err
    hint = f"the last checkpoint is kept; continue with --out {out} --resume"
    assert f"sslvit: terminated (SIGTERM); {hint}" in err
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == saves[-1] == 2
    assert signal.getsignal(signal.SIGTERM) is before  # the handler does not outlive the command
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert main(["pretrain", "--out", str(out), "--resume"]) == 0
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 6  # 120 / 20


def test_interrupt_message_of_finetune_and_segment_names_the_kept_checkpoints(tmp_path):
    from argparse import Namespace

    from sslvit.cli import _after_interrupt
    from sslvit.cli.evaluate import cmd_finetune
    from sslvit.cli.segment import cmd_segment

    run = tmp_path / "ft"
    assert _after_interrupt(Namespace(func=cmd_finetune, out=str(run))).startswith(
        "no checkpoint yet; this command does not resume"
    )
    (run / "checkpoints").mkdir(parents=True)
    for name in ("last.pt", "best.pt"):
        (run / "checkpoints" / name).write_bytes(b"x")
    from sslvit.cli.pretrain import cmd_pretrain

    # a Ctrl-C before pretrain has decided its folder points at no other run's checkpoint
    assert _after_interrupt(Namespace(func=cmd_pretrain, out=None)).startswith(
        "no checkpoint was written yet"
    )
    message = _after_interrupt(Namespace(func=cmd_segment, out=str(run)))
    assert message == (
        f"best.pt, last.pt kept in {run / 'checkpoints'}; this command does not resume: "
        "run it again with another --out"
    )


@pytest.mark.parametrize(
    "argv", [["pretrain", "--method", "swav"], ["pretrain", "--no-such-flag"], ["nonsense"]]
)
def test_a_command_line_mistake_is_one_line(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.splitlines()) == 1, err
    assert "error:" in err and "--help" in err and "usage" not in err


@pytest.mark.parametrize("command", ["pretrain", "finetune", "segment", "embed"])
def test_a_negative_worker_count_is_refused_when_the_command_line_is_read(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--workers", "-1"])
    assert "argument --workers: '-1': expected 0 or a positive whole number" in (
        capsys.readouterr().err
    )


def test_pretrain_img_size_takes_a_side_or_a_square(capsys):
    from sslvit.cli.options import square_side

    assert square_side("32") == 32 and square_side("32x32") == 32
    with pytest.raises(SystemExit):
        main(["pretrain", "--img-size", "32x48"])
    assert "'32x48': pretraining crops are square; give one side, e.g. 48" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["pretrain", "--img-size", "0"])
    assert "'0': expected a side such as 32" in capsys.readouterr().err


def test_ctrl_c_while_the_libraries_load_ends_with_one_line(monkeypatch, capsys):
    import builtins

    from sslvit.entry import main as entry

    real = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "sslvit.cli":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert entry() == 130
    assert capsys.readouterr().err.strip() == "sslvit: interrupted while starting; nothing was run"


def test_warnings_are_tagged_in_the_log_and_progress_lines_are_not():
    from sslvit.cli import _TaggedFormatter

    fmt = _TaggedFormatter()

    def line(level, text):
        return fmt.format(logging.LogRecord("sslvit", level, __file__, 1, text, None, None))

    assert line(logging.INFO, "step 1/2").split(" ", 1)[1] == "step 1/2"
    assert line(logging.WARNING, "collapse: x").split(" ", 1)[1] == "WARNING collapse: x"


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_one(
    digits_folder, tmp_path, monkeypatch, capsys
):
    """torch's writer reports a full disk as `RuntimeError: ... unexpected pos`; the user sees
    which file, why, that the earlier checkpoint is intact and how to go on."""
    import errno

    out = tmp_path / "run"
    args = ["pretrain", "--data", str(digits_folder), "--out", str(out), *TINY]
    assert main([*args, "--set", "run.stop_at_step=2", "--set", "run.checkpoint_every=1"]) == 0
    ckpt = out / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()

    def full_disk(obj, f, *a, **k):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:  # as torch does: the OSError only as the context
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2")  # noqa: B904

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert main(["pretrain", "--out", str(out), "--resume", "--set", "run.stop_at_step=3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"could not write the checkpoint {ckpt} (No space left on device; free some space" in err
    assert f"the last checkpoint is kept; continue with --out {out} --resume" in err
    assert ckpt.read_bytes() == good
    assert not list(ckpt.parent.glob("*.tmp"))


def test_a_run_without_out_goes_to_runs_method_and_resume_needs_out(
    digits_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    tiny = [*TINY[: TINY.index("--set")], "--set", "run.stop_at_step=1"]
    args = ["pretrain", "--data", str(digits_folder), "--method", "simsiam", *tiny]
    assert main(args) == 0
    assert (tmp_path / "runs" / "simsiam" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "runs" / "mae").exists()
    capsys.readouterr()
    assert main(["pretrain", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["pretrain", "finetune", "segment"])
def test_an_out_that_is_a_file_is_one_line(command, digits_folder, tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    if command == "segment":
        argv = ["segment", "--images", str(digits_folder), "--masks", str(digits_folder)]
    else:
        argv = [command, "--data", str(digits_folder)]
    extra = TINY if command == "pretrain" else ["--encoder", "none", "--device", "cpu"]
    assert main([*argv, *extra, "--out", str(taken)]) == 2
    assert f"--out {taken} is a file; a run writes a folder" in capsys.readouterr().err
    assert taken.read_text() == "mine"


def test_print_config_shows_every_field_and_trains_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["pretrain", "--method", "ibot", "--set", "method.mask_prob=0.7", "--print-config"])
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"]["name"] == "ibot" and printed["method"]["mask_prob"] == 0.7
    assert {"pred_ratio", "student_temp", "out_dim"} <= set(printed["method"])
    assert printed["run"]["out"] == "runs/ibot" and not (tmp_path / "runs").exists()
    assert (
        main(["pretrain", "--method", "dino", "--set", "method.momentum=2", "--print-config"]) == 2
    )
    assert "method.momentum = 2.0: must be in [0, 1]" in capsys.readouterr().err
    assert main(["pretrain", "--set", "data.img_size=-3", "--print-config"]) == 2
    assert "data.img_size = -3: must be at least 1" in capsys.readouterr().err
    assert main(["pretrain", "--set", "model.name=vit_huge", "--print-config"]) == 2
    assert "model.name = vit_huge: must be one of vit_base" in capsys.readouterr().err


def test_method_settings_are_checked_before_the_data_is_scanned(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    argv = ["pretrain", "--data", str(missing), "--method", "ibot", "--out", str(tmp_path / "r")]
    assert main([*argv, "--set", "method.lambda_cls=0", "--set", "method.lambda_patch=0"]) == 2
    err = capsys.readouterr().err
    assert "method.lambda_cls = 0.0" in err and "no such folder" not in err
