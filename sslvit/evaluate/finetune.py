"""Fine-tuning: a new linear head on an encoder, every weight trained on the labelled images.

The recipe is MAE's (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners",
appendix A.1, table 9): AdamW (0.9, 0.999), weight decay 0.05 except on norms, biases, position
embeddings and tokens, base learning rate 1e-3 per 256 images, layer-wise learning-rate decay
0.75, 5 warm-up epochs then cosine decay, drop path 0.1, label smoothing 0.1, random resized
crops and flips. Scaled for small labelled sets: the batch is capped at the number of training
images, the warm-up at a fifth of the run, and mixup/cutmix (MAE's 0.8/1.0) are off unless
asked for. RandAugment and random erasing are left out: they assume RGB photos.
"""

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from sslvit.data import SeededViews, Subset, channel_stats, label_subset
from sslvit.data.views import train_transform
from sslvit.evaluate.classifier import ViTClassifier, finetune_param_groups, predict
from sslvit.evaluate.classify import _n_classes
from sslvit.evaluate.confusion import confusion_figure, confusion_matrix, per_class_accuracy
from sslvit.evaluate.features import _grey_to_rgb, encoder_transform
from sslvit.evaluate.knn import topk_accuracy
from sslvit.evaluate.mixing import mix_batch, smooth_targets, soft_cross_entropy
from sslvit.evaluate.report import check_new_run_dir, result_json, save_result
from sslvit.models import EncoderInfo, create_vit, load_encoder, select_attention_kernel
from sslvit.models.vit import resize_pos_embed
from sslvit.train.checkpoint import save_checkpoint
from sslvit.train.distributed import resolve_device, resolve_precision
from sslvit.train.logger import RunLogger, format_duration, log_interval
from sslvit.train.loop import AUTOCAST_DTYPES, step_seed, supervised_step
from sslvit.train.optim import cosine_schedule, set_learning_rate
from sslvit.train.sampler import StepBatches

log = logging.getLogger("sslvit")


