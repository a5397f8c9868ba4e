"""The `sslvit` command line: parses, wires, and calls into the layers below."""

import argparse
import json
import logging
import os
import re
import sys
from importlib import resources
from pathlib import Path

from sslvit.methods import method_names
from sslvit.models import MODELS

log = logging.getLogger("sslvit")


def _recipe_path(name: str) -> Path:
    """A recipe file path, or the name of a built-in recipe in `sslvit/recipes/`."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    builtin = resources.files("sslvit") / "recipes" / f"{name}.yaml"
    if not builtin.is_file():
        known = sorted(p.name[:-5] for p in (resources.files("sslvit") / "recipes").iterdir())
        raise FileNotFoundError(
            f"{name}: no such recipe file; built-in recipes: {', '.join(known)}"
        )
    return Path(str(builtin))


def build_config(args: argparse.Namespace):
    """Defaults, then the recipe, then named options, then `--set` overrides."""
    from sslvit.train.config import Config, apply_overrides, load_config

    if args.resume:
        out = args.out or Config().run.out
        saved = Path(out) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"{saved}: nothing to resume (no config.yaml in --out)")
        # a resumed run keeps its own config; only how it executes may change
        allowed = ("run.", "data.workers=")
        for item in args.set:
            if not item.startswith(allowed) or item.startswith("run.out="):
                raise ValueError(f"--set {item}: only run.* and data.workers can change on resume")
        fixed = {
            "--config": args.config,
            "--data": args.data,
            "--method": args.method,
            "--model": args.model,
            "--img-size": args.img_size,
            "--patch-size": args.patch_size,
            "--epochs": args.epochs,
            "--batch-size": args.batch_size,
            "--base-lr": args.base_lr,
            "--seed": args.seed,
        }
        given = [name for name, value in fixed.items() if value is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)}: a resumed run keeps the settings in {saved}; only "
                "--device, --precision, --workers and --set run.* can change"
            )
        # the folder given is the run, wherever it was first written (a moved or copied run)
        run = [f"run.out={json.dumps(str(out))}"]
        for name, value in (("device", args.device), ("precision", args.precision)):
            if value is not None:
                run.append(f"run.{name}={json.dumps(value)}")
        if args.workers is not None:
            run.append(f"data.workers={args.workers}")
        return apply_overrides(load_config(saved), run + list(args.set))

    config = load_config(_recipe_path(args.config)) if args.config else Config()
    named = {
        "data.path": args.data,
        "method.name": args.method,
        "model.name": args.model,
        "data.img_size": args.img_size,
        "model.patch_size": args.patch_size,
        "optim.epochs": args.epochs,
        "optim.batch_size": args.batch_size,
        "optim.base_lr": args.base_lr,
        "data.workers": args.workers,
        "data.strict": True if args.strict else None,
        "run.out": args.out,
        "run.seed": args.seed,
        "run.device": args.device,
        "run.precision": args.precision,
    }
    if args.data is None and not args.config:
        # the built-in sample is 28 px MNIST: a 7x7 grid of 4 px patches
        named["data.img_size"] = args.img_size or 28
        named["model.patch_size"] = args.patch_size or 4
    items = [f"{k}={json.dumps(v)}" for k, v in named.items() if v is not None]
    return apply_overrides(config, items + list(args.set))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from sslvit.data import UnreadableImageError
    from sslvit.train.loop import Trainer
    from sslvit.viz import recon_figure

    trainer = Trainer(build_config(args), resume=args.resume)
    run_dir = trainer.train()
    if trainer.dist.is_main and hasattr(trainer.method, "reconstruct"):
        try:
            figure = recon_figure(run_dir, run_dir / "figures" / "recon.png", device=trainer.device)
            log.info("reconstructions: %s", figure)
        except (UnreadableImageError, ValueError) as err:
            # the run itself is done and saved; a picture that cannot be drawn does not undo it
            log.warning("no reconstruction picture: %s", err)


def _eval_sets(args: argparse.Namespace, in_chans_hint=None):
    """The labelled training and test sets an eval command works on."""
    from sslvit.data import Subset, open_images, stratified_split

    if args.data is None:
        if args.test_data is not None:
            raise ValueError("--test-data needs --data")
        return open_images("sample:train", labeled=True), open_images("sample:test", labeled=True)
    train = open_images(args.data, labeled=True, strict=args.strict)
    if args.test_data is not None:
        return train, open_images(args.test_data, labeled=True, strict=args.strict)
    train_idx, test_idx = stratified_split(train.labels, args.split, args.seed)
    log.info(
        "no --test-data: holding out a stratified %s of %s as the test set", args.split, args.data
    )
    return Subset(train, train_idx), Subset(train, test_idx)


def cmd_eval(args: argparse.Namespace) -> None:
    from sslvit.evaluate.classify import evaluate_encoder
    from sslvit.evaluate.report import format_table, save_result
    from sslvit.models import load_encoder
    from sslvit.train.distributed import resolve_device

    device = resolve_device(args.device)
    encoder, info = load_encoder(args.encoder, device)
    train, test = _eval_sets(args)
    result = evaluate_encoder(
        args.kind,
        encoder,
        info,
        train,
        test,
        labels_spec=args.labels,
        seed=args.seed,
        device=device,
        pool=args.pool,
    )
    result["encoder"] = str(args.encoder)
    result["data"] = args.data or "sample"
    if args.test_data is not None:
        result["test_data"] = args.test_data
    elif args.data is not None:
        result["test_split"] = args.split
    columns = [
        c for c in ("kind", "pool", "labels", "n_train", "n_test", "top1", "top5") if c in result
    ]
    print(format_table([result], columns))
    run_dir = Path(args.encoder) if Path(args.encoder).is_dir() else Path(args.encoder).parent
    saved = save_result(run_dir, _result_name(args), result)
    log.info("saved %s", saved)
    print(json.dumps(result))


def _after_interrupt(args: argparse.Namespace) -> str:
    """What to type next after Ctrl-C, for the command that was stopped."""
    if args.func is cmd_demo:
        return "run `sslvit demo` again to continue the run from its last checkpoint"
    if args.func is cmd_pretrain:
        from sslvit.train.config import Config

        out = Path(getattr(args, "out", None) or Config().run.out)
        if (out / "checkpoints" / "last.pt").is_file():
            return f"the last checkpoint is kept; continue with --out {out} --resume"
        return "no checkpoint was written yet; run the same command again (without --resume)"
    return "stopped"


def _result_name(args: argparse.Namespace) -> str:
    """`knn`, or `linear-10pct-seed0` for a label budget: one file per protocol, not per kind."""
    name = args.kind
    if args.labels:
        budget = str(args.labels).strip().replace("%", "pct").replace(".", "p")
        name += f"-{re.sub(r'[^A-Za-z0-9_.-]', '', budget)}-seed{args.seed}"
    return name


def _size(text: str) -> int | tuple[int, int]:
    """An image size: "32" (square) or "32x48" (height x width)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 32 or 32x48")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def cmd_finetune(args: argparse.Namespace) -> None:
    from sslvit.evaluate.finetune import FinetuneConfig, finetune
    from sslvit.evaluate.report import format_table

    scratch = args.encoder.lower() == "none"
    on_sample = args.data is None
    config = FinetuneConfig(
        **{k: v for k, v in vars(args).items() if k in FINETUNE_OPTIONS and v is not None}
    )
    if args.min_crop is not None:
        config.crop_scale = (args.min_crop, 1.0)
    if scratch and on_sample:
        # the built-in sample is 28 px MNIST, as in `pretrain`
        config.img_size, config.patch_size = args.img_size or 28, args.patch_size or 4
    train, test = _eval_sets(args)
    result = finetune(None if scratch else args.encoder, train, test, args.out, config)
    result["data"] = args.data or "sample"
    columns = ["kind", "labels", "n_train", "n_test", "top1", "top5", "best_top1", "best_epoch"]
    print(format_table([result], [c for c in columns if c in result]))
    log.info("run folder: %s", args.out)
    print(json.dumps(result))


