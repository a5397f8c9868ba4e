"""Data order under several processes, and a real 2-process run over gloo on the CPU."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from sslvit.train.checkpoint import load_checkpoint
from sslvit.train.sampler import StepBatches


def test_ranks_share_each_epoch_without_overlap():
    world, n, batch = 3, 50, 4
    shares = [
        StepBatches(n, batch, n_micro=8, seed=1, rank=r, world_size=world) for r in range(world)
    ]
    epoch0 = [set(s.epoch_indices(0).tolist()) for s in shares]
    assert set().union(*epoch0) == set(range(n))
    # 50 items padded to 51: exactly one item is repeated across ranks
    assert sum(len(e) for e in epoch0) == 51
    batches = [list(s) for s in shares]
    assert all(len(b) == 8 for b in batches) and shares[0].per_epoch == 4
    assert {e for b in batches[0] for e, _ in b} == {0, 1}
    assert shares[0].epoch_indices(0).tolist() != shares[0].epoch_indices(1).tolist()


def test_resume_point_continues_the_same_order():
    whole = list(StepBatches(30, 4, n_micro=20, seed=3))
    tail = list(StepBatches(30, 4, n_micro=20, seed=3, start_micro=9))
    assert tail == whole[9:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, config):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    from sslvit.train.loop import pretrain

    pretrain(config)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_run(digits_folder, tmp_path):
    from tests.test_train import tiny_config

    config = tiny_config(digits_folder, tmp_path / "ddp")
    config.optim.batch_size = 10  # per process: the effective batch stays 20
    mp.spawn(_worker, args=(2, _free_port(), config), nprocs=2, join=True)
    state = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert state["step"] == 12  # 120 images / (10 x 2 processes) = 6 steps, 2 epochs
    assert (tmp_path / "ddp" / "encoder.safetensors").is_file()
