"""k-means on L2-normalised embeddings, and how well the clusters match known classes.

Scores, for cluster assignments and class labels of the same N items:

- NMI: the mutual information of the two partitions divided by the arithmetic mean of their
  entropies (natural logarithms; 1 when both are a single group).
- ARI: the Rand index adjusted for chance (Hubert and Arabie, 1985): (pairs together in both
  minus the number expected by chance) over (the mean of the pairs together in each minus the
  same expectation); 1 when the partitions agree, about 0 for random ones, and 1 when the
  denominator vanishes because both partitions are trivial.
- purity: each cluster counted as its most frequent class, the fraction of items so matched.
"""

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from sslvit.evaluate.embed import load_embeddings
from sslvit.evaluate.report import format_csv, result_json, write_text_atomic

log = logging.getLogger("sslvit")


def _plus_plus_init(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii, 2007): `[k, D]` centroids from `x`."""
    first = torch.randint(len(x), (1,), generator=generator)
    centroids = x[first]
    nearest = torch.cdist(x, centroids).squeeze(1) ** 2
    for _ in range(1, k):
        # an item already chosen has weight 0; if all weights are 0, pick uniformly
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        pick = torch.multinomial(weights, 1, generator=generator)
        centroids = torch.cat([centroids, x[pick]])
        nearest = torch.minimum(nearest, torch.cdist(x, x[pick]).squeeze(1) ** 2)
    return centroids


def _lloyd(
    x: torch.Tensor, centroids: torch.Tensor, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    assign = None
    for _ in range(max_iter):
        distances = torch.cdist(x, centroids) ** 2  # [N, k]
        new = distances.argmin(dim=1)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        counts = torch.bincount(assign, minlength=len(centroids))
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = sums / counts.clamp_min(1)[:, None]
        for empty in torch.nonzero(counts == 0).flatten():
            # an empty cluster restarts at the item worst served by its centroid
            worst = distances.gather(1, assign[:, None]).squeeze(1).argmax()
            centroids[empty] = x[worst]
            distances[worst] = 0
    distances = torch.cdist(x, centroids) ** 2
    assign = distances.argmin(dim=1)
    inertia = float(distances.gather(1, assign[:, None]).sum())
    return assign, centroids, inertia


def kmeans(
    x: torch.Tensor, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's k-means from k-means++ seeds; the best of `n_init` runs by inertia.

    Args:
        x: Points `[N, D]` (the caller normalises them if it wants cosine geometry).
        k: Clusters, 1 <= k <= N.
        seed: Seed of the k-means++ draws.
        n_init: Independent starts.
        max_iter: Iterations per start at most; a start stops when no assignment changes.

    Returns:
        `(assignments, centroids, inertia)`: int64 `[N]`, float32 `[k, D]`, and the sum of
        squared distances of the points to their centroids.
    """
    if x.ndim != 2 or not 1 <= k <= len(x):
        raise ValueError(f"k-means needs points [N, D] and 1 <= k <= N; got {tuple(x.shape)}, {k}")
    x = x.float()
    generator = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(n_init):
        result = _lloyd(x, _plus_plus_init(x, k, generator), max_iter)
        if best is None or result[2] < best[2]:
            best = result
    return best


