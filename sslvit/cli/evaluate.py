"""`sslvit eval` (knn, linear, efficiency; pixels in `sslvit.cli.pixels`) and `sslvit finetune`."""

import argparse
import json
import logging
import re

from sslvit.cli.options import (
    BANDS_HELP,
    add_reader_options,
    encoder_folder,
    image_size,
    label_budget,
    label_budgets,
    reader_options,
    scratch_bands,
    worker_count,
)
from sslvit.cli.pixels import add_pixels_options, eval_pixels
from sslvit.models import MODELS

log = logging.getLogger("sslvit")


def _eval_sets(args: argparse.Namespace, reader: dict):
    """The labelled training and test sets an eval command works on, with the encoder's bands,
    read with `reader` (`reader_options`)."""
    from sslvit.data import Subset, open_images, stratified_split
    from sslvit.data.bands import encoder_images
    from sslvit.models.io import load_info

    info = None if args.encoder.lower() == "none" else load_info(args.encoder)

    def opened(spec: str, **options):
        images = open_images(spec, labeled=True, **options, **reader)
        if info is None:
            return scratch_bands(images, args.bands, spec)
        return encoder_images(images, info.bands, info.mean, args.bands, spec)

    if args.data is None:
        if args.test_data is not None:
            raise ValueError("--test-data needs --data")
        return opened("sample:train"), opened("sample:test")
    train = opened(args.data, strict=args.strict)
    if args.test_data is not None:
        return train, opened(args.test_data, strict=args.strict)
    train_idx, test_idx = stratified_split(train.labels, args.split, args.seed)
    log.info(
        "no --test-data: holding out a stratified %s of %s as the test set", args.split, args.data
    )
    return Subset(train, train_idx), Subset(train, test_idx)


