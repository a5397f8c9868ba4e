"""`sslvit pretrain` and `sslvit demo`: the config a run is built from, and the run."""

import argparse
import json
import logging
from importlib import resources
from pathlib import Path

from sslvit.cli.options import BANDS_HELP, add_reader_options, square_side, worker_count
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
        if not args.out:
            raise ValueError(
                "--resume needs --out, the run folder to continue (a run started without --out "
                "is in runs/METHOD, e.g. runs/mae)"
            )
        out = args.out
        saved = Path(out) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"{saved}: nothing to resume (no config.yaml in --out)")
        # a resumed run keeps its own config; only how it executes may change, and where its
        # images now are (the same images, moved)
        allowed = ("run.", "data.workers=", "data.path=")
        for item in args.set:
            if not item.startswith(allowed) or item.startswith(("run.out=", "run.seed=")):
                raise ValueError(
                    f"--set {item}: only run.* (not run.seed or run.out), data.workers and "
                    "data.path (the same images, moved) can change on resume"
                )
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
            "--bands": args.bands,
            "--window": args.window,
            "--slice-axis": args.slice_axis,
        }
        given = [name for name, value in fixed.items() if value is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)}: a resumed run keeps the settings in {saved}; only "
                "--device, --precision, --workers, --set run.* and --set data.path can change"
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
        "data.bands": args.bands and args.bands.split(","),
        "data.window": None if args.window == "none" else args.window,
        "data.slice_axis": args.slice_axis,
    }
    if args.data is None and not args.config:
        # the built-in sample is 28 px MNIST: a 7x7 grid of 4 px patches
        named["data.img_size"] = 28 if args.img_size is None else args.img_size
        named["model.patch_size"] = 4 if args.patch_size is None else args.patch_size
    items = [f"{k}={json.dumps(v)}" for k, v in named.items() if v is not None]
    config = apply_overrides(config, items + list(args.set))
    if config.run.out == Config().run.out:
        # no folder chosen anywhere: one per method, so a DINO run does not land in runs/mae
        config.run.out = f"runs/{config.method.name}"
    return config


def cmd_pretrain(args: argparse.Namespace) -> None:
    from sslvit.data import UnreadableImageError
    from sslvit.train.loop import Trainer
    from sslvit.viz import recon_figure

    config = build_config(args)
    if args.print_config:
        config.check()
        print(config.to_yaml(), end="")
        return
    args.out = config.run.out  # where a stopped run's message points
    try:
        trainer = Trainer(config, resume=args.resume)
    except (ValueError, FileNotFoundError) as err:
        data = config.data.path
        if not (args.resume and data and str(data) in str(err)):
            raise
        # the loader names the missing images; say where that path came from and what to do
        saved = Path(config.run.out) / "config.yaml"
        raise type(err)(
            f"{err} (the run's data.path, from {saved}: a resumed run reads the images it "
            f"started on; put them back there, or, if only the folder moved, add "
            f"--set data.path=NEW_PLACE)"
        ) from err
    run_dir = trainer.train()
    if trainer.dist.is_main and hasattr(trainer.method, "reconstruct"):
        try:
            figure = recon_figure(
                run_dir,
                run_dir / "figures" / "recon.png",
                device=trainer.device,
                report_skipped=False,  # the run listed its unreadable files when it started
            )
            log.info("reconstructions: %s", figure)
        except (UnreadableImageError, ValueError) as err:
            # the run itself is done and saved; a picture that cannot be drawn does not undo it
            log.warning("no reconstruction picture: %s", err)


def cmd_demo(args: argparse.Namespace) -> None:
    from sslvit.demo import run_demo

    run_demo(args.out, epochs=args.epochs, device=args.device)


def add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder without labels")
    p.add_argument("--data", help="folder of images (recursive); omitted: the built-in sample")
    p.add_argument("--method", choices=method_names(), help="pretraining method (default mae)")
    p.add_argument("--model", choices=sorted(MODELS), help="encoder size (default vit_tiny)")
    p.add_argument(
        "--img-size",
        type=square_side,
        help="side of the square training crops in pixels (default 224; 28 on the sample)",
    )
    p.add_argument("--patch-size", type=int, help="patch side in pixels; must divide --img-size")
    p.add_argument("--epochs", type=float, help="passes over the data, may be fractional (100)")
    p.add_argument("--batch-size", type=int, help="images per step per process (default 128)")
    p.add_argument(
        "--base-lr", type=float, help="learning rate per 256 images of effective batch (1.5e-4)"
    )
    p.add_argument(
        "--workers",
        type=worker_count,
        help="data-loading processes per training process (default 2)",
    )
    p.add_argument("--strict", action="store_true", help="stop on the first unreadable file")
    p.add_argument("--bands", help=BANDS_HELP + "; default: every band")
    p.add_argument(
        "--out", help="run folder (default runs/METHOD); with --resume, the run to continue"
    )
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
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the run's whole config (every field --set can change) and exit",
    )
    add_reader_options(p, downstream=False)
    p.set_defaults(func=cmd_pretrain)


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="MAE on the built-in sample, then kNN and linear probes")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--epochs", type=float, default=None, help="pretraining epochs (default 4)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    p.set_defaults(func=cmd_demo)
