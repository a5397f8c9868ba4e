"""`sslvit eval pixels`: a hyperspectral cube's labelled pixels, classified from a few per class."""

import argparse
import logging
from pathlib import Path

from sslvit.cli.options import encoder_folder
from sslvit.models import MODELS

log = logging.getLogger("sslvit")


def eval_pixels(args: argparse.Namespace) -> None:
    from sslvit.data.cubes import read_cube
    from sslvit.data.ground_truth import read_ground_truth
    from sslvit.data.splits import parse_label_spec
    from sslvit.evaluate.pixels import (
        DEFAULT_WINDOW,
        classify_pixels,
        cube_bands,
        pixel_map_figure,
        random_encoder,
        result_name,
        window_features,
    )
    from sslvit.evaluate.report import format_table, result_json, save_result
    from sslvit.models import load_encoder
    from sslvit.train.distributed import resolve_device

    others = {d: f for d, f in args.efficiency_only.items() if d not in ("out", "img_size")}
    others.update(data="--data", test_data="--test-data", labels="--labels")
    others.update(window="--window", slice_axis="--slice-axis")
    given = [flag for dest, flag in others.items() if getattr(args, dest, None) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: not for `sslvit eval pixels`")
    if args.cube is None or args.gt is None:
        raise ValueError("eval pixels needs --cube and --gt")
    if args.train_per_class is not None and args.train_fraction is not None:
        raise ValueError("give only one of --train-per-class N and --train-fraction F")
    if args.train_per_class is None and args.train_fraction is None:
        raise ValueError("eval pixels needs --train-per-class N or --train-fraction F")
    if args.train_per_class is not None and args.train_per_class < 1:
        raise ValueError(f"--train-per-class {args.train_per_class}: must be at least 1")
    if args.train_fraction is not None and not 0 < args.train_fraction < 1:
        raise ValueError(
            f"--train-fraction {args.train_fraction}: must lie between 0 and 1 (e.g. 0.05); "
            "the pixels it leaves out are the test set"
        )
    window = args.pixel_window or DEFAULT_WINDOW
    if window < 1 or window % 2 == 0:
        raise ValueError(
            f"--pixel-window {window}: must be an odd number of pixels, so the labelled pixel "
            "is the centre (e.g. 9)"
        )
    spec = parse_label_spec(
        args.train_per_class if args.train_fraction is None else args.train_fraction
    )
    scratch = args.encoder.lower() == "none"
    geometry = (args.model, args.patch_size, args.band_groups, args.img_size)
    if not scratch and any(v is not None for v in geometry):
        raise ValueError(
            "--model, --patch-size, --band-groups, --img-size: only with --encoder none"
        )
    if not isinstance(args.img_size or 16, int):
        raise ValueError("--img-size: eval pixels takes a square size, e.g. 16")

    device = resolve_device(args.device)
    cube = read_cube(args.cube)
    truth = read_ground_truth(args.gt, cube.shape)
    if scratch:
        cube = cube_bands(cube, args.bands)
        encoder, info = random_encoder(
            cube,
            args.model or "vit_tiny",
            args.img_size or 16,
            4 if args.patch_size is None else args.patch_size,
            args.band_groups or 0,
            args.seed,
        )
        run_dir = Path(args.out or "runs/pixels")
    else:
        encoder, info = load_encoder(args.encoder, device)
        cube = cube_bands(cube, args.bands, info.bands)
        run_dir = Path(args.out) if args.out else encoder_folder(args.encoder)
    features = window_features(encoder, info, cube, truth, window, args.pool, device)
    result, predicted, train_mask = classify_pixels(features, spec, args.seed)
    result.update(encoder=str(args.encoder), cube=args.cube, gt=args.gt)

    name = result_name(spec, args.seed)
    title = (
        f"{args.encoder} | {spec} | seed {args.seed} | OA {result['oa']:.2f} "
        f"AA {result['aa']:.2f} kappa {result['kappa']:.4f}"
    )
    figure = run_dir / "figures" / f"{name}.png"
    result["figure"] = str(pixel_map_figure(truth, predicted, train_mask, figure, title))
    print(format_table([result], ["kind", "labels", "n_train", "n_test", "oa", "aa", "kappa"]))
    per_class = [{"class": k, "accuracy": v} for k, v in result["per_class"].items()]
    print(format_table(per_class, ["class", "accuracy"]))
    log.info("saved %s", save_result(run_dir, name, result))
    print(result_json(result))


def add_pixels_options(p) -> None:
    """`eval pixels`: a hyperspectral cube's labelled pixels, classified from a few per class."""
    group = p.add_argument_group(
        "pixels only (a hyperspectral cube, e.g. --cube scene.mat --gt gt.mat --train-per-class "
        "10; also --out, and --img-size with --encoder none)"
    )
    only = [
        group.add_argument(
            "--cube",
            help="cube file: .mat (scene.mat or scene.mat:VARIABLE), .npy, .npz, ENVI .hdr",
        ),
        group.add_argument(
            "--gt", help="ground truth: label map (0 = unlabelled) or abundances, same formats"
        ),
        group.add_argument(
            "--train-per-class", type=int, help="training pixels per class (at least 1)"
        ),
        group.add_argument(
            "--train-fraction",
            type=float,
            help="share of each class's pixels that trains, between 0 and 1 (e.g. 0.05)",
        ),
        group.add_argument(
            "--pixel-window",
            type=int,
            help="side of the window around each pixel, odd, resized to the encoder's input (9)",
        ),
        group.add_argument(
            "--model", choices=sorted(MODELS), help="--encoder none: size (vit_tiny)"
        ),
        group.add_argument("--patch-size", type=int, help="--encoder none: patch side (4)"),
        group.add_argument(
            "--band-groups", type=int, help="--encoder none: band groups, 0 = plain embedding (0)"
        ),
    ]
    p.set_defaults(pixels_only={a.dest: a.option_strings[0] for a in only})