def cmd_eval(args: argparse.Namespace) -> None:
    from sslvit.data.folders import check_out_outside
    from sslvit.evaluate.classify import evaluate_encoder
    from sslvit.evaluate.report import format_table, result_json, save_result
    from sslvit.models import load_encoder
    from sslvit.train.distributed import resolve_device

    if args.kind == "pixels":
        eval_pixels(args)
        return
    given = [flag for dest, flag in args.pixels_only.items() if getattr(args, dest) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: only for `sslvit eval pixels`")
    if args.kind == "efficiency":
        _eval_efficiency(args)
        return
    given = [flag for dest, flag in args.efficiency_only.items() if getattr(args, dest) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: only for `sslvit eval efficiency`")
    run_dir = encoder_folder(args.encoder)
    check_out_outside(
        run_dir, args.data, args.test_data, what="the encoder's folder, where the results go,"
    )
    device = resolve_device(args.device)
    encoder, info = load_encoder(args.encoder, device)
    reader = reader_options(args, args.encoder)
    train, test = _eval_sets(args, reader)
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
    result["window"] = reader["window"]
    columns = [
        c for c in ("kind", "pool", "labels", "n_train", "n_test", "top1", "top5") if c in result
    ]
    print(format_table([result], columns))
    saved = save_result(run_dir, _result_name(args), result)
    log.info("saved %s", saved)
    print(result_json(result))


def _eval_efficiency(args: argparse.Namespace) -> None:
    from sslvit.data.folders import check_out_outside
    from sslvit.evaluate.efficiency import EfficiencyConfig, label_efficiency
    from sslvit.evaluate.efficiency_report import print_table

    run_dir = encoder_folder(args.encoder)
    check_out_outside(
        args.out or run_dir,
        args.data,
        args.test_data,
        what="--out" if args.out else "the encoder's folder, where the results go,",
    )
    if args.labels is not None:
        raise ValueError("--labels: eval efficiency takes its label budgets from --fractions")
    finetune = _finetune_config(args)
    if args.eval_every is None:
        finetune.eval_every = 0  # test once, after the last epoch
    chosen = {
        "budgets": args.fractions and tuple(args.fractions.split(",")),
        "n_seeds": args.seeds,
        "protocols": args.protocols and tuple(args.protocols.split(",")),
    }
    config = EfficiencyConfig(
        **{k: v for k, v in chosen.items() if v is not None},
        finetune=finetune,
        pool=args.pool,
        device=args.device,
    )
    reader = reader_options(args, args.encoder)
    train, test = _eval_sets(args, reader)
    data = {"data": args.data or "sample"}
    if args.test_data is not None or args.data is None:
        data["test_data"] = args.test_data or "sample:test"
    else:
        data.update(test_split=args.split, split_seed=args.seed)
    if reader["window"]:
        data["window"] = reader["window"]
    outcome = label_efficiency(args.encoder, train, test, args.out or run_dir, config, data)
    print_table(outcome["summary"])
    for name, path in outcome["paths"].items():
        log.info("%s: %s", name, path)
    print(json.dumps({"kind": "efficiency", "summary": outcome["summary"], **outcome["paths"]}))


def _result_name(args: argparse.Namespace) -> str:
    """`knn`, or `linear-10pct-seed0` for a label budget: one file per protocol, not per kind."""
    name = args.kind
    if args.labels:
        budget = str(args.labels).strip().replace("%", "pct").replace(".", "p")
        name += f"-{re.sub(r'[^A-Za-z0-9_.-]', '', budget)}-seed{args.seed}"
    return name


def _finetune_config(args: argparse.Namespace):
    """The `FinetuneConfig` of the fine-tuning options given; defaults for the others."""
    from sslvit.evaluate.finetune import FinetuneConfig

    config = FinetuneConfig(
        **{k: v for k, v in vars(args).items() if k in FINETUNE_OPTIONS and v is not None}
    )
    if args.min_crop is not None:
        config.crop_scale = (args.min_crop, 1.0)
    return config


def cmd_finetune(args: argparse.Namespace) -> None:
    from sslvit.data.folders import check_out_outside
    from sslvit.evaluate.finetune import finetune
    from sslvit.evaluate.report import format_table, result_json

    check_out_outside(args.out, args.data, args.test_data)
    scratch = args.encoder.lower() == "none"
    on_sample = args.data is None
    config = _finetune_config(args)
    if scratch and on_sample:
        # the built-in sample is 28 px MNIST, as in `pretrain`
        config.img_size = args.img_size or 28
        config.patch_size = 4 if args.patch_size is None else args.patch_size
    train, test = _eval_sets(args, reader_options(args, args.encoder))
    result = finetune(None if scratch else args.encoder, train, test, args.out, config)
    result["data"] = args.data or "sample"
    columns = ["kind", "labels", "n_train", "n_test", "top1", "top5", "best_top1", "best_epoch"]
    print(format_table([result], [c for c in columns if c in result]))
    log.info("run folder: %s", args.out)
    print(result_json(result))


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="kNN or linear probe on frozen features; efficiency: probes and fine-tuning at "
        "several label budgets, pretrained against from scratch",
    )
    p.add_argument("kind", choices=["knn", "linear", "efficiency", "pixels"])
    p.add_argument("--encoder", required=True, help="run folder or exported .safetensors")
    p.add_argument("--data", help="labelled folder (class sub-folders); omitted: the sample")
    p.add_argument("--test-data", help="labelled test folder with the same classes")
    p.add_argument(
        "--split", type=float, default=0.2, help="held-out fraction when no --test-data (0.2)"
    )
    p.add_argument(
        "--labels",
        type=label_budget,
        help="labels used for training: a share ('10%%', '0.1') or a count per class ('50')",
    )
    p.add_argument("--pool", choices=["cls", "mean"], help="feature pooling (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and the probe")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    p.add_argument("--strict", action="store_true", help="stop on the first unreadable file")
    p.add_argument("--bands", help=BANDS_HELP + "; default: the encoder's")
    group = p.add_argument_group(
        "efficiency only (the fine-tuning options apply to both encoders; each fine-tune is "
        "tested once, after its last epoch, unless --eval-every)"
    )
    only = [
        group.add_argument(
            "--fractions",
            type=label_budgets,
            help="label budgets, comma-separated shares or counts per class (1%%,10%%,100%%)",
        ),
        group.add_argument(
            "--seeds", type=int, help="label subsets (seeds 0..N-1) per budget below 100%% (3)"
        ),
        group.add_argument(
            "--protocols", help="comma-separated: linear, finetune, knn (linear,finetune)"
        ),
        group.add_argument(
            "--out", help="folder of eval/efficiency.* and figures/ (default: the encoder's run)"
        ),
        *_add_finetune_recipe(group),
    ]
    add_reader_options(p)
    p.set_defaults(func=cmd_eval, efficiency_only={a.dest: a.option_strings[0] for a in only})
    add_pixels_options(p)


FINETUNE_OPTIONS = (
    "epochs", "batch_size", "base_lr", "layer_decay", "drop_path", "label_smoothing", "mixup",
    "cutmix", "img_size", "model", "patch_size", "labels", "seed", "device", "precision",
    "workers", "eval_every", "hflip", "min_steps",
)  # fmt: skip


def add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="train a new head and the whole encoder on labels")
    p.add_argument(
        "--encoder", required=True, help="run folder or .safetensors, or 'none' (from scratch)"
    )
    p.add_argument("--data", help="labelled folder (class sub-folders); omitted: the sample")
    p.add_argument("--test-data", help="labelled test folder with the same classes")
    p.add_argument(
        "--split", type=float, default=0.2, help="held-out fraction when no --test-data (0.2)"
    )
    p.add_argument(
        "--labels",
        type=label_budget,
        help="labels used for training: a share ('10%%', '0.1') or a count per class ('50')",
    )
    p.add_argument("--model", choices=sorted(MODELS), help="--encoder none: size (vit_tiny)")
    p.add_argument(
        "--patch-size", type=int, help="--encoder none: patch side (16; 4 on the sample)"
    )
    _add_finetune_recipe(p)
    p.add_argument("--out", default="runs/finetune", help="run folder (default runs/finetune)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits, labels and training")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    p.add_argument("--strict", action="store_true", help="stop on the first unreadable file")
    p.add_argument("--bands", help=BANDS_HELP + "; default: the encoder's (all from scratch)")
    add_reader_options(p)
    p.set_defaults(func=cmd_finetune)


