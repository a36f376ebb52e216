"""``report.md`` + ``plots/*.png`` for a run folder, regenerated from what the folder holds.

```
write_report("runs/fastsiam-wafers")              # wafer runs find their validation maps
write_report(run, data=val_dataset)               # or any held-out labelled ImageDataset
```

Training curves come from ``metrics.csv`` (Lightning's CSVLogger, plus ``metrics.part*.csv``
of a resumed run), the kNN table from ``summary.json``; with labelled data the trained
backbone (``selfsup.artifacts.load_trained``) embeds a seeded subsample for a kNN confusion matrix,
PCA and t-SNE maps and a nearest-neighbour grid. Whatever is missing (an interrupted run, no
labels, no scikit-learn) skips its plot and the report says why.
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
import yaml

from selfsup.artifacts import META
from selfsup.data.dataset import WAFER_SPECS, ImageDataset
from selfsup.eval.embedding_map import (
    nearest_neighbours,
    pca,
    plot_confusion,
    plot_embedding_map,
    plot_retrieval_grid,
    tsne,
)
from selfsup.eval.run_curves import (
    Outcome,
    metrics_files,
    plot_collapse,
    plot_knn_monitor,
    plot_training,
    read_metrics,
)
from selfsup.runtime.files import atomic_write_text

log = logging.getLogger("selfsup.eval")

PLOTS = {
    "training": "training.png",
    "knn_monitor": "knn_monitor.png",
    "collapse": "collapse.png",
    "confusion": "knn_confusion.png",
    "pca": "embedding_pca.png",
    "tsne": "embedding_tsne.png",
    "retrieval": "retrieval.png",
}
KNN_K = 5  # the published wafer setting (DESIGN.md); k=200 needs banks far larger than a report's
NEIGHBOURS = 5
RETRIEVAL_ROWS = (4, 10)  # at least 4 query rows, at most 10 (one per class first)
CONFIG_KEYS = (
    "method", "backbone", "backbone_kwargs", "method_kwargs", "data", "train_split", "val_split",
    "val_data", "image_size", "epochs", "max_steps", "batch_size", "optimizer", "lr",
    "lr_scaling", "weight_decay", "warmup_epochs", "precision", "seed", "knn_k",
    "knn_temperature",
)  # fmt: skip


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return values if isinstance(values, dict) else {}


def read_summary_safe(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    try:
        values = json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return values if isinstance(values, dict) else {}


# --- evaluation on labelled data --------------------------------------------------------------


@dataclass
class EvalData:
    bank: ImageDataset  # labelled images that vote (kNN) and are retrieved
    queries: ImageDataset  # held-out labelled images that are classified and mapped
    note: str  # where both came from, for the report


def _load_spec(spec: str, meta: dict[str, Any], split: str | None) -> ImageDataset:
    from selfsup.data import load_dataset

    return load_dataset(
        spec,
        image_size=int(meta["image_size"]),
        in_channels=int(meta["in_channels"]),
        split=split if spec.lower() in WAFER_SPECS else None,
    )


def _inferred_bank(config: dict[str, Any], meta: dict[str, Any]) -> ImageDataset | None:
    """The run's own labelled training data at the backbone's size, when it can be loaded."""
    spec = config.get("data")
    if not spec:
        return None
    try:
        bank = _load_spec(str(spec), meta, config.get("train_split") or "train")
    except (OSError, ValueError) as err:
        log.info("report: cannot reload the training data '%s' as kNN bank (%s)", spec, err)
        return None
    return bank if bank.labels is not None else None


def _inferred_queries(
    config: dict[str, Any], meta: dict[str, Any], split: str | None
) -> ImageDataset | str:
    """The run's own labelled validation data at the backbone's size, or why there is none."""
    spec = str(config.get("data") or "")
    if spec.lower() in WAFER_SPECS and (split or config.get("val_split", "val")):
        split = split or config.get("val_split") or "val"
    elif config.get("val_data"):
        spec, split = str(config["val_data"]), None
    else:
        return (
            "no labelled evaluation data (the run has no validation data): pass data= "
            "(a labelled, held-out ImageDataset or data spec)"
        )
    try:
        return _load_spec(spec, meta, split)
    except (OSError, ValueError) as err:
        return f"the run's validation data '{spec}' cannot be loaded ({err})"


def _check_fits(data: ImageDataset, meta: dict[str, Any], role: str) -> None:
    for name, have, want in (
        ("in_channels", data.in_channels, int(meta["in_channels"])),
        ("image_size", data.image_size, int(meta["image_size"])),
    ):
        if have != want:
            raise ValueError(
                f"write_report: the {role} ({data.source}) has {name}={have} but the run's "
                f"backbone takes {name}={want}"
            )


def resolve_eval_data(
    config: dict[str, Any],
    meta: dict[str, Any],
    data: ImageDataset | str | None,
    bank: ImageDataset | str | None,
    split: str | None,
    seed: int,
) -> EvalData | str:
    """Queries and bank for the evaluation plots, or why there are none.

    Explicit ``data``/``bank`` that do not fit the backbone raise ValueError; inferred data
    that cannot be found gives a reason for the report instead.
    """
    if data is None:
        found = _inferred_queries(config, meta, split)
        if isinstance(found, str):
            return found
        data = found
    elif isinstance(data, str):
        data = _load_spec(data, meta, split or "val")
    _check_fits(data, meta, "data")
    if data.labels is None:
        return f"the evaluation data ({data.source}) has no labels"
    if isinstance(bank, str):
        bank = _load_spec(bank, meta, config.get("train_split") or "train")
    if bank is not None:
        _check_fits(bank, meta, "bank")
        if bank.labels is None:
            raise ValueError(f"write_report: the bank ({bank.source}) has no labels")
    else:
        bank = _inferred_bank(config, meta)
    if bank is not None:
        if bank.class_names and data.class_names and bank.class_names != data.class_names:
            return (
                f"the bank ({bank.source}) and the queries ({data.source}) name their classes "
                "differently, so kNN labels would not match"
            )
        return EvalData(bank, data, f"bank: {bank.source}; queries: {data.source}")
    from selfsup.eval.finetune import stratified_fraction

    half = stratified_fraction(data.labels, 0.5, seed=seed)
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[half] = False
    if not bool(rest.any()):
        return f"the evaluation data ({data.source}) is too small to split into bank and queries"
    note = f"no labelled training data: {data.source} split in two halves (bank, queries), seeded"
    return EvalData(data.subset(half), data.subset(rest.nonzero().squeeze(1)), note)


def _feature_precision(run_dir: Path) -> str:
    """bf16 when the run trained in bf16 (as its kNN monitor did), else float32."""
    path = run_dir / "provenance.json"
    try:
        trained = json.loads(path.read_text()).get("precision") if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        trained = None
    return "bf16-mixed" if trained == "bf16-mixed" else "32-true"


def seeded_subset(data: ImageDataset, limit: int | None, seed: int) -> ImageDataset:
    """At most ``limit`` images, drawn uniformly without replacement (sorted, seeded)."""
    if limit is None or len(data) <= limit:
        return data
    generator = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=generator)[:limit].sort().values)


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
    keys = ("confusion", "pca", "tsne", "retrieval")
    from selfsup.artifacts import load_trained
    from selfsup.runtime.files import UntrustedCheckpointError

    try:
        backbone, preprocess, meta = load_trained(run_dir, trust_checkpoint=trust_checkpoint)
    except UntrustedCheckpointError:
        raise  # a refused file is the user's decision to make, not a missing plot
    except Exception as err:  # whatever broke the run's model files, the report still gets out
        reason = f"no trained backbone to evaluate ({err})"
        return [], dict.fromkeys(keys, reason)
    found = resolve_eval_data(config, meta, data, bank, split, seed)
    if isinstance(found, str):
        return [], dict.fromkeys(keys, found)
    from selfsup.eval import (
        classification_metrics,
        extract_features,
        format_metrics_table,
        knn_classify,
    )

    queries = seeded_subset(found.queries, max_points, seed)
    voters = seeded_subset(found.bank, max_bank, seed + 1)
    start = time.perf_counter()
    precision = _feature_precision(run_dir)
    query_f = extract_features(backbone, queries.images, preprocess, precision=precision)
    bank_f = extract_features(backbone, voters.images, preprocess, precision=precision)
    num_classes = max(
        len(queries.class_names or voters.class_names or []),
        int(max(int(queries.labels.max()), int(voters.labels.max()))) + 1,
    )
    names = list(queries.class_names or voters.class_names or [])
    names += [str(c) for c in range(len(names), num_classes)]
    temperature = float(config.get("knn_temperature") or 0.1)
    scores = knn_classify(
        bank_f, voters.labels, query_f, k=KNN_K, temperature=temperature, num_classes=num_classes
    )[KNN_K]
    metrics = classification_metrics(queries.labels, None, num_classes, names, scores=scores)
    source = "the exported backbone" if (run_dir / META).is_file() else "the last checkpoint"
    lines = [
        f"Features of {source} ({meta.get('name', '?')}, {meta.get('feature_dim', '?')}-d, "
        f"{precision}). {found.note[0].upper()}{found.note[1:]}.",
        "",
        f"{len(queries)} of {len(found.queries)} query images and {len(voters)} of "
        f"{len(found.bank)} bank images (random, seed {seed}); kNN k={KNN_K}, "
        f"t={temperature:g}, cosine similarity on the backbone's features:",
        "",
        format_metrics_table(
            {f"kNN k={KNN_K} (this sample)": metrics},
            keys=["macro_f1", "balanced_accuracy", "accuracy"],
        ),
    ]
    out: dict[str, Outcome] = {}
    out["confusion"] = plot_confusion(
        np.asarray(metrics["confusion_matrix"]),
        names,
        plots / PLOTS["confusion"],
        f"predicted (kNN, k={KNN_K})",
        f"kNN confusion, {len(queries)} queries (macro-F1 {metrics['macro_f1']:.3f})",
    )
    normed = torch.nn.functional.normalize(query_f, dim=1)  # the geometry kNN sees
    coords, ratio = pca(normed, 2)
    out["pca"] = plot_embedding_map(
        coords.numpy(),
        queries.labels,
        names,
        plots / PLOTS["pca"],
        title=f"PCA of L2-normalised features ({len(queries)} queries)",
        axis_labels=tuple(
            f"PC{i + 1} ({100 * float(r):.1f} % variance)" for i, r in enumerate(ratio)
        ),
    )
    embedded = tsne(normed, seed=seed)
    out["tsne"] = (
        embedded
        if isinstance(embedded, str)
        else plot_embedding_map(
            embedded,
            queries.labels,
            names,
            plots / PLOTS["tsne"],
            title=f"t-SNE of L2-normalised features ({len(queries)} queries)",
            axis_labels=("t-SNE 1", "t-SNE 2"),
        )
    )
    chosen = retrieval_queries(queries.labels, seed)
    sims, idx = nearest_neighbours(bank_f, query_f[chosen], NEIGHBOURS)
    out["retrieval"] = plot_retrieval_grid(
        queries.images[chosen],
        queries.labels[chosen],
        voters.images[idx],
        voters.labels[idx],
        sims,
        names,
        plots / PLOTS["retrieval"],
        style=queries.style,
    )
    log.info("report: evaluation plots in %.1f s", time.perf_counter() - start)
    return lines, out


# --- the report -------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text.replace("|", "\\|")


def _config_table(config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    rows = [(key, config[key]) for key in CONFIG_KEYS if key in config]
    for key in ("epochs_completed", "steps", "images_per_s", "collapse_warnings_epochs"):
        if key in summary:
            value = summary[key]
            rows.append((key, round(value, 1) if isinstance(value, float) else value))
    if "train_seconds" in summary:
        rows.append(("training time (min)", round(summary["train_seconds"] / 60, 2)))
    if not rows:
        return ["(no config.yaml or summary.json: the settings are unknown)"]
    return ["| setting | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows]


def _section(title: str, outcome: Outcome, plots_dir: Path) -> list[str]:
    if isinstance(outcome, Path):
        return [f"### {title}", "", f"![{title}]({plots_dir.name}/{outcome.name})", ""]
    return [f"### {title}", "", f"_Skipped: {outcome}._", ""]


def write_report(
    run_dir: str | Path,
    *,
    data: ImageDataset | str | None = None,
    bank: ImageDataset | str | None = None,
    split: str | None = None,
    max_points: int = 3000,
    max_bank: int | None = 5000,
    seed: int = 0,
    trust_checkpoint: bool = False,
) -> Path:
    """Regenerate ``run_dir/report.md`` and ``run_dir/plots/*.png``; returns the report's path.

    data: held-out labelled images (an ImageDataset at the backbone's size, or a data spec
    loaded at that size; ``split`` picks the built-in wafer split, default val). None uses the
    run's own validation data (built-in wafers' val split, or ``val_data``). bank: labelled
    images that vote in the kNN and are retrieved; None uses the run's training data, or half
    of ``data``. max_points / max_bank cap the queries / bank (None: no cap), drawn with
    ``seed``; a smaller bank than the kNN monitor's gives lower kNN scores. Missing inputs
    skip a plot and the report says why; an interrupted run's folder still gets a report.
    A run without an export is evaluated from its last checkpoint, read safely unless
    ``trust_checkpoint``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder '{run_dir}' does not exist")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    plots = run_dir / "plots"
    config, summary = read_config(run_dir), read_summary_safe(run_dir)
    rows, notes = read_metrics(run_dir)
    missing: list[str] = []
    if not config:
        missing.append("config.yaml (missing or unreadable): no settings table, no inferred data")
    if not summary:
        missing.append("summary.json: the run was interrupted or is still running")
    if not metrics_files(run_dir):
        missing.append("metrics.csv: no training curves")
    missing += notes

    threshold = config.get("collapse_threshold", 0.02)
    outcomes: dict[str, Outcome] = {
        "training": plot_training(rows, plots / PLOTS["training"]),
        "knn_monitor": plot_knn_monitor(rows, summary, plots / PLOTS["knn_monitor"]),
        "collapse": plot_collapse(rows, threshold, plots / PLOTS["collapse"]),
    }
    eval_lines, eval_outcomes = evaluation_plots(
        run_dir, config, plots, data=data, bank=bank, split=split,
        max_points=max_points, max_bank=max_bank, seed=seed, trust_checkpoint=trust_checkpoint,
    )  # fmt: skip
    outcomes.update(eval_outcomes)
    for key, outcome in outcomes.items():
        if isinstance(outcome, str):  # a plot from an earlier report would contradict this one
            (plots / PLOTS[key]).unlink(missing_ok=True)

    text = _report_text(run_dir, config, summary, missing, outcomes, eval_lines, plots)
    path = run_dir / "report.md"
    atomic_write_text(path, text)
    return path


TITLES: dict[str, str] = {
    "training": "Training loss and learning rate",
    "knn_monitor": "kNN monitor",
    "collapse": "Collapse monitor",
    "confusion": "kNN confusion matrix",
    "pca": "Embedding map (PCA)",
    "tsne": "Embedding map (t-SNE)",
    "retrieval": "Nearest-neighbour retrieval",
}


def _report_text(
    run_dir: Path,
    config: dict[str, Any],
    summary: dict[str, Any],
    missing: list[str],
    outcomes: dict[str, Outcome],
    eval_lines: list[str],
    plots: Path,
) -> str:
    from selfsup.train.report import knn_comparison_table

    method = summary.get("method") or config.get("method") or "?"
    backbone = summary.get("backbone") or config.get("backbone") or "?"
    lines = [f"# Run {run_dir.name}", "", f"{method} with a {backbone} backbone", ""]
    if missing:
        lines += ["Missing from the run folder:", ""] + [f"- {m}" for m in missing] + [""]
    lines += ["## kNN on validation data: random init vs pretrained", ""]
    lines.append(
        knn_comparison_table(summary)
        if summary
        else "(no summary.json: the end-of-run kNN table is written when training finishes)"
    )
    lines += ["", "## Settings", ""] + _config_table(config, summary) + [""]
    lines += ["## Training", ""]
    for key in ("training", "knn_monitor", "collapse"):
        lines += _section(TITLES[key], outcomes[key], plots)
    lines += ["## Evaluation on labelled data", ""]
    if eval_lines:
        lines += eval_lines + [""]
    for key in ("confusion", "pca", "tsne", "retrieval"):
        lines += _section(TITLES[key], outcomes[key], plots)
    return "\n".join(lines).rstrip() + "\n"
