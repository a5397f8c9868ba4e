"""`sslvit show` (pictures of a run) and `sslvit export` (its encoder for timm)."""

import argparse

from sslvit.cli.options import add_reader_options, reader_options


def cmd_show(args: argparse.Namespace) -> None:
    from sslvit.data.folders import check_out_outside
    from sslvit.viz import attention_figure, curves_figure, embedding_figure, recon_figure

    needs = {"recon": "encoder", "attention": "encoder", "embedding": "features", "curves": "run"}
    if getattr(args, needs[args.what]) is None:
        raise ValueError(f"show {args.what} needs --{needs[args.what]}")
    if args.what in ("recon", "attention") and args.n < 1:
        raise ValueError(f"--n {args.n}: the number of images must be at least 1")
    if args.out and args.data:
        check_out_outside(args.out, args.data)
    shown = {"data": args.data, "n_images": args.n, "bands": args.bands}
    if args.what == "recon":
        out = recon_figure(args.encoder, args.out, seed=args.seed, **shown)
    elif args.what == "attention":
        out = attention_figure(
            args.encoder, args.out, **shown, **reader_options(args, args.encoder)
        )
    elif args.what == "embedding":
        out = embedding_figure(args.features, args.out, method=args.method, seed=args.seed)
    else:
        out = curves_figure(args.run, args.out)
    print(out)


def cmd_export(args: argparse.Namespace) -> None:
    from sslvit.export import export_encoder

    print(export_encoder(args.encoder, args.out, format=args.format, overwrite=args.overwrite))


def add_show(sub) -> None:
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
    p.add_argument(
        "--data",
        help="images to show; omitted: the run's data (a run folder), else the built-in sample",
    )
    p.add_argument(
        "--bands",
        help="recon, attention: the encoder's bands drawn as R,G,B, by 0-based index or name "
        "(3,2,1 or B4,B3,B2); default: bands named red/green/blue or B4/B3/B2, else the first "
        "three. The data is read with the encoder's bands",
    )
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=int, default=8, help="number of images (rows)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks or of the map layout")
    add_reader_options(p)
    p.set_defaults(func=cmd_show)


def add_export(sub) -> None:
    p = sub.add_parser("export", help="write the encoder for timm")
    p.add_argument("--encoder", required=True, help="run folder or .safetensors")
    p.add_argument("--out", required=True, help=".safetensors file to write (+ .json sidecar)")
    p.add_argument("--format", default="timm", choices=["timm"])
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out file and its .json"
    )
    p.set_defaults(func=cmd_export)
