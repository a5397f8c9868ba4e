"""The pretraining loop: any registered method, one process or many under `torchrun`."""

import contextlib
import copy
import hashlib
import json
import logging
import math
import platform
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate

import sslvit
from sslvit.data import SeededViews, channel_stats, open_images
from sslvit.data.bands import band_names_of, fill_images, select_bands
from sslvit.data.cubes import CubeTiles
from sslvit.data.folders import absolute_spec, check_out_is_folder, check_out_outside
from sslvit.methods import build_method
from sslvit.models import EncoderInfo, create_vit, save_encoder, select_attention_kernel
from sslvit.train.checkpoint import load_checkpoint, save_checkpoint
from sslvit.train.config import Config
from sslvit.train.distributed import (
    DistInfo,
    all_reduce_mean,
    init_distributed,
    resolve_device,
    resolve_precision,
)
from sslvit.train.logger import RunLogger, format_duration
from sslvit.train.optim import cosine_schedule, set_learning_rate
from sslvit.train.sampler import StepBatches, batches_per_epoch

log = logging.getLogger("sslvit")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was left as it was."""


def supervised_step(loss, step: int, precision: str, run_dir: Path, scaler, optimizer) -> float:
    """Backward pass and optimiser step of a supervised trainer (fine-tuning, segmentation).

    Stops with `NonFiniteLossError` before any weight changes when the loss is NaN or
    infinite, naming the step, the precision and the untouched last checkpoint.
    """
    if not torch.isfinite(loss):
        last = run_dir / "checkpoints" / "last.pt"
        raise NonFiniteLossError(
            f"step {step + 1}: the loss is {loss.item()} in {precision}; the last good "
            f"checkpoint ({last if last.exists() else 'none written yet'}) is unchanged; "
            "try a lower --lr or --precision fp32"
        )
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the random numbers a method draws at `step` on `rank` (masks, crops).

    Deriving them from (seed, step, rank) alone makes a resumed run draw exactly what the
    uninterrupted run would have, and keeps processes from drawing the same masks.
    """
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def _to_device(views, device: torch.device):
    """A batch of views (one tensor, or a list of tensors for multi-view methods) on `device`."""
    if isinstance(views, (list, tuple)):
        return [v.to(device, non_blocking=True) for v in views]
    return views.to(device, non_blocking=True)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker differently; numpy and random must follow, or workers repeat
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def names_digest(images) -> str:
    """SHA-256 of the image names in order: which images a run trains on, in a few bytes."""
    digest = hashlib.sha256()
    for name in images.names:
        digest.update(name.encode() + b"\0")
    return digest.hexdigest()


def _git_hash() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# what a run folder holds (the training's files, and what eval, show and export add)
RUN_ENTRIES = {
    "config.yaml",
    "env.json",
    "metrics.jsonl",
    "tb",
    "checkpoints",
    "encoder.safetensors",
    "encoder.json",
    "figures",
    "eval",
    "export",
    "skipped.txt",
}


