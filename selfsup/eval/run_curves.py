"""Training curves of a run folder: ``metrics.csv`` (Lightning's CSVLogger) read back and plotted.

A resumed run keeps its killed parts as ``metrics.part<N>.csv``; they are read first, and a
later row wins where steps repeat. Every ``plot_*`` returns the PNG written, or the reason
it was skipped (no rows for its metric).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.eval.embedding_map import class_colors, new_figure, save_figure
from selfsup.eval.metric_keys import MONITOR_PREFIX, knn_metric_key, parse_knn_metric_key

SMOOTH_MIN_POINTS = 20
PLOTTED_KNN_METRICS = (("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced accuracy"))
_PART = re.compile(r"^metrics\.part(\d+)\.csv$")

Outcome = Path | str  # a written plot, or the reason it was skipped


def metrics_files(run_dir: Path) -> list[Path]:
    """``metrics.part0.csv``, ``metrics.part1.csv`` ... (killed parts), then ``metrics.csv``."""
    parts = [
        (int(m.group(1)), p)
        for p in run_dir.glob("metrics.part*.csv")
        if (m := _PART.match(p.name))
    ]
    files = [p for _, p in sorted(parts)]
    return files + ([run_dir / "metrics.csv"] if (run_dir / "metrics.csv").is_file() else [])


def read_metrics(run_dir: str | Path) -> tuple[list[dict[str, float]], list[str]]:
    """(rows with their numeric cells, notes about unreadable lines). Blank cells are dropped.

    A run killed mid-write can leave a short last line or garbage: those cells are ignored.
    """
    rows: list[dict[str, float]] = []
    notes: list[str] = []
    for path in metrics_files(Path(run_dir)):
        try:
            with path.open(newline="", encoding="utf-8", errors="replace") as handle:
                for raw in csv.DictReader(handle):
                    row = {}
                    for key, value in raw.items():
                        if key is None or not value:
                            continue
                        try:
                            row[key] = float(value)
                        except (TypeError, ValueError):
                            continue
                    rows.append(row)
        except csv.Error as err:
            notes.append(f"{path.name} is damaged after {len(rows)} rows ({err}); read up to there")
    return rows, notes


def series(
    rows: list[dict[str, float]], key: str, x: str = "step"
) -> tuple[np.ndarray, np.ndarray]:
    """(x values, key values) of the rows holding both, sorted by x; a later row wins a tie
    (a resumed run repeats the steps after its last checkpoint)."""
    points = {row[x]: row[key] for row in rows if key in row and x in row}
    xs = np.array(sorted(points), dtype=float)
    return xs, np.array([points[v] for v in xs], dtype=float)


def smoothed(values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard's smoothing slider)."""
    alpha = 2.0 / (span + 1.0)
    out, avg = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        avg = (1 - alpha) * avg + alpha * v
        out[i] = avg / (1 - (1 - alpha) ** (i + 1))
    return out


def plot_training(rows: list[dict[str, float]], path: Path) -> Outcome:
    loss, lr = series(rows, "train/loss"), series(rows, "train/lr")
    panels = [(name, s) for name, s in (("loss", loss), ("learning rate", lr)) if len(s[0])]
    if not panels:
        return "metrics.csv has no train/loss or train/lr values"
    fig = new_figure(5.0 * len(panels), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (name, (x, y)) in zip(axes, panels, strict=True):
        if name == "loss" and len(y) >= SMOOTH_MIN_POINTS:
            ax.plot(x, y, color="C0", alpha=0.3, linewidth=0.8, label="per step")
            ax.plot(x, smoothed(y, max(5, len(y) // 20)), color="C0", label="smoothed")
            ax.legend(fontsize="small")
        else:
            ax.plot(x, y, color="C0" if name == "loss" else "C1", marker="." if len(y) < 50 else "")
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_title(f"training {name}")
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _plotted_knn_key(key: str, prefix: str) -> tuple[int, str] | None:
    """(k, metric) of a kNN key whose metric the monitor plot shows; None otherwise."""
    parsed = parse_knn_metric_key(key, prefix=prefix)
    plotted = {metric for metric, _ in PLOTTED_KNN_METRICS}
    return parsed if parsed and parsed[1] in plotted else None


def knn_curves(
    rows: list[dict[str, float]], summary: dict[str, Any]
) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    """{(k, metric): (epochs, values)} from metrics.csv, else from summary.json's history."""
    curves = {}
    for key in sorted({key for row in rows for key in row}):
        parsed = _plotted_knn_key(key, MONITOR_PREFIX)
        if parsed:
            curves[parsed] = series(rows, key, x="epoch")
    if curves:
        return curves
    history = summary.get("knn_history") or []
    for key in sorted({k for entry in history for k in entry}):
        parsed = _plotted_knn_key(key, "")
        if parsed:
            pts = [(e["epoch"], e[key]) for e in history if key in e and "epoch" in e]
            curves[parsed] = (
                np.array([p[0] for p in pts], float),
                np.array([p[1] for p in pts], float),
            )
    return curves


def plot_knn_monitor(rows: list[dict[str, float]], summary: dict[str, Any], path: Path) -> Outcome:
    curves = knn_curves(rows, summary)
    if not curves:
        return (
            "no kNN monitor values (the run had no labelled validation data, or stopped "
            "before its first epoch ended)"
        )
    random_init = summary.get("random_init") or {}
    ks = sorted({k for k, _ in curves})
    colors = dict(zip(ks, class_colors(max(len(ks), 1)), strict=False))
    metrics = PLOTTED_KNN_METRICS
    fig = new_figure(10.0, 3.8)
    axes = fig.subplots(1, 2)
    for ax, (metric, title) in zip(axes, metrics, strict=True):
        for k in ks:
            if (k, metric) in curves:
                x, y = curves[(k, metric)]
                ax.plot(x, y, marker="o", color=colors[k], label=f"k={k}")
            baseline = random_init.get(knn_metric_key(k, metric))
            if baseline is not None:
                ax.axhline(baseline, linestyle="--", color=colors[k], label=f"k={k} random init")
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.set_title(f"kNN {title} (validation)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_collapse(rows: list[dict[str, float]], threshold: float | None, path: Path) -> Outcome:
    x, y = series(rows, "train/collapse_std")
    if not len(x):
        return "metrics.csv has no train/collapse_std values"
    fig = new_figure(6.0, 3.6)
    ax = fig.subplots()
    ax.plot(x, y, color="C2", label="collapse_std")
    if threshold is not None:
        ax.axhline(threshold, linestyle=":", color="C3", label=f"warning threshold {threshold:g}")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("step")
    ax.set_ylabel("std of normalised projections x sqrt(D)")
    ax.set_title("collapse monitor (~1 spread out, 0 collapsed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)