def _contingency(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Counts `[n_a, n_b]` of items in group i of `a` and group j of `b` (float64)."""
    _, a = torch.unique(torch.as_tensor(a), return_inverse=True)
    _, b = torch.unique(torch.as_tensor(b), return_inverse=True)
    n_b = int(b.max()) + 1
    counts = torch.bincount(a * n_b + b, minlength=(int(a.max()) + 1) * n_b)
    return counts.view(-1, n_b).double()


def _entropy(counts: torch.Tensor) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def normalized_mutual_info(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """NMI with the arithmetic-mean normalisation (see the module docstring)."""
    table = _contingency(labels, clusters)
    h_labels, h_clusters = _entropy(table.sum(1)), _entropy(table.sum(0))
    if h_labels == 0 and h_clusters == 0:
        return 1.0
    n = table.sum()
    joint = table[table > 0] / n
    outer = (table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / n**2)[table > 0]
    mutual = float((joint * (joint / outer).log()).sum())
    return max(0.0, mutual / ((h_labels + h_clusters) / 2))


def adjusted_rand_index(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """ARI (see the module docstring)."""
    table = _contingency(labels, clusters)

    def pairs(counts):
        return float((counts * (counts - 1) / 2).sum())

    together = pairs(table)
    in_labels, in_clusters = pairs(table.sum(1)), pairs(table.sum(0))
    all_pairs = pairs(table.sum().reshape(1))
    if all_pairs == 0:
        return 1.0  # a single item: the partitions cannot disagree
    expected = in_labels * in_clusters / all_pairs
    mean_max = (in_labels + in_clusters) / 2
    if mean_max == expected:
        return 1.0
    return (together - expected) / (mean_max - expected)


def purity(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """The fraction of items in their cluster's most frequent class."""
    table = _contingency(clusters, labels)  # rows: clusters
    return float(table.max(dim=1).values.sum() / table.sum())


def cluster_scores(labels: torch.Tensor, clusters: torch.Tensor) -> dict[str, float]:
    """`nmi`, `ari` and `purity` of cluster assignments against class labels (each `[N]`)."""
    if len(labels) != len(clusters) or len(labels) == 0:
        raise ValueError(f"{len(labels)} labels for {len(clusters)} cluster assignments")
    return {
        "nmi": normalized_mutual_info(labels, clusters),
        "ari": adjusted_rand_index(labels, clusters),
        "purity": purity(labels, clusters),
    }


def cluster_file(
    features_path: str | Path,
    k: int,
    seed: int = 0,
    out: str | Path | None = None,
    n_init: int = 10,
) -> dict:
    """k-means on a features file's L2-normalised vectors; assignments to CSV, scores to JSON.

    Args:
        features_path: A features file written by `sslvit embed`.
        k: Number of clusters.
        seed: Seed of the k-means++ starts.
        out: The CSV to write (`path,cluster` and `label` when known); None for
            `FEATURES-clusters.csv` beside the features. The result also goes to the JSON file
            with the CSV's stem.
        n_init: k-means starts; the one of least inertia is kept.

    Returns:
        `features`, `k`, `seed`, `n`, `inertia`, `sizes` (items per cluster), `assignments`
        and `metrics` (the paths written), and `nmi`, `ari`, `purity` when labels are known.
    """
    features_path = Path(features_path)
    embeddings = load_embeddings(features_path)
    x = F.normalize(embeddings.vectors(features_path).float(), dim=1)
    if not 1 <= k <= len(x):
        raise ValueError(f"{features_path}: --k {k} must be between 1 and its {len(x)} files")
    assign, _, inertia = kmeans(x, k, seed, n_init)

    result = {"features": str(features_path), "k": k, "seed": seed, "n": len(x)}
    result.update(inertia=inertia, sizes=torch.bincount(assign, minlength=k).tolist())
    if embeddings.labels is not None:
        code = {name: c for c, name in enumerate(sorted(set(embeddings.labels)))}
        labels = torch.tensor([code[name] for name in embeddings.labels])
        result.update(cluster_scores(labels, assign))
    else:
        log.info("%s carries no labels: NMI, ARI and purity skipped", features_path)

    out = Path(out) if out else features_path.with_name(f"{features_path.stem}-clusters.csv")
    rows = [{"path": p, "cluster": int(c)} for p, c in zip(embeddings.paths, assign, strict=True)]
    if embeddings.labels is not None:
        for row, label in zip(rows, embeddings.labels, strict=True):
            row["label"] = label
    result.update(assignments=str(out), metrics=str(out.with_suffix(".json")))
    write_text_atomic(out, format_csv(rows))
    write_text_atomic(out.with_suffix(".json"), result_json(result, 2))
    return result
