"""Weighted k-nearest-neighbour classification of frozen features.

The protocol of Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (InstDisc), CVPR 2018, Sec. 3.4, used by MoCo, lightly and solo-learn: features
are L2-normalised, a query's k most cosine-similar bank samples vote for their class with weight
exp(sim / t), and the class with the largest summed weight wins.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.eval.features import extract_features
from selfsup.eval.metric_keys import KNN_METRICS, knn_metric_key
from selfsup.eval.metrics import as_label_tensor, classification_metrics
from selfsup.runtime.progress import Progress, resolve_progress

KNN_K = (5, 200)  # k=5: the published wafer setting; k=200: InstDisc's (DESIGN.md)
KNN_TEMPERATURE = 0.1


def knn_classify(
    train_features: Tensor,
    train_labels: Any,
    query_features: Tensor,
    *,
    k: int | Sequence[int] = 200,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
    batch_size: int = 1024,
    progress: Progress | None = None,
) -> dict[int, Tensor]:
    """Class scores [Q, C] of every query for every requested ``k``: ``{k: scores}``.

    score_c(q) = sum over the k nearest bank samples i with label c of exp(s_i / t), with
    s_i = cos(q, x_i) (InstDisc, eq. 7), divided by the row total so each row sums to 1: the
    ranking and argmax are those of the raw vote, and small temperatures cannot overflow.

    train_features: [N, D] bank; train_labels: [N]; query_features: [Q, D]. The work runs on
    the bank's device in float32; queries go in chunks of ``batch_size`` so at most
    batch_size x N similarities exist at once, and one top-k with the largest k serves every k.
    A k larger than the bank is clamped to N with a warning (the result keeps the requested key).
    ``progress`` reports query batches done (default: ``resolve_progress``).
    """
    ks = _check_ks(k)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bank, labels, queries, num_classes = _checked_bank(
        train_features, train_labels, query_features, num_classes
    )
    n_bank = bank.shape[0]
    too_big = [kk for kk in ks if kk > n_bank]
    if too_big:
        warnings.warn(
            f"knn_classify: k={too_big} exceeds the bank size {n_bank}; using k={n_bank} instead",
            stacklevel=2,
        )
    used = {kk: min(kk, n_bank) for kk in ks}
    k_max = max(used.values())

    bank = F.normalize(bank, dim=1)
    out = {kk: bank.new_empty(queries.shape[0], num_classes) for kk in ks}
    task = resolve_progress(progress).task(
        f"kNN of {queries.shape[0]} queries on {n_bank}",
        math.ceil(queries.shape[0] / batch_size), "query batches",
    )  # fmt: skip
    for start in range(0, queries.shape[0], batch_size):
        q = F.normalize(queries[start : start + batch_size], dim=1)
        sims, idx = (q @ bank.T).topk(k_max, dim=1)  # sorted, most similar first
        neighbour_labels = labels[idx]
        for kk, n in used.items():
            # softmax == exp(s/t) / sum exp(s/t): the normalised vote, shifted by the max for safety
            weights = torch.softmax(sims[:, :n] / temperature, dim=1)
            scores = out[kk][start : start + batch_size]
            scores.zero_().scatter_add_(1, neighbour_labels[:, :n], weights)
        task.advance()
    task.close()
    return out


def _checked_bank(
    train_features: Any, train_labels: Any, query_features: Any, num_classes: int | None
) -> tuple[Tensor, Tensor, Tensor, int]:
    """(bank [N, D], labels [N], queries [Q, D] on the bank's device, num_classes), float32;
    ValueError for shapes or labels that do not fit."""
    bank = _as_features(train_features, "train_features")
    queries = _as_features(query_features, "query_features").to(bank.device)
    labels = as_label_tensor(train_labels, "train_labels").to(bank.device)
    if bank.shape[0] == 0:
        raise ValueError("knn_classify: the bank (train_features) is empty")
    if labels.shape[0] != bank.shape[0]:
        raise ValueError(
            f"train_labels has {labels.shape[0]} entries but train_features has "
            f"{bank.shape[0]} rows"
        )
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(
            f"query_features have dimension {queries.shape[1]} but train_features have "
            f"{bank.shape[1]}"
        )
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    elif int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(
            f"train_labels hold classes in [{int(labels.min())}, {int(labels.max())}], "
            f"outside [0, num_classes={num_classes})"
        )
    return bank, labels, queries, num_classes


def knn_evaluate(
    train_features: Tensor,
    train_labels: Any,
    query_features: Tensor,
    query_labels: Any,
    k: int | Sequence[int] = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
    batch_size: int = 1024,
    progress: Progress | None = None,
) -> dict[str, float]:
    """kNN scores for each k: ``knn{k}_accuracy``, ``knn{k}_balanced_accuracy``,
    ``knn{k}_macro_f1`` and, with at least 5 classes, ``knn{k}_top5_accuracy``.

    Shapes as ``knn_classify``; query_labels: [Q]. ``num_classes`` defaults to one more than the
    largest label of either split. Metric conventions: ``selfsup.eval.metrics``.
    """
    train_y = as_label_tensor(train_labels, "train_labels")
    query_y = as_label_tensor(query_labels, "query_labels")
    if query_y.shape[0] != query_features.shape[0]:
        raise ValueError(
            f"query_labels has {query_y.shape[0]} entries but query_features has "
            f"{query_features.shape[0]} rows"
        )
    if num_classes is None:
        num_classes = int(max(int(train_y.max()), int(query_y.max()))) + 1
    all_scores = knn_classify(
        train_features,
        train_y,
        query_features,
        k=k,
        temperature=temperature,
        num_classes=num_classes,
        batch_size=batch_size,
        progress=progress,
    )
    results: dict[str, float] = {}
    for kk, scores in all_scores.items():
        metrics = classification_metrics(
            query_y.to(scores.device), None, num_classes, scores=scores
        )
        for name in KNN_METRICS:
            if name in metrics:
                results[knn_metric_key(kk, name)] = metrics[name]
    return results


def backbone_knn_scores(
    backbone: nn.Module,
    preprocess: Callable[[Tensor], Tensor],
    bank: Any,
    queries: Any,
    *,
    k: int | Sequence[int],
    temperature: float = KNN_TEMPERATURE,
    precision: str = "32-true",
    batch_size: int = 512,
    progress: Progress | None = None,
) -> dict[str, float]:
    """``knn_evaluate`` scores of ``backbone``'s features: labelled ``bank`` votes for ``queries``.

    Both datasets hold ``images`` (uint8 [N, C, H, W]) and ``labels``; ``preprocess`` maps a
    uint8 batch to the backbone's input; ``batch_size`` images go through it at once.
    ``progress`` reports feature extraction and voting; None is quiet, because the training
    monitors that call this every epoch log one line per pass themselves.
    """
    progress = progress or Progress(enabled=False)
    bank_f, query_f = (
        extract_features(
            backbone,
            ds.images,
            preprocess,
            batch_size=batch_size,
            precision=precision,
            progress=progress,
        )  # fmt: skip
        for ds in (bank, queries)
    )
    num_classes = int(max(int(bank.labels.max()), int(queries.labels.max())) + 1)
    return knn_evaluate(
        bank_f, bank.labels, query_f, queries.labels, k=k, temperature=temperature,
        num_classes=num_classes, progress=progress,
    )  # fmt: skip


def capped_bank(bank: Any, max_bank: int | None, seed: int = 0) -> Any:
    """``bank`` (anything with ``len`` and ``subset(indices)``), or a seeded random ``max_bank``
    of it when it is larger: ``randperm(len(bank), generator=Generator().manual_seed(seed))``
    [:max_bank], the draw the training monitor makes first with its generator (config
    ``knn_max_train``), so the same seed gives the same bank."""
    if max_bank is None:
        return bank
    if isinstance(max_bank, bool) or not isinstance(max_bank, numbers.Integral) or max_bank < 1:
        raise ValueError(f"max_bank must be a positive integer or None, got {max_bank!r}")
    if len(bank) <= max_bank:
        return bank
    generator = torch.Generator().manual_seed(seed)
    return bank.subset(torch.randperm(len(bank), generator=generator)[:max_bank])


def _check_ks(k: int | Sequence[int]) -> list[int]:
    ks = [k] if isinstance(k, numbers.Integral) else list(k)
    if not ks or any(
        not isinstance(kk, numbers.Integral) or isinstance(kk, bool) or kk < 1 for kk in ks
    ):
        raise ValueError(f"k must be a positive integer or a list of them, got {k!r}")
    return list(dict.fromkeys(int(kk) for kk in ks))


def _as_features(x: Any, name: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {tuple(t.shape)}")
    return t.float()
