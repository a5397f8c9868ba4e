"""`sslvit segment`: a segmentation decoder on the encoder, trained on image and mask folders."""

import argparse
import logging

from sslvit.cli.options import BANDS_HELP, image_size, scratch_bands, worker_count
from sslvit.models import MODELS
from sslvit.models.segmentation import DECODERS

log = logging.getLogger("sslvit")


def cmd_segment(args: argparse.Namespace) -> None:
    from sslvit.data.folders import check_out_outside
    from sslvit.data.masks import SegmentationPairs
    from sslvit.evaluate.report import format_table, result_json
    from sslvit.evaluate.segment import SegmentConfig, segment

    if (args.test_images is None) != (args.test_masks is None):
        raise ValueError("--test-images and --test-masks go together")
    check_out_outside(args.out, args.images, args.masks, args.test_images, args.test_masks)
    config = SegmentConfig(
        **{k: v for k, v in vars(args).items() if k in SEGMENT_OPTIONS and v is not None}
    )
    if args.unfreeze and args.unfreeze_epochs is None:
        config.unfreeze_epochs = config.epochs
    if args.min_crop is not None:
        config.crop_scale = (args.min_crop, 1.0)
    if args.class_names is not None:
        config.class_names = [name.strip() for name in args.class_names.split(",")]
    if args.ignore_index is not None and args.ignore_index < 0:
        config.ignore_index = None
    train = _pairs_with_bands(SegmentationPairs(args.images, args.masks, strict=args.strict), args)
    if args.test_images is not None:
        test = SegmentationPairs(args.test_images, args.test_masks, strict=args.strict)
        test = _pairs_with_bands(test, args)
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
    print(result_json(result))


def _pairs_with_bands(pairs, args: argparse.Namespace):
    """Segmentation pairs whose images are read with the encoder's (or --bands') bands."""
    from sslvit.data import Subset
    from sslvit.data.bands import encoder_images
    from sslvit.models.io import load_info

    folder, source = pairs.images.images, str(pairs.images.images.root)
    if args.encoder.lower() == "none":
        chosen = scratch_bands(folder, args.bands, source)
    else:
        info = load_info(args.encoder)
        chosen = encoder_images(folder, info.bands, info.mean, args.bands, source)
    pairs.images, pairs.in_chans = Subset(chosen, pairs.images.indices), chosen.in_chans
    return pairs


SEGMENT_OPTIONS = (
    "epochs", "unfreeze_epochs", "batch_size", "lr", "encoder_lr_scale", "img_size", "model",
    "patch_size", "ignore_index", "seed", "device", "precision", "workers", "eval_every", "hflip",
    "decoder", "n_levels",
)  # fmt: skip


def add_segment(sub) -> None:
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
        type=image_size,
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
    p.add_argument(
        "--class-names",
        help="comma-separated names of the classes in class order, for the results and the "
        "picture's legend, e.g. background,membrane (default: the mask values)",
    )
    p.add_argument(
        "--decoder",
        choices=DECODERS,
        help="conv: multi-level convolutional decoder (default); linear: the linear probe on the "
        "patch features, the usual measure of frozen features",
    )
    p.add_argument(
        "--levels",
        dest="n_levels",
        type=int,
        help="blocks the decoder reads, evenly spaced and ending with the last (4)",
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
    p.add_argument("--workers", type=worker_count, help="data-loading processes (default 2)")
    p.add_argument("--strict", action="store_true", help="stop on the first unreadable image")
    p.add_argument("--bands", help=BANDS_HELP + "; default: the encoder's (all from scratch)")
    p.set_defaults(func=cmd_segment)
