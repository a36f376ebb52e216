"""The part of a run report that needs labelled data: a seeded sample embedded by the trained
backbone, its kNN scores (k=5) and confusion matrix, PCA and t-SNE maps and a
nearest-neighbour retrieval grid (``selfsup.eval.report`` writes them into report.md).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.artifacts import META
from selfsup.data.image_dataset import ImageDataset
from selfsup.eval.embedding_map import (
    nearest_neighbours,
    pca,
    plot_confusion,
    plot_embedding_map,
    plot_retrieval_grid,
    tsne,
)
from selfsup.eval.knn import KNN_TEMPERATURE
from selfsup.eval.metrics import REPORTED_METRICS
from selfsup.eval.report_data import EvalData, resolve_eval_data, seeded_subset
from selfsup.eval.run_curves import Outcome

log = logging.getLogger("selfsup.eval")

EVALUATION_PLOTS = {  # plot key -> file in RUN/plots
    "confusion": "knn_confusion.png",
    "pca": "embedding_pca.png",
    "tsne": "embedding_tsne.png",
    "retrieval": "retrieval.png",
}
# the published wafer setting (DESIGN.md); k=200 needs banks far larger than a report's
REPORT_K = 5
NEIGHBOURS = 5
RETRIEVAL_ROWS = (4, 10)  # at least 4 query rows, at most 10 (one per class first)


def _feature_precision(run_dir: Path) -> str:
    """bf16 when the run trained in bf16 (as its kNN monitor did), else float32."""
    path = run_dir / "provenance.json"
    try:
        trained = json.loads(path.read_text()).get("precision") if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        trained = None
    return "bf16-mixed" if trained == "bf16-mixed" else "32-true"


def retrieval_queries(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Query indices: one random image per class present (up to 10), topped up to 4 rows."""
    low, high = RETRIEVAL_ROWS
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    chosen: list[int] = []
    seen: set[int] = set()
    for i in order.tolist():
        if int(labels[i]) not in seen and len(chosen) < high:
            seen.add(int(labels[i]))
            chosen.append(i)
    for i in order.tolist():
        if len(chosen) >= min(low, len(labels)):
            break
        if i not in chosen:
            chosen.append(i)
    return torch.tensor(sorted(chosen, key=lambda i: (int(labels[i]), i)), dtype=torch.int64)


@dataclass
class _Sample:
    """A seeded sample of the evaluation data and its features."""

    queries: ImageDataset
    voters: ImageDataset
    query_f: Tensor
    bank_f: Tensor
    names: list[str]  # one per class
    precision: str


def _embed_sample(
    backbone: Any, preprocess: Any, found: EvalData, precision: str,
    max_points: int, max_bank: int | None, seed: int,
) -> _Sample:  # fmt: skip
    """At most ``max_points`` queries and ``max_bank`` voters of ``found``, embedded."""
    from selfsup.eval.features import extract_features

    queries = seeded_subset(found.queries, max_points, seed)
    voters = seeded_subset(found.bank, max_bank, seed + 1)
    query_f = extract_features(backbone, queries.images, preprocess, precision=precision)
    bank_f = extract_features(backbone, voters.images, preprocess, precision=precision)
    num_classes = max(
        len(queries.class_names or voters.class_names or []),
        int(max(int(queries.labels.max()), int(voters.labels.max()))) + 1,
    )
    names = list(queries.class_names or voters.class_names or [])
    names += [str(c) for c in range(len(names), num_classes)]
    return _Sample(queries, voters, query_f, bank_f, names, precision)


def _knn_metrics(sample: _Sample, temperature: float) -> dict[str, Any]:
    """``classification_metrics`` of the k=REPORT_K vote of the sample's bank for its queries."""
    from selfsup.eval.knn import knn_classify
    from selfsup.eval.metrics import classification_metrics

    num_classes = len(sample.names)
    scores = knn_classify(
        sample.bank_f, sample.voters.labels, sample.query_f, k=REPORT_K, temperature=temperature,
        num_classes=num_classes,
    )[REPORT_K]  # fmt: skip
    labels = sample.queries.labels
    return classification_metrics(labels, None, num_classes, sample.names, scores=scores)


