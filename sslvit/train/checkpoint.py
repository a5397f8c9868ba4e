"""Atomic checkpoints and the random-number state that exact resume needs."""

import contextlib
import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from sslvit.data.readers import describe_error
from sslvit.models.io import WriteError


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` to `path` so that a crash at any moment leaves the old file intact.

    The state goes to a temporary file in the same folder, is flushed to disk, and only then
    replaces `path` in one rename. A Ctrl-C during the write is held until the checkpoint is
    complete, then raised as usual.

    Raises:
        WriteError: the write failed (a full disk, a folder without write access);
            `path` is as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with _interrupts_deferred():
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            # torch's zip writer reports a full disk as a RuntimeError ("unexpected pos")
            raise WriteError("the checkpoint", path, err) from err
        finally:
            # a failed write (a full disk, a kill) leaves no half-written file behind
            tmp.unlink(missing_ok=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), raised like Ctrl-C so the same clean-up and
    resume hint follow it."""


def raise_terminated(signum, frame) -> None:
    """A SIGTERM handler: stop the program the way Ctrl-C does."""
    raise Terminated


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold SIGINT and SIGTERM for the duration of the block and raise them after it
    (`KeyboardInterrupt`, `Terminated`).

    torch's zip writer turns an interrupt raised inside it into an unrelated RuntimeError, so
    the interrupt waits for the (short) write to finish instead.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    # a signal the program ignores (a job started with `nohup` or `&`) stays ignored
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if signal.SIGTERM in received:
        raise Terminated
    if received:
        raise KeyboardInterrupt


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint as data only (`weights_only=True`: a checkpoint never runs code)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: cannot read checkpoint; it is damaged, truncated or not an sslvit "
            f"checkpoint ({describe_error(err)})"
        ) from err


def rng_state() -> dict:
    """Every random-number state the main process uses, as tensors and plain values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