@dataclasses.dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (defaults: MAE's recipe, see the module docstring).

    `layer_decay` None means 0.75 for a pretrained encoder and 1 (no decay) from scratch, where
    no layer holds anything worth protecting. `img_size` None keeps the encoder's input size
    (from scratch: 224). `model` and `patch_size` only apply from scratch. `labels` is a budget
    for `label_subset` ("10%", "5" per class, None for all). `base_lr` is per 256 images.
    `min_steps` lengthens a run on few labels to at least that many optimiser steps (whole
    epochs): 1 % of a dataset is a few steps per epoch, too few for any encoder to learn in.
    `eval_every` 0 tests only after the last epoch.
    """

    epochs: int = 100
    min_steps: int = 0
    batch_size: int = 64
    base_lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    layer_decay: float | None = None
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    img_size: int | tuple[int, int] | None = None
    model: str = "vit_tiny"
    patch_size: int = 16
    labels: str | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int = 2
    eval_every: int = 1
    log_every: int = 20


def _check(config: FinetuneConfig) -> None:
    """Fail before any work on a setting outside its range, naming the option."""
    limits = [
        ("--epochs", config.epochs, config.epochs >= 1, "at least 1"),
        ("--batch-size", config.batch_size, config.batch_size >= 2, "at least 2"),
        ("--lr", config.base_lr, config.base_lr > 0, "above 0"),
        (
            "--layer-decay",
            config.layer_decay,
            config.layer_decay is None or 0 < config.layer_decay <= 1,
            "in (0, 1]",
        ),
        ("--drop-path", config.drop_path, 0 <= config.drop_path < 1, "in [0, 1)"),
        (
            "--label-smoothing",
            config.label_smoothing,
            0 <= config.label_smoothing < 1,
            "in [0, 1)",
        ),
        ("--mixup", config.mixup, config.mixup >= 0, "0 or more"),
        ("--cutmix", config.cutmix, config.cutmix >= 0, "0 or more"),
        (
            "--min-crop",
            config.crop_scale[0],
            0 < config.crop_scale[0] <= config.crop_scale[1],
            f"in (0, {config.crop_scale[1]:g}]",
        ),
        ("--min-steps", config.min_steps, config.min_steps >= 0, "0 or more"),
        ("--eval-every", config.eval_every, config.eval_every >= 0, "0 or more"),
    ]
    for option, value, ok, allowed in limits:
        if not ok:
            raise ValueError(f"{option} {value}: must be {allowed}")


def _build(encoder: str | Path | None, config: FinetuneConfig, train_images):
    """The encoder to fine-tune and the `EncoderInfo` of its input, at the fine-tuning size."""
    if encoder is None:
        size = config.img_size or 224
        size = (size, size) if isinstance(size, int) else tuple(size)
        chans = train_images.in_chans
        vit = create_vit(config.model, size, config.patch_size, chans, config.drop_path)
        mean, std = channel_stats(train_images, 1000, config.seed)
        info = EncoderInfo(config.model, size, config.patch_size, chans, mean, std, vit.embed_dim)
        return vit, info
    vit, info = load_encoder(encoder, "cpu", config.drop_path)
    if config.img_size is not None:
        size = config.img_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size != info.img_size:
            resize_pos_embed(vit, size)
            log.info("position embedding resized from %s to %s px", info.img_size, size)
            info = dataclasses.replace(info, img_size=size)
    return vit, info


def _transforms(info: EncoderInfo, train_images, test_images, config: FinetuneConfig):
    """Training and test transforms into an encoder with input `info`; checks the channels."""
    test = encoder_transform(info, test_images.in_chans, "the test")
    encoder_transform(info, train_images.in_chans, "the training")
    height, width = info.img_size
    size = height if height == width else (height, width)
    train = train_transform(size, info.mean, info.std, config.crop_scale, config.hflip)
    if train_images.in_chans != info.in_chans:
        train = v2.Compose([_grey_to_rgb, train])
    return train, test


class Finetuner:
    """One fine-tuning run; `run()` trains, evaluates and writes the run folder.

    The folder receives `finetune.json` (settings), `metrics.jsonl` and `tb/`,
    `checkpoints/last.pt` (model, optimizer, scaler, epoch) and `checkpoints/best.pt` (the model
    with the best test top-1 so far), both written atomically with the image and patch size,
    `confusion.json` and `figures/confusion.png` of the last model, and `eval/finetune.json`.

    Args:
        encoder: Run folder or `.safetensors` file of the encoder, or None for a ViT from scratch.
        train_images: Labelled training images; a stratified subset is drawn by `config.labels`.
        test_images: Labelled test images with the same classes.
        out: Run folder; must not hold a run already.
        config: The settings.
    """

    def __init__(self, encoder, train_images, test_images, out, config: FinetuneConfig):
        _check(config)
        self.config, self.encoder_source = config, encoder
        self.run_dir = Path(out)
        check_new_run_dir(self.run_dir, "finetune.json")
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.dtype = AUTOCAST_DTYPES.get(self.precision)
        n_classes = _n_classes(train_images, test_images)
        self.classes = list(train_images.classes or [str(k) for k in range(n_classes)])
        chosen = label_subset(train_images.labels, config.labels, config.seed, self.classes)
        self.train_images, self.test_images = Subset(train_images, chosen), test_images

        torch.manual_seed(config.seed)
        # normalisation from scratch: statistics of all training images, labelled or not
        vit, self.info = _build(encoder, config, train_images)
        self.model = ViTClassifier(vit, n_classes, self.info.pool).to(self.device)
        select_attention_kernel(self.model, self.device)
        self.train_tf, self.test_tf = _transforms(self.info, train_images, test_images, config)
        self._plan(encoder is not None)

    def _plan(self, pretrained: bool) -> None:
        cfg = self.config
        self.batch = min(cfg.batch_size, len(self.train_images))
        if self.batch < 2:  # the head's BatchNorm needs two images to a batch
            raise ValueError(
                f"--batch-size {cfg.batch_size} with {len(self.train_images)} labelled training "
                "image(s): fine-tuning needs batches of at least 2"
            )
        self.steps_per_epoch = len(self.train_images) // self.batch
        self.epochs = max(cfg.epochs, math.ceil(cfg.min_steps / self.steps_per_epoch))
        self.total_steps = self.epochs * self.steps_per_epoch
        self.warmup_steps = min(
            round(cfg.warmup_epochs * self.steps_per_epoch), self.total_steps // 5
        )
        self.peak_lr = cfg.base_lr * self.batch / 256
        default_decay = 0.75 if pretrained else 1.0
        self.layer_decay = default_decay if cfg.layer_decay is None else cfg.layer_decay
        groups = finetune_param_groups(self.model, cfg.weight_decay, self.layer_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), fused=True)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _loader(self) -> DataLoader:
        cfg = self.config
        views = SeededViews(self.train_images, self.train_tf, cfg.seed)
        sampler = StepBatches(len(self.train_images), self.batch, self.total_steps, cfg.seed)
        return DataLoader(
            views,
            batch_sampler=sampler,
            num_workers=cfg.workers,
            persistent_workers=cfg.workers > 0,
            pin_memory=self.device.type == "cuda",
        )

    def _step(self, step: int, views, labels, rng) -> float:
        cfg = self.config
        set_learning_rate(
            self.optimizer,
            cosine_schedule(step, self.total_steps, self.warmup_steps, self.peak_lr, cfg.min_lr),
        )
        torch.manual_seed(step_seed(cfg.seed, step, 0))  # drop path
        views, labels = views.to(self.device), labels.to(self.device)
        targets = smooth_targets(labels, len(self.classes), cfg.label_smoothing)
        views, targets, _ = mix_batch(views, targets, cfg.mixup, cfg.cutmix, rng)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.model(views)
        loss = soft_cross_entropy(logits, targets)
        return supervised_step(
            loss, step, self.precision, self.run_dir, self.scaler, self.optimizer
        )

    def _save(self, name: str, epoch: int, top1: float, full: bool) -> None:
        state = {
            "model": self.model.state_dict(),
            "info": dataclasses.asdict(self.info),
            "classes": self.classes,
            "epoch": epoch,
            "top1": top1,
        }
        if full:
            state.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict())
        save_checkpoint(state, self.run_dir / "checkpoints" / name)

    def _describe(self) -> dict:
        """What a reader of the result needs to know about this run."""
        cfg = self.config
        return {
            "n_train": len(self.train_images),
            "n_test": len(self.test_images),
            "n_classes": len(self.classes),
            "labels": cfg.labels,
            "seed": cfg.seed,
            "encoder": None if self.encoder_source is None else str(self.encoder_source),
            "pool": self.info.pool,
            "img_size": list(self.info.img_size),
            "patch_size": self.info.patch_size,
            "epochs": self.epochs,
            "lr": self.peak_lr,
            "layer_decay": self.layer_decay,
        }

    def _evaluate(self):
        logits, labels = predict(
            self.model, self.test_images, self.test_tf, self.device, self.dtype
        )
        return logits, labels, topk_accuracy(logits, labels)

    def run(self) -> dict:
        """Train, evaluating on the test images every `eval_every` epochs and at the end.

        Returns:
            The result (also in `eval/finetune.json`): `top1`/`top5` of the last model, the
            best epoch's `best_top1` and `best_epoch` (chosen on the test set, so optimistic),
            `per_class` accuracy, sizes and settings.
        """
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            **dataclasses.asdict(cfg),
            **self._describe(),
            "encoder_info": dataclasses.asdict(self.info),
            "classes": self.classes,
            **{k: getattr(self, k) for k in ("batch", "total_steps", "warmup_steps", "precision")},
            "device": str(self.device),
        }
        (self.run_dir / "finetune.json").write_text(json.dumps(settings, indent=2) + "\n")
        logger = RunLogger(self.run_dir, self.total_steps, 0, True)
        log.info(
            "fine-tuning %s on %d images, testing on %d | %s px | %d epochs, %d steps of %d | "
            "peak lr %.3g (--lr %g x %d / 256), %d warm-up steps | layer decay %g | %s, %s",
            self.encoder_source or f"{cfg.model} from scratch",
            len(self.train_images),
            len(self.test_images),
            "x".join(map(str, self.info.img_size)),
            self.epochs,
            self.total_steps,
            self.batch,
            self.peak_lr,
            cfg.base_lr,
            self.batch,
            self.warmup_steps,
            self.layer_decay,
            self.device,
            self.precision,
        )
        rng = np.random.default_rng(cfg.seed)
        best, losses, scores = {"top1": -1.0, "epoch": -1}, [], {}
        self.model.train()
        every = log_interval(cfg.log_every, self.total_steps)
        for step, (views, labels, _) in enumerate(self._loader()):
            losses.append(self._step(step, views, labels, rng))
            epoch, last_step = step // self.steps_per_epoch, step + 1 == self.total_steps
            lr = self.optimizer.param_groups[-1]["lr"]  # the top layer's, at full rate
            log_now = (step + 1) % every == 0 or last_step
            logger.step(step, self.batch, log_now, {"epoch": epoch, "loss": losses[-1], "lr": lr})
            if (step + 1) % self.steps_per_epoch:
                continue
            record = {"kind": "epoch", "step": step + 1, "epoch": epoch, "loss": np.mean(losses)}
            losses = []
            if (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0) or last_step:
                logits, test_labels, scores = self._evaluate()
                record.update(scores)
                if scores["top1"] > best["top1"]:
                    best = {"top1": scores["top1"], "epoch": epoch}
                    self._save("best.pt", epoch, scores["top1"], full=False)
            logger.record(record)
            self._save("last.pt", epoch, scores.get("top1", math.nan), full=True)
        logger.close()
        log.info("done in %s", format_duration(time.perf_counter() - logger.run_start))
        return self._finish(logits, test_labels, best, float(record["loss"]))

    def _finish(self, logits, labels, best, train_loss) -> dict:
        matrix = confusion_matrix(logits.argmax(dim=1), labels, len(self.classes))
        per_class = per_class_accuracy(matrix, self.classes)
        confusion = {"classes": self.classes, "matrix": matrix.tolist(), "per_class": per_class}
        (self.run_dir / "confusion.json").write_text(result_json(confusion) + "\n")
        scores = topk_accuracy(logits, labels)
        title = f"fine-tuned, last epoch: top-1 {scores['top1']:.1f} % on {len(labels)} images"
        confusion_figure(matrix, self.classes, self.run_dir / "figures" / "confusion.png", title)
        result = {
            "kind": "finetune",
            **scores,
            "best_top1": best["top1"],
            "best_epoch": best["epoch"],
            **self._describe(),
            "train_loss": train_loss,
            "per_class": per_class,
        }
        save_result(self.run_dir, "finetune", result)
        return result


def finetune(encoder, train_images, test_images, out, config: FinetuneConfig | None = None):
    """Fine-tune `encoder` (run folder, `.safetensors`, or None from scratch); see `Finetuner`."""
    return Finetuner(encoder, train_images, test_images, out, config or FinetuneConfig()).run()