def _evaluation_lines(
    sample: _Sample, found: EvalData, meta: dict[str, Any], source: str,
    metrics: dict[str, Any], temperature: float, seed: int,
) -> list[str]:  # fmt: skip
    """What was embedded, by which backbone, and the sample's kNN scores."""
    from selfsup.eval.metrics import format_metrics_table

    queries, voters = sample.queries, sample.voters
    return [
        f"Features of {source} ({meta.get('name', '?')}, {meta.get('feature_dim', '?')}-d, "
        f"{sample.precision}). {found.note[0].upper()}{found.note[1:]}.",
        "",
        f"{len(queries)} of {len(found.queries)} query images and {len(voters)} of "
        f"{len(found.bank)} bank images (random, seed {seed}); kNN k={REPORT_K}, "
        f"t={temperature:g}, cosine similarity on the backbone's features:",
        "",
        format_metrics_table(
            {f"kNN k={REPORT_K} (this sample)": metrics}, keys=list(REPORTED_METRICS)
        ),
    ]


def _draw_evaluation(
    sample: _Sample, metrics: dict[str, Any], plots: Path, seed: int
) -> dict[str, Outcome]:
    """The kNN confusion matrix, PCA and t-SNE maps and the retrieval grid of ``sample``."""
    queries, names = sample.queries, sample.names
    out: dict[str, Outcome] = {}
    out["confusion"] = plot_confusion(
        np.asarray(metrics["confusion_matrix"]), names, plots / EVALUATION_PLOTS["confusion"],
        f"predicted (kNN, k={REPORT_K})",
        f"kNN confusion, {len(queries)} queries (macro-F1 {metrics['macro_f1']:.3f})",
    )  # fmt: skip
    normed = torch.nn.functional.normalize(sample.query_f, dim=1)  # the geometry kNN sees
    coords, ratio = pca(normed, 2)
    out["pca"] = plot_embedding_map(
        coords.numpy(), queries.labels, names, plots / EVALUATION_PLOTS["pca"],
        title=f"PCA of L2-normalised features ({len(queries)} queries)",
        axis_labels=tuple(
            f"PC{i + 1} ({100 * float(r):.1f} % variance)" for i, r in enumerate(ratio)
        ),
    )  # fmt: skip
    embedded = tsne(normed, seed=seed)
    out["tsne"] = (
        embedded
        if isinstance(embedded, str)
        else plot_embedding_map(
            embedded,
            queries.labels,
            names,
            plots / EVALUATION_PLOTS["tsne"],
            title=f"t-SNE of L2-normalised features ({len(queries)} queries)",
            axis_labels=("t-SNE 1", "t-SNE 2"),
        )  # fmt: skip
    )
    chosen = retrieval_queries(queries.labels, seed)
    sims, idx = nearest_neighbours(sample.bank_f, sample.query_f[chosen], NEIGHBOURS)
    out["retrieval"] = plot_retrieval_grid(
        queries.images[chosen], queries.labels[chosen], sample.voters.images[idx],
        sample.voters.labels[idx], sims, names, plots / EVALUATION_PLOTS["retrieval"],
        style=queries.style,
    )  # fmt: skip
    return out


def evaluation_plots(
    run_dir: Path,
    config: dict[str, Any],
    plots: Path,
    *,
    data: ImageDataset | str | None,
    bank: ImageDataset | str | None,
    split: str | None,
    max_points: int,
    max_bank: int | None,
    seed: int,
    trust_checkpoint: bool = False,
) -> tuple[list[str], dict[str, Outcome]]:
    """(report lines, {plot key: outcome}) for the four plots that need labelled data."""
    from selfsup.artifacts import load_trained
    from selfsup.runtime.files import UntrustedCheckpointError

    try:
        backbone, preprocess, meta = load_trained(run_dir, trust_checkpoint=trust_checkpoint)
    except UntrustedCheckpointError:
        raise  # a refused file is the user's decision to make, not a missing plot
    except Exception as err:  # whatever broke the run's model files, the report still gets out
        return [], dict.fromkeys(EVALUATION_PLOTS, f"no trained backbone to evaluate ({err})")
    found = resolve_eval_data(config, meta, data, bank, split, seed)
    if isinstance(found, str):
        return [], dict.fromkeys(EVALUATION_PLOTS, found)
    start = time.perf_counter()
    precision = _feature_precision(run_dir)
    sample = _embed_sample(backbone, preprocess, found, precision, max_points, max_bank, seed)
    temperature = float(config.get("knn_temperature") or KNN_TEMPERATURE)
    metrics = _knn_metrics(sample, temperature)
    source = "the exported backbone" if (run_dir / META).is_file() else "the last checkpoint"
    lines = _evaluation_lines(sample, found, meta, source, metrics, temperature, seed)
    outcomes = _draw_evaluation(sample, metrics, plots, seed)
    log.info("report: evaluation plots in %.1f s", time.perf_counter() - start)
    return lines, outcomes
