"""The end-of-run table: kNN scores of the pretrained backbone next to its random init."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfsup.runtime.files import atomic_write_text


def knn_comparison_table(summary: dict[str, Any]) -> str:
    """Markdown table with one row per kNN k and columns for random init and pretrained."""
    pretrained = summary.get("pretrained") or {}
    random_init = summary.get("random_init") or {}
    ks = sorted({int(key[3:].split("_")[0]) for key in pretrained if key.startswith("knn")})
    if not ks:
        return "(no labelled validation data: no kNN table)"
    lines = [
        "| kNN (val) | random init macro-F1 | pretrained macro-F1 "
        "| random init bal. acc. | pretrained bal. acc. |",
        "|---|---|---|---|---|",
    ]
    for k in ks:
        row = [f"k={k}"]
        for metric in ("macro_f1", "balanced_accuracy"):
            for scores in (random_init, pretrained):
                value = scores.get(f"knn{k}_{metric}")
                row.append("n/a" if value is None else f"{value:.4f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_run_report(run_dir: Path, summary: dict[str, Any]) -> None:
    minutes = summary.get("train_seconds", 0.0) / 60
    ips = summary.get("images_per_s")
    text = [
        f"# Run {Path(run_dir).name}",
        "",
        f"- method: {summary.get('method')}, backbone: {summary.get('backbone')}",
        f"- epochs completed: {summary.get('epochs_completed')}, steps: {summary.get('steps')}",
        f"- training wall time: {minutes:.1f} min"
        + (f", {ips:.0f} images/s (last epoch)" if ips else ""),
        "",
        knn_comparison_table(summary),
        "",
    ]
    atomic_write_text(Path(run_dir) / "report.md", "\n".join(text))
