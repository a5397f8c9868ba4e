"""`sslvit embed`, `retrieve` and `cluster`: features files and what is computed from them."""

import argparse

from sslvit.cli.options import BANDS_HELP, add_reader_options, reader_options, worker_count


def cmd_embed(args: argparse.Namespace) -> None:
    from sslvit.data.folders import check_out_outside
    from sslvit.evaluate.embed import embed_folder

    if args.out:
        check_out_outside(args.out, args.data)
    out = embed_folder(
        args.encoder,
        args.data,
        args.out,
        tokens=args.tokens,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        strict=args.strict,
        bands=args.bands,
        **reader_options(args, args.encoder),
    )
    if out is not None:
        print(out)


def cmd_retrieve(args: argparse.Namespace) -> None:
    from sslvit.evaluate.report import format_table, result_json
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
    print(result_json(result))


def cmd_cluster(args: argparse.Namespace) -> None:
    from sslvit.evaluate.cluster import cluster_file
    from sslvit.evaluate.report import format_table, result_json

    result = cluster_file(args.features, args.k, seed=args.seed, out=args.out)
    columns = [c for c in ("n", "k", "nmi", "ari", "purity", "inertia") if c in result]
    print(format_table([result], columns))
    print(result_json(result))


def add_features(sub) -> None:
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
    p.add_argument(
        "--workers", type=worker_count, default=2, help="data-loading processes (default 2)"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    p.add_argument("--strict", action="store_true", help="stop on the first unreadable file")
    p.add_argument("--bands", help=BANDS_HELP + "; default: the encoder's")
    add_reader_options(p)
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
