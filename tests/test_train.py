"""The training loop: loss falls on real data, exact resume, atomic checkpoints, bad losses."""

import json
import os
import signal

import pytest
import torch

from sslvit.train.checkpoint import Terminated, load_checkpoint, save_checkpoint
from sslvit.train.config import Config
from sslvit.train.loop import NonFiniteLossError, Trainer, pretrain


def tiny_config(data, out, **run) -> Config:
    config = Config()
    config.data.path = str(data)
    config.data.img_size = 16
    config.data.workers = 0
    config.model.patch_size = 4
    config.method.decoder_embed_dim = 32
    config.method.decoder_depth = 1
    config.optim.epochs = 2
    config.optim.batch_size = 20
    config.optim.warmup_epochs = 1
    config.optim.base_lr = 1e-3
    config.run.out = str(out)
    config.run.device = "cpu"
    config.run.precision = "fp32"
    config.run.log_every = 1
    for key, value in run.items():
        setattr(config.run, key, value)
    return config


def step_losses(run_dir) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def test_resume_equals_uninterrupted_run(digits_folder, tmp_path):
    whole = tmp_path / "whole"
    pretrain(tiny_config(digits_folder, whole))
    parted = tmp_path / "parted"
    # stop mid-epoch (6 steps per epoch), then resume with data-loader workers this time
    pretrain(tiny_config(digits_folder, parted, stop_at_step=4))
    assert load_checkpoint(parted / "checkpoints" / "last.pt")["step"] == 4
    resumed = tiny_config(digits_folder, parted)
    resumed.data.workers = 2
    Trainer(resumed, resume=True).train()

    expected, got = step_losses(whole), step_losses(parted)
    assert sorted(got) == sorted(expected) == list(range(1, 13))
    for step in range(5, 13):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    a = load_checkpoint(whole / "checkpoints" / "last.pt")["method"]
    b = load_checkpoint(parted / "checkpoints" / "last.pt")["method"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_run_folder_contents(digits_folder, tmp_path):
    run = pretrain(tiny_config(digits_folder, tmp_path / "r"))
    for name in ("config.yaml", "env.json", "metrics.jsonl", "encoder.safetensors", "encoder.json"):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir())
    info = json.loads((run / "encoder.json").read_text())
    assert info["in_chans"] == 1 and info["img_size"] == [16, 16] and len(info["mean"]) == 1
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [0, 1]
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny_config(digits_folder, run))


def test_resuming_at_stop_at_step_trains_nothing_and_says_how_to_go_on(
    digits_folder, tmp_path, caplog
):
    out = tmp_path / "r"
    with caplog.at_level("INFO", logger="sslvit"):
        pretrain(tiny_config(digits_folder, out, stop_at_step=2))
    assert "stopped at step 2 of 12" in caplog.text and "done:" not in caplog.text
    caplog.clear()
    ckpt = out / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    with caplog.at_level("INFO", logger="sslvit"):
        Trainer(tiny_config(digits_folder, out, stop_at_step=2), resume=True).train()
    assert ckpt.read_bytes() == before
    assert "nothing to train" in caplog.text and "run.stop_at_step=0" in caplog.text


def test_crash_while_saving_keeps_the_good_checkpoint(digits_folder, tmp_path, monkeypatch):
    out = tmp_path / "r"
    pretrain(tiny_config(digits_folder, out, stop_at_step=2))
    ckpt = out / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    trainer = Trainer(tiny_config(digits_folder, out, stop_at_step=3), resume=True)
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
    assert ckpt.read_bytes() == good
    assert load_checkpoint(ckpt)["step"] == 2


@pytest.mark.parametrize(
    "precision,advice",
    [("bf16", "Resume from it with --resume"), ("fp32", "start again in a new --out with a lower")],
)
def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(
    digits_folder, tmp_path, precision, advice
):
    out = tmp_path / "r"
    config = tiny_config(digits_folder, out, checkpoint_every=1)
    config.run.precision = precision
    trainer = Trainer(config)
    real_forward = trainer.method.forward
    calls = {"n": 0}

    def forward(images):
        calls["n"] += 1
        loss, logs = real_forward(images)
        return (loss * float("nan"), logs) if calls["n"] == 3 else (loss, logs)

    trainer.method.forward = forward
    with pytest.raises(NonFiniteLossError, match="step 3: the loss is nan") as err:
        trainer.train()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2
    assert advice in str(err.value)