def _add_finetune_recipe(p) -> list[argparse.Action]:
    """The fine-tuning recipe's options, shared by `finetune` and `eval efficiency`."""
    return [
        p.add_argument(
            "--img-size",
            type=image_size,
            help="input size, 32 or HxW; a pretrained position embedding is resized (default: "
            "the encoder's; finetune --encoder none: 224, 28 on the sample)",
        ),
        p.add_argument("--epochs", type=int, help="passes over the labelled images (100)"),
        p.add_argument(
            "--min-steps",
            type=int,
            help="more epochs when needed to reach this many steps, for few labels (0 = off)",
        ),
        p.add_argument("--batch-size", type=int, help="images per step, capped at the labels (64)"),
        p.add_argument(
            "--lr",
            dest="base_lr",
            type=float,
            help="learning rate per 256 images of batch (1e-3, MAE's); the head's, lower layers "
            "less",
        ),
        p.add_argument(
            "--layer-decay",
            type=float,
            help="lr factor per block towards the input (0.75; 1 = none, the default from scratch)",
        ),
        p.add_argument("--drop-path", type=float, help="stochastic depth rate (0.1)"),
        p.add_argument(
            "--label-smoothing", type=float, help="target mass spread over classes (0.1)"
        ),
        p.add_argument("--mixup", type=float, help="mixup alpha, 0 = off (default; MAE used 0.8)"),
        p.add_argument(
            "--cutmix", type=float, help="cutmix alpha, 0 = off (default; MAE used 1.0)"
        ),
        p.add_argument(
            "--min-crop",
            type=float,
            help="smallest random crop, as a share of the image's area (0.08; raise it for small "
            "images where an 8 %% crop loses the object)",
        ),
        p.add_argument(
            "--no-hflip",
            dest="hflip",
            action="store_false",
            default=None,
            help="no random horizontal flips (for digits, text, or anything a mirror changes)",
        ),
        p.add_argument(
            "--eval-every",
            type=int,
            help="test every N epochs and at the end; 0 = at the end only (1; eval efficiency: 0)",
        ),
        p.add_argument(
            "--precision",
            choices=["auto", "fp32", "bf16", "fp16"],
            help="autocast dtype; auto = bf16 on capable GPUs/CPUs, fp32 on other CPUs",
        ),
        p.add_argument("--workers", type=worker_count, help="data-loading processes (default 2)"),
    ]
