"""Semantic segmentation on an encoder: a decoder trained on labelled masks, in two stages.

Stage one trains the decoder (`sslvit.models.segmentation`) with the encoder frozen, so the
score measures what pretraining put into the patch features. Stage two, when asked for, trains
everything, the encoder at a lower learning rate (`encoder_lr_scale`, 0.1 by default), after a
fresh warm-up. Each stage has its own warm-up and cosine decay; AdamW (0.9, 0.999), weight
decay 0.05 except on norms, biases, position embeddings and tokens. Training crops are random
resized crops (bicubic for the image, nearest for the mask) and flips, applied jointly.

Evaluation resizes each whole test image to the model's input size (its aspect ratio is not
kept), and resizes the logits bilinearly back to the mask's size before the argmax, so scores
are counted on the original pixels. Sliding windows are not used.
"""

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from sslvit.data import SeededViews
from sslvit.data.masks import (
    IGNORE,
    MaskCoding,
    PairTransform,
    mask_coding,
)
from sslvit.evaluate.features import encoder_transform
from sslvit.evaluate.finetune import _build
from sslvit.evaluate.report import check_new_run_dir, save_result, write_text_atomic
from sslvit.evaluate.segment_report import (
    overlay_figure,
    pixel_confusion,
    save_index_png,
    segmentation_scores,
)
from sslvit.models import EncoderInfo, select_attention_kernel
from sslvit.models.segmentation import DECODERS, ViTSegmenter
from sslvit.train.checkpoint import load_checkpoint, save_checkpoint
from sslvit.train.distributed import resolve_device, resolve_precision
from sslvit.train.logger import RunLogger, format_duration, log_interval
from sslvit.train.loop import AUTOCAST_DTYPES, supervised_step
from sslvit.train.optim import cosine_schedule, param_groups, set_learning_rate
from sslvit.train.sampler import StepBatches

log = logging.getLogger("sslvit")


@dataclasses.dataclass
class SegmentConfig:
    """Settings of one segmentation run.

    `epochs` is stage one (encoder frozen), `unfreeze_epochs` stage two (0: no stage two). `lr`
    is the decoder's peak learning rate as it is, not scaled by the batch (every image brings
    thousands of labelled pixels). `img_size` None keeps the encoder's input size (from
    scratch: 224); `model` and `patch_size` only apply from scratch. `decoder` is "conv" (the
    multi-level convolutional decoder) or "linear" (the linear probe on the patch features; see
    `sslvit.models.segmentation`). `ignore_index` is the mask
    value left out of loss and metrics (None: none). `class_names` names the classes in the
    results and the picture's legend, one per class in class order (None: the mask values).
    """

    epochs: int = 30
    unfreeze_epochs: int = 0
    batch_size: int = 8
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    drop_path: float = 0.1
    crop_scale: tuple[float, float] = (0.25, 1.0)
    hflip: bool = True
    img_size: int | tuple[int, int] | None = None
    model: str = "vit_tiny"
    patch_size: int = 16
    decoder: str = "conv"
    n_levels: int = 4
    decoder_width: int = 256
    ignore_index: int | None = 255
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int = 2
    eval_every: int = 1
    log_every: int = 20
    n_figure: int = 4
    class_names: list[str] | None = None


def _check(config: SegmentConfig) -> None:
    limits = [
        ("--epochs", config.epochs, config.epochs >= 1),
        ("--unfreeze-epochs", config.unfreeze_epochs, config.unfreeze_epochs >= 0),
        ("--batch-size", config.batch_size, config.batch_size >= 1),
        ("--lr", config.lr, config.lr > 0),
        ("--encoder-lr-scale", config.encoder_lr_scale, config.encoder_lr_scale > 0),
        ("--min-crop", config.crop_scale[0], 0 < config.crop_scale[0] <= config.crop_scale[1]),
        ("--eval-every", config.eval_every, config.eval_every >= 1),
        ("--decoder", config.decoder, config.decoder in DECODERS),
        ("--levels", config.n_levels, config.n_levels >= 1),  # at most the depth: see __init__
    ]
    for option, value, ok in limits:
        if not ok:
            raise ValueError(f"{option} {value}: out of range (see sslvit segment --help)")


def _as_list(batch):
    return batch