def test_non_finite_loss_before_any_checkpoint_says_to_run_again(digits_folder, tmp_path):
    trainer = Trainer(tiny_config(digits_folder, tmp_path / "r"))
    real_forward = trainer.method.forward
    trainer.method.forward = lambda images: (lambda out: (out[0] * float("nan"), out[1]))(
        real_forward(images)
    )
    with pytest.raises(NonFiniteLossError, match="step 1: .*no checkpoint was written yet") as err:
        trainer.train()
    assert "without --resume" in str(err.value)


@pytest.mark.parametrize("accum", [2])
def test_gradient_accumulation_matches_large_batch(digits_folder, tmp_path, accum):
    big = tiny_config(digits_folder, tmp_path / "big", stop_at_step=3)
    small = tiny_config(digits_folder, tmp_path / "small", stop_at_step=3)
    small.optim.batch_size = big.optim.batch_size // accum
    small.optim.accum_steps = accum
    pretrain(big)
    pretrain(small)
    a, b = step_losses(tmp_path / "big"), step_losses(tmp_path / "small")
    for step in (1, 2, 3):
        assert a[step] == pytest.approx(b[step], abs=1e-5)


def test_loss_falls_on_real_digits(tmp_path):
    config = tiny_config("sample", tmp_path / "r")
    config.data.img_size = 28
    config.method.decoder_embed_dim = 64
    config.optim.epochs = 1
    config.optim.batch_size = 32
    config.optim.warmup_epochs = 0.05
    config.optim.base_lr = 3e-3
    config.run.stop_at_step = 30
    run = pretrain(config)
    losses = step_losses(run)
    first = sum(losses[s] for s in range(1, 6)) / 5
    last = sum(losses[s] for s in range(26, 31)) / 5
    assert last < 0.7 * first, (first, last)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_a_checkpoint_write_finishes_the_file_then_interrupts(
    tmp_path, monkeypatch, signum
):
    # torch's zip writer would turn an interrupt inside it into an unrelated RuntimeError
    real_save = torch.save

    def save_hit_by_a_signal(obj, f):
        os.kill(os.getpid(), signum)  # delivered now, in the middle of the write
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_hit_by_a_signal)
    state = {"w": torch.randn(100, 100)}
    path = tmp_path / "last.pt"
    expected = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    with pytest.raises(expected):
        save_checkpoint(state, path)
    assert torch.equal(load_checkpoint(path)["w"], state["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("content", [b"", b"\x80\x02garbage" * 50, b"PK\x03\x04truncated"])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: cannot read checkpoint; it is damaged, truncated or not")
    assert len(message.splitlines()) == 1 and len(message) < 400, message


@pytest.mark.parametrize("name", ["tpu", "gpu", "meta"])
def test_an_unknown_device_is_a_clear_error(name):
    from sslvit.train.distributed import resolve_device

    with pytest.raises(ValueError, match=f"--device {name}: choose auto, cpu, cuda or cuda:N"):
        resolve_device(name)
    assert resolve_device("cpu").type == "cpu"


def test_a_checkpoint_write_holds_interrupts_but_keeps_an_ignored_one_ignored():
    import os
    import signal

    from sslvit.train.checkpoint import _interrupts_deferred

    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with pytest.raises(KeyboardInterrupt):
            with _interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)  # held until the write is done
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job started with nohup or &
        with _interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_full_disk_while_writing_the_encoder_is_mended_by_resuming(
    digits_folder, tmp_path, monkeypatch
):
    """The checkpoint is written, then the disk fills while writing the encoder: the error
    names the file, no temporary file stays, and resuming the finished run writes the encoder
    its checkpoint holds."""
    import safetensors.torch

    from sslvit.models import io
    from sslvit.models.io import WriteError

    out = tmp_path / "r"

    def config():
        one = tiny_config(digits_folder, out)
        one.optim.epochs, one.optim.warmup_epochs = 1, 0.5
        return one

    encoder = out / "encoder.safetensors"
    pretrain(config())
    whole = encoder.read_bytes()
    encoder.unlink()

    def full_disk(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: No space left (os error 28)")

    monkeypatch.setattr(io, "save_file", full_disk)
    trainer = Trainer(config(), resume=True)
    with pytest.raises(WriteError, match=r"encoder\.safetensors \(No space left on device; free"):
        trainer.train()
    assert not encoder.exists() and not list(out.glob("*.tmp"))
    monkeypatch.setattr(io, "save_file", safetensors.torch.save_file)
    Trainer(config(), resume=True).train()
    assert encoder.read_bytes() == whole
