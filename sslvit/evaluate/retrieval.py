"""Nearest neighbours by cosine similarity, and how well they match the queries' classes.

Definitions, for queries and index items that both carry labels (an index item is relevant to
a query when it has the query's label):

- recall@k: the fraction of queries with at least one relevant item among their k nearest
  index items.
- AP of one query: the ranking of the whole index by similarity, averaged over the rank r of
  each relevant item of the precision at r, AP = (1 / R) * sum over relevant r of
  (relevant items among the first r) / r, where R is the number of relevant items.
- mAP: the mean AP over the queries.

A query that is itself in the index (the same file) never retrieves itself: that item is left
out of its ranking, as when the query set is the index. Queries with no relevant item in the
index (their class is absent) are left out of both metrics and counted as `n_unmatched`. Ties
in similarity are ranked by position in the index.
"""

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from sslvit.evaluate.embed import FORMATS, Embeddings, embed_query, load_embeddings
from sslvit.evaluate.report import format_csv, result_json, write_text_atomic

log = logging.getLogger("sslvit")


def _rankings(
    index: torch.Tensor, queries: torch.Tensor, exclude: torch.Tensor | None, chunk_size: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """`(start, similarities, positions)` per chunk of queries, each `[q, M]`, best first.

    An excluded item gets similarity -inf and so ranks last.
    """
    index = F.normalize(index.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    for start in range(0, len(queries), chunk_size):
        sims = queries[start : start + chunk_size] @ index.T  # [q, M]
        if exclude is not None:
            own = exclude[start : start + chunk_size]
            rows = torch.nonzero(own >= 0).flatten()
            sims[rows, own[rows]] = float("-inf")
        sims, order = torch.sort(sims, dim=1, descending=True, stable=True)
        yield start, sims, order


def _check(index: torch.Tensor, queries: torch.Tensor, k: int, exclude) -> None:
    if index.ndim != 2 or queries.ndim != 2 or index.shape[1] != queries.shape[1]:
        raise ValueError(
            f"retrieval needs index [M, D] and queries [Q, D] of the same width, "
            f"got {tuple(index.shape)} and {tuple(queries.shape)}"
        )
    available = len(index) - int(exclude is not None and bool((exclude >= 0).any()))
    if not 1 <= k <= available:
        raise ValueError(f"k={k} must be between 1 and the {available} index items a query sees")


def search(
    index: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k index items of highest cosine similarity to each query.

    Args:
        index: Features `[M, D]` (need not be normalised).
        queries: Features `[Q, D]`.
        k: Neighbours per query.
        exclude: `[Q]` int64, the index position each query must not retrieve (itself), or -1.
        chunk_size: Queries compared at once; bounds memory to `chunk_size * M` similarities.

    Returns:
        `(similarities, positions)`, float32 and int64 `[Q, k]`, best first.
    """
    _check(index, queries, k, exclude)
    sims, ids = [], []
    for _, s, order in _rankings(index, queries, exclude, chunk_size):
        sims.append(s[:, :k])
        ids.append(order[:, :k])
    return torch.cat(sims), torch.cat(ids)


def retrieval_metrics(
    index: torch.Tensor,
    index_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> dict:
    """recall@k and mAP as defined in the module docstring, as fractions in [0, 1].

    Args:
        index: Features `[M, D]`.
        index_labels: int64 `[M]`.
        queries: Features `[Q, D]`.
        query_labels: int64 `[Q]`, in the same numbering as `index_labels`.
        k: The k of recall@k.
        exclude: As for `search`.
        chunk_size: As for `search`.

    Returns:
        `recall@k` (the key names k, e.g. "recall@10"), `mAP`, `k`, `n_scored` (the queries
        scored) and `n_unmatched`; the two metrics are None when no query has a relevant item.
    """
    _check(index, queries, k, exclude)
    index_labels = torch.as_tensor(index_labels).long()
    query_labels = torch.as_tensor(query_labels).long()
    hits, ap_sum, n_scored = 0, 0.0, 0
    for start, _, order in _rankings(index, queries, exclude, chunk_size):
        own = query_labels[start : start + len(order), None]
        relevant = index_labels[order] == own  # [q, M]
        if exclude is not None:
            relevant &= order != exclude[start : start + len(order), None]
        n_relevant = relevant.sum(dim=1)
        ranks = torch.arange(1, relevant.shape[1] + 1)
        precision = relevant.cumsum(dim=1) / ranks
        ap = (precision * relevant).sum(dim=1) / n_relevant.clamp_min(1)
        scored = n_relevant > 0
        hits += int(relevant[:, :k].any(dim=1)[scored].sum())
        ap_sum += float(ap[scored].sum())
        n_scored += int(scored.sum())
    return {
        f"recall@{k}": hits / n_scored if n_scored else None,
        "mAP": ap_sum / n_scored if n_scored else None,
        "k": k,
        "n_scored": n_scored,
        "n_unmatched": len(queries) - n_scored,
    }


def _queries(
    query: str | Path, index: Embeddings, encoder: str | None, batch_size: int, device: str
) -> Embeddings:
    """A features file as it is, or images embedded like the index."""
    if Path(query).suffix in FORMATS:
        return load_embeddings(query)
    if not Path(query).exists():
        raise FileNotFoundError(f"{query}: no such image, folder or features file")
    encoder = encoder or index.meta.get("encoder")
    if not encoder:
        raise ValueError(f"{query}: image queries need --encoder (the index names no encoder)")
    return embed_query(query, encoder, index.meta.get("tokens", "cls"), batch_size, device)


def retrieve_files(
    index_path: str | Path,
    query: str | Path,
    k: int = 10,
    encoder: str | None = None,
    out: str | Path | None = None,
    batch_size: int = 256,
    device: str = "auto",
) -> dict:
    """Search a features file with a features file, an image or a folder of images.

    Args:
        index_path: A features file written by `sslvit embed`.
        query: A features file, an image file or a folder of images (embedded with `encoder`).
        k: Neighbours per query.
        encoder: The encoder for image queries; None for the one the index records.
        out: A CSV to write with one row per query and neighbour (`query, rank, path,
            similarity` and, when known, `query_label, label`); the metrics go to the JSON file
            with the same stem.
        batch_size: Images per forward pass for image queries.
        device: Where image queries are embedded.

    Returns:
        `index`, `query`, `k`, `n_index`, `n_queries`, `rows` (dicts as in the CSV), and the
        metrics of `retrieval_metrics` (None when either side lacks labels).
    """
    index = load_embeddings(index_path)
    index_feats = index.vectors(index_path)
    queries = _queries(query, index, encoder, batch_size, device)
    query_feats = queries.vectors(query)
    if query_feats.shape[1] != index_feats.shape[1]:
        raise ValueError(
            f"{query}: features have {query_feats.shape[1]} dimensions, the index {index_path} "
            f"has {index_feats.shape[1]}; embed both with the same encoder"
        )
    for key in ("encoder", "tokens"):
        mine, theirs = index.meta.get(key), queries.meta.get(key)
        if mine and theirs and mine != theirs:
            log.warning(
                "%s: the index was embedded with %s %s, the queries (%s) with %s: similarities "
                "between different feature spaces mean little",
                index_path,
                key,
                mine,
                query,
                theirs,
            )
    positions = {key: j for j, key in enumerate(index.keys())}
    exclude = torch.tensor([positions.get(key, -1) for key in queries.keys()], dtype=torch.long)
    try:
        sims, ids = search(index_feats, query_feats, k, exclude)
    except ValueError as err:
        raise ValueError(f"{index_path}: {err}") from None

    labelled = index.labels is not None and queries.labels is not None
    metrics = None
    if labelled:
        names = sorted(set(index.labels) | set(queries.labels))
        code = {name: c for c, name in enumerate(names)}
        metrics = retrieval_metrics(
            index_feats,
            torch.tensor([code[n] for n in index.labels]),
            query_feats,
            torch.tensor([code[n] for n in queries.labels]),
            k,
            exclude,
        )
    else:
        side = "the index" if index.labels is None else "the queries"
        log.info("%s carry no labels: recall@%d and mAP skipped", side, k)

    rows = []
    for q, (q_sims, q_ids) in enumerate(zip(sims.tolist(), ids.tolist(), strict=True)):
        for rank, (sim, j) in enumerate(zip(q_sims, q_ids, strict=True), start=1):
            row = {"query": queries.paths[q], "rank": rank, "path": index.paths[j]}
            row["similarity"] = round(sim, 6)
            if labelled:
                row.update(query_label=queries.labels[q], label=index.labels[j])
            rows.append(row)
    result = {
        "index": str(index_path),
        "query": str(query),
        "k": k,
        "n_index": len(index.paths),
        "n_queries": len(queries.paths),
        "metrics": metrics,
    }
    if out is not None:
        out = Path(out)
        write_text_atomic(out, format_csv(rows))
        write_text_atomic(out.with_suffix(".json"), result_json(result, 2))
    return {**result, "rows": rows}