def cmd_segment(args: argparse.Namespace) -> None:
    from sslvit.data.masks import SegmentationPairs
    from sslvit.evaluate.report import format_table
    from sslvit.evaluate.segment import SegmentConfig, segment

    if (args.test_images is None) != (args.test_masks is None):
        raise ValueError("--test-images and --test-masks go together")
    config = SegmentConfig(
        **{k: v for k, v in vars(args).items() if k in SEGMENT_OPTIONS and v is not None}
    )
    if args.unfreeze and args.unfreeze_epochs is None:
        config.unfreeze_epochs = config.epochs
    if args.min_crop is not None:
        config.crop_scale = (args.min_crop, 1.0)
    if args.ignore_index is not None and args.ignore_index < 0:
        config.ignore_index = None
    train = SegmentationPairs(args.images, args.masks, strict=args.strict)
    if args.test_images is not None:
        test = SegmentationPairs(args.test_images, args.test_masks, strict=args.strict)
    else:
        log.info(
            "no --test-images: holding out a random %s of the pairs as the test set", args.split
        )
        train, test = train.split(args.split, args.seed)
    scratch = args.encoder.lower() == "none"
    result = segment(None if scratch else args.encoder, train, test, args.out, config)
    columns = ["kind", "n_train", "n_test", "n_classes", "miou", "pixel_acc", "best_miou"]
    print(format_table([result], columns))
    print(
        format_table(
            [{"class": k, "iou": v} for k, v in result["per_class_iou"].items()], ["class", "iou"]
        )
    )
    log.info("run folder: %s", args.out)
    print(json.dumps(result))


