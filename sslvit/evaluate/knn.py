"""Weighted k-nearest-neighbour classification of frozen features.

The protocol of DINO (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision
Transformers", section 4.1 and appendix): features are L2-normalised, each query finds the k
bank features of highest cosine similarity, and each neighbour votes for its class with weight
exp(similarity / T). The predicted class is the one with the largest summed weight.
"""

import torch
import torch.nn.functional as F

# DINO's choices: 20 neighbours, temperature 0.07.
DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07


def knn_classify(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    n_classes: int,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int = 512,
) -> torch.Tensor:
    """Class scores of each query from its k nearest bank features.

    Args:
        bank: Labelled features `[M, D]` (need not be normalised).
        bank_labels: Class indices `[M]`, each in `[0, n_classes)`.
        queries: Features to classify `[Q, D]`.
        n_classes: Number of classes.
        k: Neighbours per query; a bank smaller than `k` votes with all of its `M` features.
        temperature: T in the vote weight exp(similarity / T).
        chunk_size: Queries compared with the bank at once; bounds memory to
            `chunk_size * M` similarities without changing the result.

    Returns:
        Summed vote weights `[Q, n_classes]`, float32; the argmax of a row is the prediction.
    """
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"kNN needs bank [M, D] and queries [Q, D] of the same width, "
            f"got {tuple(bank.shape)} and {tuple(queries.shape)}"
        )
    if len(bank) == 0 or len(bank_labels) != len(bank):
        raise ValueError(f"kNN bank has {len(bank)} features and {len(bank_labels)} labels")
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ValueError(
            f"kNN needs k >= 1, temperature > 0 and chunk_size >= 1, "
            f"got k={k}, temperature={temperature}, chunk_size={chunk_size}"
        )
    bank_labels = bank_labels.long().to(bank.device)
    if bank_labels.min() < 0 or bank_labels.max() >= n_classes:
        raise ValueError(
            f"kNN bank labels must lie in [0, {n_classes}), "
            f"got {bank_labels.min().item()}..{bank_labels.max().item()}"
        )

    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float().to(bank.device), dim=1)
    k = min(k, len(bank))
    scores = torch.zeros(len(queries), n_classes, device=bank.device)
    for start in range(0, len(queries), chunk_size):
        sims = queries[start : start + chunk_size] @ bank.T  # [c, M] cosine similarities
        top_sims, top_idx = sims.topk(k, dim=1)  # [c, k]
        weights = (top_sims / temperature).exp()
        scores[start : start + chunk_size].scatter_add_(1, bank_labels[top_idx], weights)
    return scores


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 (and top-5 when there are at least 5 classes) accuracy in percent.

    Args:
        scores: Class scores `[Q, n_classes]`, higher is more likely.
        labels: True class indices `[Q]`.

    Returns:
        `{"top1": ...}`, plus `"top5"` when `n_classes >= 5`.
    """
    if len(scores) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"accuracy needs as many labels as scores, got {len(labels)} and "
            f"{len(scores)} (and at least one)"
        )
    labels = labels.long().to(scores.device)
    n = len(labels)  # counted in integers: 3119 of 10000 is 31.19, not 31.189998984
    result = {"top1": 100.0 * int((scores.argmax(dim=1) == labels).sum()) / n}
    if scores.shape[1] >= 5:
        top5 = scores.topk(5, dim=1).indices
        result["top5"] = 100.0 * int((top5 == labels[:, None]).any(dim=1).sum()) / n
    return result


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    n_classes: int,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int = 512,
) -> dict[str, float]:
    """kNN accuracy of labelled queries against a labelled bank.

    Args:
        bank: Labelled features `[M, D]`.
        bank_labels: Class indices `[M]`.
        queries: Features to classify `[Q, D]`.
        query_labels: Their true class indices `[Q]`.
        n_classes: Number of classes.
        k: Neighbours per query.
        temperature: T in the vote weight exp(similarity / T).
        chunk_size: Queries compared with the bank at once.

    Returns:
        `{"top1": ..., "top5": ...}` in percent; `top5` only when `n_classes >= 5`.
    """
    scores = knn_classify(bank, bank_labels, queries, n_classes, k, temperature, chunk_size)
    return topk_accuracy(scores, query_labels)