class Segmenter:
    """One segmentation run; `run()` trains, evaluates and writes the run folder.

    The folder receives `segment.json` (settings), `metrics.jsonl` and `tb/`, `checkpoints/
    last.pt` and `best.pt` (best test mIoU; both atomic, with what `load_segmenter` needs),
    `confusion.json`, `predictions/STEM.png` (the last model's masks for the test images, in
    the masks' own values), `figures/segmentation.png` and `eval/segment.json`.

    Args:
        encoder: Run folder or `.safetensors` file of the encoder, or None for a ViT from scratch.
        train_pairs: Training `SegmentationPairs`.
        test_pairs: Test `SegmentationPairs`.
        out: Run folder; must not hold a run already.
        config: The settings.
    """

    def __init__(self, encoder, train_pairs, test_pairs, out, config: SegmentConfig):
        _check(config)
        self.config, self.encoder_source = config, encoder
        self.run_dir = Path(out)
        check_new_run_dir(self.run_dir, "segment.json")
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.dtype = AUTOCAST_DTYPES.get(self.precision)
        self.train_pairs, self.test_pairs = train_pairs, test_pairs
        self.coding = mask_coding(train_pairs.values | test_pairs.values, config.ignore_index)
        if config.class_names is not None:
            if not all(config.class_names):
                raise ValueError(
                    f"--class-names {','.join(config.class_names)!r}: a class name is empty"
                )
            if len(config.class_names) != self.coding.n_classes:
                raise ValueError(
                    f"--class-names: {len(config.class_names)} names for the "
                    f"{self.coding.n_classes} classes of the masks (values "
                    f"{', '.join(self.coding.names)})"
                )
            repeated = sorted({n for n in config.class_names if config.class_names.count(n) > 1})
            if repeated:
                raise ValueError(f"--class-names: {', '.join(repeated)} named twice")
            self.coding = dataclasses.replace(self.coding, names=list(config.class_names))

        torch.manual_seed(config.seed)
        vit, self.info = _build(encoder, config, train_pairs.images)
        if config.n_levels > len(vit.blocks):
            raise ValueError(
                f"--levels {config.n_levels}: the encoder has {len(vit.blocks)} blocks; "
                f"choose 1 to {len(vit.blocks)}"
            )
        for pairs, role in ((train_pairs, "the training"), (test_pairs, "the test")):
            encoder_transform(self.info, pairs.in_chans, role)  # checks the channels
        self.model = ViTSegmenter(
            vit, self.coding.n_classes, config.n_levels, config.decoder_width, config.decoder
        ).to(self.device)
        select_attention_kernel(self.model, self.device)
        self.train_tf = PairTransform(
            self.info.img_size, self.info.mean, self.info.std, self.coding, config.crop_scale,
            config.hflip, grey_to_rgb=train_pairs.in_chans < self.info.in_chans,
        )  # fmt: skip
        self.test_tf = PairTransform(
            self.info.img_size, self.info.mean, self.info.std, self.coding,
            grey_to_rgb=test_pairs.in_chans < self.info.in_chans,
        )  # fmt: skip
        self._plan()
        self._set_stage(1)

    def _plan(self) -> None:
        cfg = self.config
        self.batch = min(cfg.batch_size, len(self.train_pairs))
        self.steps_per_epoch = len(self.train_pairs) // self.batch
        self.stage_steps = [
            cfg.epochs * self.steps_per_epoch,
            cfg.unfreeze_epochs * self.steps_per_epoch,
        ]
        self.total_steps = sum(self.stage_steps)
        groups = []
        for part, scale in ((self.model.decoder, 1.0), (self.model.encoder, cfg.encoder_lr_scale)):
            no_decay = part.no_weight_decay() if hasattr(part, "no_weight_decay") else set()
            for group in param_groups(part, cfg.weight_decay, no_decay):
                groups.append({**group, "lr_scale": scale})
        # the encoder's groups stay in the optimizer while it is frozen: with no gradients,
        # AdamW leaves them exactly as they are (no step, no weight decay)
        self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), fused=True)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _lr(self, step: int) -> float:
        first = step < self.stage_steps[0]
        stage_total = self.stage_steps[0 if first else 1]
        local = step if first else step - self.stage_steps[0]
        warmup = min(round(self.config.warmup_epochs * self.steps_per_epoch), stage_total // 5)
        return cosine_schedule(local, stage_total, warmup, self.config.lr, self.config.min_lr)

    def _set_stage(self, stage: int) -> None:
        self.stage = stage
        self.model.train()
        self.model.set_encoder_trainable(stage == 2)
        if stage == 1:
            self.model.encoder.eval()  # frozen: no drop path

    def _loader(self) -> DataLoader:
        cfg = self.config
        views = SeededViews(self.train_pairs, self.train_tf, cfg.seed)
        sampler = StepBatches(len(self.train_pairs), self.batch, self.total_steps, cfg.seed)
        return DataLoader(
            views,
            batch_sampler=sampler,
            num_workers=cfg.workers,
            persistent_workers=cfg.workers > 0,
            pin_memory=self.device.type == "cuda",
        )

    def _step(self, step: int, images, targets) -> float:
        set_learning_rate(self.optimizer, self._lr(step))
        images, targets = images.to(self.device), targets.to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.model(images)
        # a mean over the labelled pixels only; a crop that is all ignored adds nothing
        n_kept = (targets != IGNORE).sum().clamp_min(1)
        loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
        loss = loss / n_kept
        return supervised_step(
            loss, step, self.precision, self.run_dir, self.scaler, self.optimizer
        )

    def _save(self, name: str, epoch: int, miou: float, full: bool) -> None:
        state = {
            "model": self.model.state_dict(),
            "info": dataclasses.asdict(self.info),
            "coding": dataclasses.asdict(self.coding),
            "decoder": self.config.decoder,
            "n_levels": self.config.n_levels,
            "decoder_width": self.config.decoder_width,
            "epoch": epoch,
            "miou": miou,
        }
        if full:
            state.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict())
        save_checkpoint(state, self.run_dir / "checkpoints" / name)

    def evaluate(self, write_to: Path | None = None) -> tuple[torch.Tensor, list]:
        """The test set's pixel confusion matrix, and the first `n_figure` pictures' rows.

        With `write_to`, every predicted mask is written there as `STEM.png`.
        """
        was_training = self.model.training
        self.model.eval()
        n_classes = self.coding.n_classes
        matrix, rows = torch.zeros(n_classes, n_classes, dtype=torch.int64), []
        views = SeededViews(self.test_pairs, self.test_tf, 0)
        loader = DataLoader(views, batch_size=8, collate_fn=_as_list, num_workers=0)
        autocast = torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype is not None
        )
        with torch.no_grad(), autocast:
            for batch in loader:
                inputs = torch.stack([image for (image, _), _, _ in batch]).to(self.device)
                logits = self.model(inputs).float()
                for j, ((_, targets), _, i) in enumerate(batch):
                    full = F.interpolate(
                        logits[j : j + 1], size=tuple(targets.shape), mode="bilinear"
                    )
                    predicted = full[0].argmax(0).cpu()
                    matrix += pixel_confusion(predicted, targets, n_classes)
                    if write_to is not None:
                        name = self.test_pairs.names[i]
                        values = self.coding.decode(predicted.numpy())
                        palette = None if self.coding.binary else self.test_pairs.palette
                        save_index_png(values, write_to / f"{name}.png", palette)
                    if i < self.config.n_figure:
                        image = self.test_pairs.images.read(i)
                        rows.append((self.test_pairs.names[i], image, targets, predicted))
        self.model.train(was_training)
        if was_training and self.stage == 1:
            self.model.encoder.eval()
        return matrix, rows

    def _describe(self) -> dict:
        cfg = self.config
        return {
            "n_train": len(self.train_pairs),
            "n_test": len(self.test_pairs),
            "n_classes": self.coding.n_classes,
            "classes": self.coding.names,
            "binary_masks": self.coding.binary,
            "ignore_index": self.coding.ignore_index,
            "seed": cfg.seed,
            "encoder": None if self.encoder_source is None else str(self.encoder_source),
            "img_size": list(self.info.img_size),
            "patch_size": self.info.patch_size,
            "decoder": cfg.decoder,
            "blocks": self.model.blocks,
            "epochs": cfg.epochs,
            "unfreeze_epochs": cfg.unfreeze_epochs,
            "lr": cfg.lr,
            "encoder_lr_scale": cfg.encoder_lr_scale,
        }

    def run(self) -> dict:
        """Train both stages, testing every `eval_every` epochs and at the end of each stage.

        Returns:
            The result (also in `eval/segment.json`): `miou`, `pixel_acc` and `per_class_iou`
            of the last model, the best epoch's `best_miou` and `best_epoch` (chosen on the
            test set, so optimistic), sizes and settings.
        """
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            **dataclasses.asdict(cfg),
            **self._describe(),
            "encoder_info": dataclasses.asdict(self.info),
            **{k: getattr(self, k) for k in ("batch", "total_steps", "precision")},
            "device": str(self.device),
        }
        write_text_atomic(self.run_dir / "segment.json", json.dumps(settings, indent=2))
        logger = RunLogger(self.run_dir, self.total_steps, 0, True)
        log.info(
            "segmenting with %s: %d training pairs, %d test | %d classes | %s px | %d + %d "
            "epochs (frozen + unfrozen) of %d steps of %d | %s, %s",
            self.encoder_source or f"{cfg.model} from scratch",
            len(self.train_pairs),
            len(self.test_pairs),
            self.coding.n_classes,
            "x".join(map(str, self.info.img_size)),
            cfg.epochs,
            cfg.unfreeze_epochs,
            self.steps_per_epoch,
            self.batch,
            self.device,
            self.precision,
        )
        best, losses, scores = {"miou": -1.0, "epoch": -1}, [], {}
        self._set_stage(1)
        every = log_interval(cfg.log_every, self.total_steps)
        for step, ((images, targets), _, _) in enumerate(self._loader()):
            if step == self.stage_steps[0]:
                log.info(
                    "stage two: encoder unfrozen at %g x the decoder's lr", cfg.encoder_lr_scale
                )
                self._set_stage(2)
            losses.append(self._step(step, images, targets))
            epoch = step // self.steps_per_epoch
            stage_end = step + 1 in (self.stage_steps[0], self.total_steps)
            log_now = (step + 1) % every == 0 or step + 1 == self.total_steps
            lr = self.optimizer.param_groups[0]["lr"]  # the decoder's
            logger.step(step, self.batch, log_now, {"epoch": epoch, "loss": losses[-1], "lr": lr})
            if (step + 1) % self.steps_per_epoch:
                continue
            record = {"kind": "epoch", "step": step + 1, "epoch": epoch, "stage": self.stage}
            record["loss"], losses = float(np.mean(losses)), []
            if (epoch + 1) % cfg.eval_every == 0 or stage_end:
                matrix, _ = self.evaluate()
                scores = segmentation_scores(matrix, self.coding.names)
                record.update(miou=scores["miou"], pixel_acc=scores["pixel_acc"])
                if scores["miou"] > best["miou"]:
                    best = {"miou": scores["miou"], "epoch": epoch}
                    self._save("best.pt", epoch, scores["miou"], full=False)
            logger.record(record)
            self._save("last.pt", epoch, scores.get("miou", math.nan), full=True)
        logger.close()
        log.info("done in %s", format_duration(time.perf_counter() - logger.run_start))
        return self._finish(best, record["loss"])

    def _finish(self, best: dict, train_loss: float) -> dict:
        matrix, rows = self.evaluate(write_to=self.run_dir / "predictions")
        scores = segmentation_scores(matrix, self.coding.names)
        confusion = {"classes": self.coding.names, "matrix": matrix.tolist()}
        write_text_atomic(self.run_dir / "confusion.json", json.dumps(confusion))
        title = (
            f"last model: mIoU {scores['miou']:.1f} %, pixel accuracy {scores['pixel_acc']:.1f} %"
        )
        figure = self.run_dir / "figures" / "segmentation.png"
        overlay_figure(rows, self.coding.n_classes, figure, title, self.coding.names)
        result = {
            "kind": "segment",
            "miou": scores["miou"],
            "pixel_acc": scores["pixel_acc"],
            "best_miou": best["miou"],
            "best_epoch": best["epoch"],
            **self._describe(),
            "train_loss": train_loss,
            "per_class_iou": scores["per_class_iou"],
        }
        save_result(self.run_dir, "segment", result)
        return result


def load_segmenter(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a trained segmenter from `checkpoints/best.pt` or `last.pt`.

    Returns:
        `(model, info, coding)`: the model in eval mode on `device`, the `EncoderInfo` of its
        input (size, channels, normalisation) and the `MaskCoding` of its classes.
    """
    saved = load_checkpoint(path)
    info, coding = EncoderInfo(**saved["info"]), MaskCoding(**saved["coding"])
    model = ViTSegmenter(
        info.build(),
        coding.n_classes,
        saved["n_levels"],
        saved["decoder_width"],
        saved.get("decoder", "conv"),  # checkpoints before the linear decoder had only conv
    )
    model.load_state_dict(saved["model"])
    return model.to(device).eval(), info, coding


def segment(encoder, train_pairs, test_pairs, out, config: SegmentConfig | None = None) -> dict:
    """Train and test a segmenter on `encoder` (run folder, `.safetensors`, or None from
    scratch); see `Segmenter`."""
    return Segmenter(encoder, train_pairs, test_pairs, out, config or SegmentConfig()).run()