def cmd_show(args: argparse.Namespace) -> None:
    from sslvit.viz import attention_figure, curves_figure, embedding_figure, recon_figure

    needs = {"recon": "encoder", "attention": "encoder", "embedding": "features", "curves": "run"}
    if getattr(args, needs[args.what]) is None:
        raise ValueError(f"show {args.what} needs --{needs[args.what]}")
    if args.what == "recon":
        out = recon_figure(args.encoder, args.out, data=args.data, n_images=args.n, seed=args.seed)
    elif args.what == "attention":
        bands = [int(b) for b in args.bands.split(",")] if args.bands else None
        out = attention_figure(args.encoder, args.out, data=args.data, n_images=args.n, bands=bands)
    elif args.what == "embedding":
        out = embedding_figure(args.features, args.out, method=args.method, seed=args.seed)
    else:
        out = curves_figure(args.run, args.out)
    print(out)


def cmd_embed(args: argparse.Namespace) -> None:
    from sslvit.evaluate.embed import embed_folder

    out = embed_folder(
        args.encoder,
        args.data,
        args.out,
        tokens=args.tokens,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        strict=args.strict,
    )
    if out is not None:
        print(out)


def cmd_retrieve(args: argparse.Namespace) -> None:
    from sslvit.evaluate.report import format_table
    from sslvit.evaluate.retrieval import retrieve_files

    result = retrieve_files(
        args.index, args.query, args.k, args.encoder, args.out, args.batch_size, args.device
    )
    rows = result.pop("rows")
    shown = [
        {**row, "similarity": f"{row['similarity']:.4f}"} for row in rows[: args.k * args.show]
    ]
    print(format_table(shown, list(rows[0])))
    if len(shown) < len(rows):
        where = f"all in {args.out}" if args.out else "--out writes all"
        print(f"... and {result['n_queries'] - args.show} more queries ({where})")
    print(json.dumps(result))


def cmd_cluster(args: argparse.Namespace) -> None:
    from sslvit.evaluate.cluster import cluster_file
    from sslvit.evaluate.report import format_table

    result = cluster_file(args.features, args.k, seed=args.seed, out=args.out)
    columns = [c for c in ("n", "k", "nmi", "ari", "purity", "inertia") if c in result]
    print(format_table([result], columns))
    print(json.dumps(result))


