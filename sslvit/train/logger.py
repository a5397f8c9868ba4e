"""What a run reports: a log line per interval, `metrics.jsonl`, TensorBoard, a progress bar."""

import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("sslvit")


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def log_interval(every: int, total_steps: int, points: int = 50) -> int:
    """Steps between logged training records: `every`, or less in a short run, so that it
    still logs about `points` records (every step when it has fewer steps than that)."""
    return max(1, min(every, total_steps // points))


class RunLogger:
    """Logs training progress on the main process; silent elsewhere.

    Every `log_every` steps it writes one line with the same fields (step/total, ETA, loss,
    learning rate, images/s, then the method's own numbers), appends a JSON object to
    `metrics.jsonl`, and writes TensorBoard scalars under `tb/`. Attached to a terminal it also
    draws a progress bar.
    """

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.total_steps = total_steps
        self.metrics_path = run_dir / "metrics.jsonl"
        self.tb = None
        self.bar = None
        self.window_start = time.perf_counter()
        self.window_images = 0
        self.run_start = time.perf_counter()
        self.start_step = start_step
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps, initial=start_step, unit="step", leave=False, file=sys.stderr
            )

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` left by an interrupted run that is now resumed."""
        if not (self.enabled and self.metrics_path.exists()):
            return
        kept = [
            line
            for line in self.metrics_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def record(self, values: dict) -> None:
        """Append one JSON object to `metrics.jsonl` and the scalars to TensorBoard."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(values) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                self.tb.add_scalar(f"{values.get('kind', 'train')}/{key}", value, values["step"])

    def step(self, step: int, n_images: int, log_now: bool, values: dict) -> None:
        """Account one finished step; on logging steps write the line and the record."""
        self.window_images += n_images
        if self.bar is not None:
            self.bar.update(1)
        if not (self.enabled and log_now):
            return
        now = time.perf_counter()
        images_per_s = self.window_images / max(1e-9, now - self.window_start)
        done = step + 1 - self.start_step
        eta = (now - self.run_start) / max(1, done) * (self.total_steps - step - 1)
        values = {"kind": "train", "step": step + 1, **values, "images_per_s": images_per_s}
        extra = "".join(
            f" | {k} {v:.4g}"
            for k, v in values.items()
            if k not in ("kind", "step", "epoch", "loss", "lr", "images_per_s")
        )
        line = (
            f"step {step + 1}/{self.total_steps} | eta {format_duration(eta)} | "
            f"loss {values['loss']:.4f} | lr {values['lr']:.3e} | {images_per_s:.0f} img/s{extra}"
        )
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            log.info(line)
        self.record(values)
        self.window_start, self.window_images = now, 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