class Trainer:
    """Runs one pretraining job from its config.

    The run folder receives `config.yaml`, `env.json`, `metrics.jsonl`, `tb/`,
    `checkpoints/last.pt` (everything needed to resume) and `encoder.safetensors` with its
    `encoder.json` sidecar, refreshed at every checkpoint so an interrupted run still leaves a
    usable encoder.
    """

    def __init__(self, config: Config, resume: bool = False):
        config.check()
        self.config = config
        self.device = resolve_device(config.run.device)
        self.dist: DistInfo = init_distributed(self.device)
        self.precision = resolve_precision(config.run.precision, self.device)
        self.run_dir = Path(config.run.out)
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"
        saved = self._check_run_dir(resume)

        self.images = self._open_data()
        self.method = self.build_method()
        if saved is None:
            self._check_method_fits()
        self.optimizer = torch.optim.AdamW(
            self.method.param_groups(config.optim.weight_decay),
            lr=0.0,
            betas=tuple(config.optim.betas),
            # one fused kernel instead of a loop over ~150 tensors: the loop cost a third of a
            # ViT-Tiny step on the CPU
            fused=True,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self._plan_steps()
        self.start_step = 0
        if saved is not None:
            self._check_same_images()
            self._restore(saved)
        self.model = self.method
        if self.dist.world_size > 1:
            if self.device.type == "cuda":
                # the heads' BatchNorm normalises over the global batch, as in the papers
                self.method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
                self.model = self.method
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.method, device_ids=ids)

    def _check_run_dir(self, resume: bool):
        if resume:
            if not self.ckpt_path.is_file():
                raise FileNotFoundError(
                    f"{self.ckpt_path}: no checkpoint to resume from (a run stopped before its "
                    "first checkpoint starts again with the same command without --resume)"
                )
            return load_checkpoint(self.ckpt_path)
        check_out_is_folder(self.run_dir)
        if self.ckpt_path.exists():
            raise FileExistsError(
                f"{self.run_dir} already holds a run; pass --resume to continue it "
                "or choose another --out"
            )
        check_out_outside(self.run_dir, self.config.data.path)
        if self.run_dir.is_dir():
            # a run stopped before its first checkpoint starts again here; anything else is
            # someone's files
            foreign = sorted(
                p.name
                for p in self.run_dir.iterdir()
                if p.name not in RUN_ENTRIES and not p.name.startswith(".")
            )
            if foreign:
                shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
                raise FileExistsError(
                    f"{self.run_dir} holds files that are not a run's ({shown}); choose a new "
                    "or empty --out"
                )
        return None

    def _check_same_images(self) -> None:
        """A resumed run must see the images it started with: its schedule, and the order of
        its batches, are counted in them."""
        env = self.run_dir / "env.json"
        if not env.is_file():
            return
        saved = json.loads(env.read_text())
        started = saved.get("n_images")
        if started is not None and started != len(self.images):
            raise ValueError(
                f"{self.config.data.path}: the run {self.run_dir} started on {started} images, "
                f"{len(self.images)} are readable now; resume it on the same images, or start "
                "a new --out"
            )
        digest = saved.get("names_sha256")  # absent in runs from before it was recorded
        if digest is not None and digest != names_digest(self.images):
            raise ValueError(
                f"{self.config.data.path}: the run {self.run_dir} started on other images (the "
                f"same count, {started}, but other file names); resume it on the same images, "
                "or start a new --out"
            )

    def _open_data(self):
        data = self.config.data
        if data.path:
            # saved absolute: the run resumes and shows from any working directory
            data.path = absolute_spec(data.path)
        images = open_images(
            data.path or "sample:train",
            labeled=False,
            strict=data.strict,
            tile_size=data.tile_size or data.img_size,
            tile_stride=data.tile_stride,
            window=data.window,
            slice_axis=data.slice_axis,
        )
        self.skipped = list(getattr(images, "skipped", []))
        if isinstance(images, CubeTiles):
            # recorded as resolved, so every later command cuts the cube the same way
            data.tile_size, data.tile_stride = images.tile_size, images.stride
        images = select_bands(images, data.bands, data.path or "sample:train")
        data.bands = band_names_of(images)
        if data.in_chans is not None and data.in_chans != images.in_chans:
            raise ValueError(
                f"{data.path}: images have {images.in_chans} channels, config asks for "
                f"{data.in_chans}"
            )
        data.in_chans = images.in_chans
        if data.mean is None or data.std is None:
            data.mean, data.std = channel_stats(images, data.stats_samples, self.config.run.seed)
        if len(data.mean) != images.in_chans or len(data.std) != images.in_chans:
            raise ValueError(
                f"data.mean/std have {len(data.mean)}/{len(data.std)} values for "
                f"{images.in_chans} channels"
            )
        return images

    def _check_method_fits(self) -> None:
        """Refuse, before anything is written to the run folder, a method that cannot train
        this encoder.

        An encoder with band groups has no plain patch embedding, which some methods need; one
        forward pass of a copy of the method on two real views finds that out.
        """
        cfg = self.config
        if not cfg.model.band_groups:
            return
        images = self.images
        if not self.method.keeps_invalid_pixels:
            images = fill_images(images, cfg.data.mean)
        transform = self.method.views_transform(cfg.data, cfg.data.mean, cfg.data.std)
        views = SeededViews(images, transform, cfg.run.seed)
        batch = default_collate([views[i][0] for i in (0, min(1, len(views) - 1))])
        probe = copy.deepcopy(self.method)  # a forward pass may move buffers (centres, queues)
        try:
            with torch.no_grad(), self._autocast():
                probe(_to_device(batch, self.device))
        except ValueError as err:
            raise ValueError(
                f"method {cfg.method.name} with model.band_groups={cfg.model.band_groups}: {err}"
            ) from None

    def build_method(self):
        """The method with the weights this run starts from (seeded by `run.seed`)."""
        cfg = self.config
        torch.manual_seed(cfg.run.seed)
        encoder = create_vit(
            cfg.model.name,
            cfg.data.img_size,
            cfg.model.patch_size,
            cfg.data.in_chans,
            cfg.model.drop_path,
            cfg.model.band_groups,
        )
        method = build_method(cfg.method, encoder).to(self.device)
        select_attention_kernel(method, self.device)
        return method

    def _plan_steps(self) -> None:
        optim = self.config.optim
        world = self.dist.world_size
        micro_per_epoch = batches_per_epoch(len(self.images), optim.batch_size, world)
        self.steps_per_epoch = micro_per_epoch // optim.accum_steps
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{len(self.images)} images make no full step of batch {optim.batch_size} x "
                f"accumulation {optim.accum_steps} x {world} process(es); lower --batch-size"
            )
        self.total_steps = max(1, round(optim.epochs * self.steps_per_epoch))
        if optim.epochs * self.steps_per_epoch < 0.5:
            log.info(
                "%s epochs of %d steps round to no step; training 1 step",
                optim.epochs,
                self.steps_per_epoch,
            )
        self.effective_batch = optim.batch_size * optim.accum_steps * world
        self.peak_lr = optim.base_lr * self.effective_batch / 256
        self.warmup_steps = round(optim.warmup_epochs * self.steps_per_epoch)
        if self.warmup_steps > self.total_steps // 2:
            log.warning(
                "warm-up of %s epochs is over half of the %s-epoch run (%d step(s)); warming up "
                "for %d steps",
                optim.warmup_epochs,
                optim.epochs,
                self.total_steps,
                self.total_steps // 2,
            )
            self.warmup_steps = self.total_steps // 2

    def _restore(self, saved: dict) -> None:
        self.method.load_state_dict(saved["method"])
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
        except ValueError as err:  # parameter groups of another method setting or version
            raise ValueError(
                f"{self.ckpt_path}: its optimiser state does not fit this run's parameter groups "
                f"({err}); resume with the settings it was trained with (see "
                f"{self.run_dir / 'config.yaml'}) or start a new --out"
            ) from err
        if "scaler" in saved:
            self.scaler.load_state_dict(saved["scaler"])
        self.start_step = int(saved["step"])
        log.info("resuming %s at step %d", self.run_dir, self.start_step)

    def _loader(self) -> DataLoader:
        cfg = self.config
        images = self.images
        if not self.method.keeps_invalid_pixels:
            images = fill_images(images, cfg.data.mean)
        views = SeededViews(
            images,
            self.method.views_transform(cfg.data, cfg.data.mean, cfg.data.std),
            cfg.run.seed,
        )
        sampler = StepBatches(
            len(self.images),
            cfg.optim.batch_size,
            self.total_steps * cfg.optim.accum_steps,
            cfg.run.seed,
            self.dist.rank,
            self.dist.world_size,
            start_micro=self.start_step * cfg.optim.accum_steps,
        )
        workers = cfg.data.workers
        return DataLoader(
            views,
            batch_sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_seed_worker,
            # a generator of its own keeps the loader from drawing on the global RNG
            generator=torch.Generator().manual_seed(cfg.run.seed),
        )

    def encoder_info(self) -> EncoderInfo:
        cfg = self.config
        return EncoderInfo(
            model=cfg.model.name,
            img_size=(cfg.data.img_size, cfg.data.img_size),
            patch_size=cfg.model.patch_size,
            in_chans=cfg.data.in_chans,
            mean=list(cfg.data.mean),
            std=list(cfg.data.std),
            embed_dim=self.method.encoder.embed_dim,
            pool=self.method.pool,
            method=cfg.method.name,
            band_groups=cfg.model.band_groups,
            bands=cfg.data.bands,
            tile_size=cfg.data.tile_size,
            tile_stride=cfg.data.tile_stride,
        )

    def _write_run_files(self) -> None:
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.save(self.run_dir / "config.yaml")
        if self.skipped:
            # the scan's warning names a few; the run keeps the whole list
            listing = "".join(f"{name}\t{reason}\n" for name, reason in self.skipped)
            (self.run_dir / "skipped.txt").write_text(listing)
            log.info(
                "all %d skipped files and why: %s", len(self.skipped), self.run_dir / "skipped.txt"
            )
        env = {
            "sslvit": sslvit.__version__,
            "git": _git_hash(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(self.device),
            "precision": self.precision,
            "world_size": self.dist.world_size,
            "n_images": len(self.images),
            "names_sha256": names_digest(self.images),
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "effective_batch": self.effective_batch,
            "peak_lr": self.peak_lr,
        }
        (self.run_dir / "env.json").write_text(json.dumps(env, indent=2) + "\n")

    def save(self, step: int) -> None:
        """Checkpoint after `step` optimiser steps, then refresh the encoder file."""
        if not self.dist.is_main:
            return
        state = {
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": step,
            "config": self.config.to_dict(),
        }
        save_checkpoint(state, self.ckpt_path)
        save_encoder(self.method.encoder, self.encoder_info(), self.run_dir / "encoder.safetensors")

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def _check_finite(self, loss: torch.Tensor, logs: dict, step: int) -> None:
        if torch.isfinite(loss):
            return
        bad = [k for k, v in logs.items() if not math.isfinite(v)]
        term = f" (non-finite terms: {', '.join(bad)})" if bad else ""
        if self.ckpt_path.exists() and self.precision != "fp32":
            then = (
                f"the last good checkpoint ({self.ckpt_path}) is unchanged. Resume from it with "
                "--resume, for example with --precision fp32"
            )
        elif self.ckpt_path.exists():
            then = (
                f"the last good checkpoint ({self.ckpt_path}) is unchanged, but the run is in "
                "fp32 already and its learning rate is fixed: start again in a new --out with "
                f"a lower --base-lr (this run's: {self.config.optim.base_lr:g})"
            )
        else:
            then = (
                "no checkpoint was written yet. Run the same command again (without --resume), "
                "for example with --precision fp32 or a lower --base-lr (this run's: "
                f"{self.config.optim.base_lr:g})"
            )
        raise NonFiniteLossError(
            f"step {step + 1}: the loss is {loss.item()}{term} in {self.precision}; {then}"
        )

    def train(self) -> Path:
        """Run to the end (or to `run.stop_at_step`) and return the run folder."""
        cfg = self.config
        accum = cfg.optim.accum_steps
        stop = cfg.run.stop_at_step or self.total_steps
        if self.start_step >= stop:
            # resuming a finished run: its config, env and logs stay as they were
            more = (
                f" (run.stop_at_step={stop}); {self._finish_hint()}"
                if stop < self.total_steps
                else ""
            )
            log.info("%s is at step %d: nothing to train%s", self.run_dir, self.start_step, more)
            encoder = self.run_dir / "encoder.safetensors"
            if self.dist.is_main and not encoder.is_file():
                # the run stopped between its checkpoint and its encoder (a full disk)
                save_encoder(self.method.encoder, self.encoder_info(), encoder)
                log.info("wrote the encoder the checkpoint holds: %s", encoder)
            return self.run_dir
        self._write_run_files()
        logger = RunLogger(self.run_dir, self.total_steps, self.start_step, self.dist.is_main)
        logger.truncate_after(self.start_step)
        log.info(
            "%s on %d images | %s, %d channels, %d px, patch %d | %d steps of %d images | "
            "%s, %s, %d process(es)",
            cfg.method.name,
            len(self.images),
            cfg.model.name,
            cfg.data.in_chans,
            cfg.data.img_size,
            cfg.model.patch_size,
            self.total_steps,
            self.effective_batch,
            self.device,
            self.precision,
            self.dist.world_size,
        )
        step, epoch_losses, step_loss, step_logs = self.start_step, [], 0.0, {}
        self.model.train()
        for micro, (views, _, _) in enumerate(self._loader()):
            step = self.start_step + micro // accum
            first, last = micro % accum == 0, micro % accum == accum - 1
            if first:
                torch.manual_seed(step_seed(cfg.run.seed, step, self.dist.rank))
                held = self.peak_lr if step >= self.warmup_steps else None
                set_learning_rate(self.optimizer, self._lr(step), held)
                self._set_weight_decay(step)
                self.method.start_step(
                    step, self.total_steps, self.steps_per_epoch, self.warmup_steps
                )
                step_loss, step_logs = 0.0, {}
            views = _to_device(views, self.device)
            no_sync = self.dist.world_size > 1 and not last
            with self.model.no_sync() if no_sync else contextlib.nullcontext():
                with self._autocast():
                    loss, logs = self.model(views)
                self._check_finite(loss, logs, step)
                self.scaler.scale(loss / accum).backward()
            step_loss += loss.item() / accum
            for key, value in logs.items():
                step_logs[key] = step_logs.get(key, 0.0) + value / accum
            if not last:
                continue
            self._optimizer_step(step)
            self.method.after_step(step, self.total_steps)
            epoch_losses.append(step_loss)
            log_now = (step + 1) % cfg.run.log_every == 0 or step + 1 == stop
            if log_now:
                step_loss = all_reduce_mean(step_loss, self.device)
            values = {"epoch": step // self.steps_per_epoch, "loss": step_loss, **step_logs}
            values["lr"] = self.optimizer.param_groups[0]["lr"]
            monitor = getattr(self.method, "monitor", None)
            if monitor is not None and monitor.can_warn:
                values["collapsed"] = int(monitor.collapsed)  # 1 from the step it warned
            if cfg.optim.weight_decay_end is not None:
                values["wd"] = self.optimizer.param_groups[0]["weight_decay"]
            logger.step(step, self.effective_batch, log_now, values)
            end_of_epoch = (step + 1) % self.steps_per_epoch == 0
            if end_of_epoch:
                mean_loss = all_reduce_mean(float(np.mean(epoch_losses)), self.device)
                logger.record(
                    {
                        "kind": "epoch",
                        "step": step + 1,
                        "epoch": step // self.steps_per_epoch,
                        "loss": mean_loss,
                    }
                )
                epoch_losses = []
            every = cfg.run.checkpoint_every
            if end_of_epoch or (every and (step + 1) % every == 0) or step + 1 >= stop:
                self.save(step + 1)
            if step + 1 >= stop:
                break
        logger.close()
        elapsed = time.perf_counter() - logger.run_start
        if stop < self.total_steps:
            log.info(
                "stopped at step %d of %d (run.stop_at_step): %s (%s); %s",
                stop,
                self.total_steps,
                self.run_dir,
                format_duration(elapsed),
                self._finish_hint(),
            )
        else:
            log.info("done: %s (%s)", self.run_dir, format_duration(elapsed))
        return self.run_dir

    def _finish_hint(self) -> str:
        """How to go on with a run halted by `run.stop_at_step`."""
        return (
            f"finish it (to step {self.total_steps}) with --out {self.run_dir} --resume "
            "--set run.stop_at_step=0"
        )

    def _lr(self, step: int) -> float:
        optim = self.config.optim
        return cosine_schedule(
            step, self.total_steps, self.warmup_steps, self.peak_lr, optim.min_lr
        )

    def _set_weight_decay(self, step: int) -> None:
        optim = self.config.optim
        if optim.weight_decay_end is None:
            return
        wd = cosine_schedule(step, self.total_steps, 0, optim.weight_decay, optim.weight_decay_end)
        for group in self.optimizer.param_groups:
            if group["base_weight_decay"] > 0:
                group["weight_decay"] = wd

    def _optimizer_step(self, step: int) -> None:
        clip = self.config.optim.clip_grad
        self.scaler.unscale_(self.optimizer)
        self.method.adjust_gradients(step)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


def pretrain(config: Config, resume: bool = False) -> Path:
    """Pretrain an encoder as `config` says; returns the run folder."""
    return Trainer(config, resume=resume).train()