def cmd_export(args: argparse.Namespace) -> None:
    from sslvit.export import export_encoder

    print(export_encoder(args.encoder, args.out, format=args.format))


def cmd_demo(args: argparse.Namespace) -> None:
    from sslvit.demo import run_demo

    run_demo(args.out, epochs=args.epochs, device=args.device)


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder without labels")
    p.add_argument("--data", help="folder of images (recursive); omitted: the built-in sample")
    p.add_argument("--method", choices=method_names(), help="pretraining method (default mae)")
    p.add_argument("--model", choices=sorted(MODELS), help="encoder size (default vit_tiny)")
    p.add_argument(
        "--img-size", type=int, help="input side in pixels (default 224; 28 on the sample)"
    )
    p.add_argument("--patch-size", type=int, help="patch side in pixels; must divide --img-size")
    p.add_argument("--epochs", type=float, help="passes over the data, may be fractional (100)")
    p.add_argument("--batch-size", type=int, help="images per step per process (default 128)")
    p.add_argument(
        "--base-lr", type=float, help="learning rate per 256 images of effective batch (1.5e-4)"
    )
    p.add_argument(
        "--workers", type=int, help="data-loading processes per training process (default 2)"
    )
    p.add_argument("--strict", action="store_true", help="stop on the first unreadable file")
    p.add_argument("--out", help="run folder (default runs/mae)")
    p.add_argument("--seed", type=int, help="seed of weights, data order, crops and masks")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast dtype; auto = bf16 on capable GPUs/CPUs, fp32 on other CPUs",
    )
    p.add_argument(
        "--config",
        help="recipe: a YAML file or a built-in name (mae, mae_tiny32, or any method's name)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set optim.warmup_epochs=2 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.set_defaults(func=cmd_pretrain)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="kNN or linear probe on frozen features")
    p.add_argument("kind", choices=["knn", "linear"])
    p.add_argument("--encoder", required=True, help="run folder or exported .safetensors")
    p.add_argument("--data", help="labelled folder (class sub-folders); omitted: the sample")
    p.add_argument("--test-data", help="labelled test folder with the same classes")
    p.add_argument(
        "--split", type=float, default=0.2, help="held-out fraction when no --test-data (0.2)"
    )
    p.add_argument("--labels", help="labels used for training: '10%%' or a count per class")
    p.add_argument("--pool", choices=["cls", "mean"], help="feature pooling (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and the probe")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    p.add_argument("--strict", action="store_true", help="stop on the first unreadable file")
    p.set_defaults(func=cmd_eval)


FINETUNE_OPTIONS = (
    "epochs", "batch_size", "base_lr", "layer_decay", "drop_path", "label_smoothing", "mixup",
    "cutmix", "img_size", "model", "patch_size", "labels", "seed", "device", "precision",
    "workers", "eval_every", "hflip",
)  # fmt: skip


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="train a new head and the whole encoder on labels")
    p.add_argument(
        "--encoder", required=True, help="run folder or .safetensors, or 'none' (from scratch)"
    )
    p.add_argument("--data", help="labelled folder (class sub-folders); omitted: the sample")
    p.add_argument("--test-data", help="labelled test folder with the same classes")
    p.add_argument(
        "--split", type=float, default=0.2, help="held-out fraction when no --test-data (0.2)"
    )
    p.add_argument("--labels", help="labels used for training: '10%%' or a count per class")
    p.add_argument(
        "--img-size",
        type=_size,
        help="input size, 32 or HxW; a pretrained position embedding is resized (default: the "
        "encoder's; from scratch 224, 28 on the sample)",
    )
    p.add_argument("--model", choices=sorted(MODELS), help="--encoder none: size (vit_tiny)")
    p.add_argument(
        "--patch-size", type=int, help="--encoder none: patch side (16; 4 on the sample)"
    )
    p.add_argument("--epochs", type=int, help="passes over the labelled images (100)")
    p.add_argument("--batch-size", type=int, help="images per step, capped at the labels (64)")
    p.add_argument(
        "--lr",
        dest="base_lr",
        type=float,
        help="learning rate per 256 images of batch (1e-3, MAE's); the head's, lower layers less",
    )
    p.add_argument(
        "--layer-decay",
        type=float,
        help="lr factor per block towards the input (0.75; 1 = none, the default from scratch)",
    )
    p.add_argument("--drop-path", type=float, help="stochastic depth rate (0.1)")
    p.add_argument("--label-smoothing", type=float, help="target mass spread over classes (0.1)")
    p.add_argument("--mixup", type=float, help="mixup alpha, 0 = off (default; MAE used 0.8)")
    p.add_argument("--cutmix", type=float, help="cutmix alpha, 0 = off (default; MAE used 1.0)")
    p.add_argument(
        "--min-crop",
        type=float,
        help="smallest random crop, as a share of the image's area (0.08; raise it for small "
        "images where an 8 %% crop loses the object)",
    )
    p.add_argument(
        "--no-hflip",
        dest="hflip",
        action="store_false",
        default=None,
        help="no random horizontal flips (for digits, text, or anything a mirror changes)",
    )
    p.add_argument("--eval-every", type=int, help="test every N epochs and at the end (1)")
    p.add_argument("--out", default="runs/finetune", help="run folder (default runs/finetune)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits, labels and training")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast dtype; auto = bf16 on capable GPUs/CPUs, fp32 on other CPUs",
    )
    p.add_argument("--workers", type=int, help="data-loading processes (default 2)")
    p.add_argument("--strict", action="store_true", help="stop on the first unreadable file")
    p.set_defaults(func=cmd_finetune)


SEGMENT_OPTIONS = (
    "epochs", "unfreeze_epochs", "batch_size", "lr", "encoder_lr_scale", "img_size", "model",
    "patch_size", "ignore_index", "seed", "device", "precision", "workers", "eval_every", "hflip",
)  # fmt: skip


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="train a segmentation decoder on the encoder, score mIoU")
    p.add_argument(
        "--encoder", required=True, help="run folder or .safetensors, or 'none' (from scratch)"
    )
    p.add_argument("--images", required=True, help="folder of training images")
    p.add_argument(
        "--masks",
        required=True,
        help="folder of index masks (8-bit grey or palette PNGs, one class index per pixel), "
        "paired with the images by file stem",
    )
    p.add_argument("--test-images", help="folder of test images")
    p.add_argument("--test-masks", help="folder of the test images' masks")
    p.add_argument(
        "--split", type=float, default=0.2, help="held-out fraction when no --test-images (0.2)"
    )
    p.add_argument(
        "--img-size",
        type=_size,
        help="model input, 32 or HxW; images are resized to it (default: the encoder's; from "
        "scratch 224)",
    )
    p.add_argument("--model", choices=sorted(MODELS), help="--encoder none: size (vit_tiny)")
    p.add_argument("--patch-size", type=int, help="--encoder none: patch side (16)")
    p.add_argument("--epochs", type=int, help="stage one: epochs with the encoder frozen (30)")
    p.add_argument(
        "--unfreeze-epochs",
        type=int,
        help="stage two: epochs training the encoder too (default 0; --unfreeze: as --epochs)",
    )
    p.add_argument(
        "--unfreeze", action="store_true", help="add stage two (encoder trained, lower lr)"
    )
    p.add_argument(
        "--lr", type=float, help="decoder's peak learning rate, not scaled by the batch (1e-3)"
    )
    p.add_argument(
        "--encoder-lr-scale",
        type=float,
        help="stage two: the encoder's learning rate as a share of the decoder's (0.1)",
    )
    p.add_argument(
        "--ignore-index",
        type=int,
        help="mask value left out of loss and metrics, e.g. 11 for CamVid's void; -1 = none "
        "(255). Masks holding only 0 and 255 are read as binary",
    )
    p.add_argument("--batch-size", type=int, help="images per step, capped at the pairs (8)")
    p.add_argument(
        "--min-crop", type=float, help="smallest random crop, as a share of the image (0.25)"
    )
    p.add_argument(
        "--no-hflip",
        dest="hflip",
        action="store_false",
        default=None,
        help="no random horizontal flips",
    )
    p.add_argument("--eval-every", type=int, help="test every N epochs and at each stage end (1)")
    p.add_argument("--out", default="runs/segment", help="run folder (default runs/segment)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, weights and crops")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast dtype; auto = bf16 on capable GPUs/CPUs, fp32 on other CPUs",
    )
    p.add_argument("--workers", type=int, help="data-loading processes (default 2)")
    p.add_argument("--strict", action="store_true", help="stop on the first unreadable image")
    p.set_defaults(func=cmd_segment)


def _add_others(sub) -> None:
    p = sub.add_parser(
        "show",
        help="pictures: recon (MAE reconstructions), attention (class-token attention), "
        "embedding (2-D map of a features file), curves (a run's loss and learning rate)",
    )
    p.add_argument("what", choices=["recon", "attention", "embedding", "curves"])
    p.add_argument("--encoder", help="recon, attention: run folder (attention: or .safetensors)")
    p.add_argument("--features", help="embedding: features file written by `sslvit embed`")
    p.add_argument(
        "--method", choices=["umap", "tsne"], default="umap", help="embedding: map (umap)"
    )
    p.add_argument("--run", help="curves: run folder (reads its metrics.jsonl)")
    p.add_argument("--data", help="images to show; omitted: the run's data (recon), the sample")
    p.add_argument(
        "--bands", help="attention: channels shown as R,G,B for multi-band images, e.g. 3,2,1"
    )
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=int, default=8, help="number of images (rows)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks or of the map layout")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export", help="write the encoder for timm")
    p.add_argument("--encoder", required=True, help="run folder or .safetensors")
    p.add_argument("--out", required=True, help=".safetensors file to write (+ .json sidecar)")
    p.add_argument("--format", default="timm", choices=["timm"])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="MAE on the built-in sample, then kNN and linear probes")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--epochs", type=float, default=None, help="pretraining epochs (default 4)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    p.set_defaults(func=cmd_demo)


def _add_features(sub) -> None:
    p = sub.add_parser("embed", help="write the encoder's features of every file in a folder")
    p.add_argument("--encoder", required=True, help="run folder or exported .safetensors")
    p.add_argument("--data", required=True, help="folder of images (class sub-folders: labels)")
    p.add_argument("--out", required=True, help="features file: .parquet (pyarrow) or .npy")
    p.add_argument(
        "--tokens",
        choices=["cls", "mean", "patch"],
        help="cls token, mean of patch tokens, or every patch token (default: the run's pool)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (256)")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes (default 2)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    p.add_argument("--strict", action="store_true", help="stop on the first unreadable file")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("retrieve", help="nearest neighbours by cosine; recall@k and mAP")
    p.add_argument("--index", required=True, help="features file written by `sslvit embed`")
    p.add_argument("--query", required=True, help="image, folder of images, or features file")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--encoder", help="encoder for image queries (default: the index's)")
    p.add_argument("--out", help="CSV of every query's neighbours (+ .json with the metrics)")
    p.add_argument("--show", type=int, default=5, help="queries printed (default 5)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (256)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("cluster", help="k-means on embeddings; NMI, ARI, purity when labelled")
    p.add_argument("--features", required=True, help="features file written by `sslvit embed`")
    p.add_argument("--k", type=int, required=True, help="number of clusters")
    p.add_argument("--seed", type=int, default=0, help="seed of the k-means++ starts")
    p.add_argument(
        "--out", help="CSV path,cluster[,label] (+ .json); default FEATURES-clusters.csv"
    )
    p.set_defaults(func=cmd_cluster)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sslvit", description="Self-supervised pretraining of Vision Transformers."
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
    _add_eval(sub)
    _add_finetune(sub)
    _add_segment(sub)
    _add_others(sub)
    _add_features(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    from sslvit.train.loop import NonFiniteLossError

    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        print(f"sslvit: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"sslvit: stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sslvit: interrupted; {_after_interrupt(args)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
