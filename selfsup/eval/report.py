"""``report.md`` + ``plots/*.png`` for a run folder, regenerated from what the folder holds: the
run's one report, written when training ends and again by ``selfsup report RUN``.

```
write_report("runs/fastsiam-wafers")              # wafer runs find their validation maps
write_report(run, data=val_dataset)               # or any held-out labelled ImageDataset
write_report(run, evaluation=False)               # what training writes at its end
```

Training curves come from ``metrics.csv`` (Lightning's CSVLogger, plus ``metrics.part*.csv``
of a resumed run), the kNN table from ``summary.json``; with labelled data the trained
backbone (``selfsup.artifacts.load_trained``) embeds a seeded subsample for a kNN confusion matrix,
PCA and t-SNE maps and a nearest-neighbour grid. Whatever is missing (an interrupted run, no
labels, no scikit-learn) skips its plot and the report says why. At the end of training the
embedding plots are left out (they take labelled data and a while), and the report says that
``selfsup report RUN`` draws them: a resumed run's report never passes off plots of the
backbone before the resume as its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfsup.data.image_dataset import ImageDataset
from selfsup.eval.metric_keys import knn_metric_key, parse_knn_metric_key
from selfsup.eval.reconstructions import RECONSTRUCTIONS_PLOT
from selfsup.eval.report_evaluation import EVALUATION_PLOTS, evaluation_plots
from selfsup.eval.run_curves import (
    Outcome,
    metrics_files,
    plot_collapse,
    plot_knn_monitor,
    plot_training,
    read_metrics,
)
from selfsup.eval.run_files import read_config, read_summary_safe
from selfsup.runtime.files import atomic_write_text

TRAINING_PLOTS = {  # plot key -> file in RUN/plots
    "training": "training.png",
    "knn_monitor": "knn_monitor.png",
    "collapse": "collapse.png",
}
PLOTS = {**TRAINING_PLOTS, **EVALUATION_PLOTS}
NOT_EVALUATED = (
    "not drawn when training ends; `selfsup report RUN` embeds labelled data with the trained "
    "backbone and draws it"
)
CONFIG_KEYS = (
    "method", "backbone", "backbone_kwargs", "method_kwargs", "data", "train_split", "val_split",
    "val_data", "image_size", "epochs", "max_steps", "batch_size", "optimizer", "lr",
    "lr_scaling", "weight_decay", "warmup_epochs", "precision", "seed", "knn_k",
    "knn_temperature",
)  # fmt: skip


def scored_ks(scores: dict[str, Any]) -> list[int]:
    """The k values of the kNN metric keys in ``scores`` (``knn5_macro_f1`` -> 5), ascending."""
    return sorted({parsed[0] for key in scores if (parsed := parse_knn_metric_key(key))})


NO_GAIN_MARGIN = 0.01  # pretrained kNN macro-F1 within this of random init: no gain, flagged
NO_GAIN_FLAG = "**NO GAIN OVER RANDOM INIT**"


def knn_gain_line(summary: dict[str, Any]) -> str:
    """One line on the first k's val kNN macro-F1, pretrained against random init, flagging a
    run that gained less than ``NO_GAIN_MARGIN`` (it learnt nothing the kNN sees); "" without
    both scores."""
    pretrained = summary.get("pretrained") or {}
    random_init = summary.get("random_init") or {}
    ks = scored_ks(pretrained)
    key = knn_metric_key(ks[0]) if ks else None
    if key is None or key not in random_init:
        return ""
    gain = pretrained[key] - random_init[key]
    line = (
        f"val kNN k={ks[0]} macro-F1: pretrained {pretrained[key]:.4f}, random init "
        f"{random_init[key]:.4f} ({gain:+.4f})"
    )
    if gain < NO_GAIN_MARGIN:
        line = (
            f"{NO_GAIN_FLAG} ({line}): the backbone at its initial weights "
            "scores as well; see the training curves, and evaluate it (fine-tuning with few "
            "labels) before using it"
        )
    return line


MONITOR_SHARE_HINT = 0.3  # above this share of the training time, say how to monitor less


def monitor_share_line(summary: dict[str, Any], every_n_epochs: int) -> str:
    """The kNN monitor's passes and their share of the run's training time (a time budget
    counts them), with how to lower it when it is above ``MONITOR_SHARE_HINT``; "" when the
    run had no monitor."""
    seconds = summary.get("knn_monitor_seconds")
    total = summary.get("train_seconds")
    if not seconds or not total:
        return ""
    passes = len(summary.get("knn_history", []))
    share = seconds / total
    line = f"kNN monitor: {passes} passes, {seconds:.0f} s of {total:.0f} s training ({share:.0%})"
    if share > MONITOR_SHARE_HINT:
        line += (
            f"; `--set knn_every_n_epochs={2 * every_n_epochs}` or more leaves training more of "
            "the time"
        )
    return line


def knn_comparison_table(summary: dict[str, Any]) -> str:
    """Markdown table of the end-of-run kNN scores (``summary.json``): one row per k, columns
    for random init and pretrained."""
    pretrained = summary.get("pretrained") or {}
    random_init = summary.get("random_init") or {}
    ks = scored_ks(pretrained)
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
                value = scores.get(knn_metric_key(k, metric))
                row.append("n/a" if value is None else f"{value:.4f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


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


def _missing_inputs(
    run_dir: Path, config: dict[str, Any], summary: dict[str, Any], notes: list[str]
) -> list[str]:
    """What the run folder lacks, for the report's "Missing" list."""
    missing: list[str] = []
    if not config:
        missing.append("config.yaml (missing or unreadable): no settings table, no inferred data")
    if not summary:
        missing.append("summary.json: the run was interrupted or is still running")
    if not metrics_files(run_dir):
        missing.append("metrics.csv: no training curves")
    return missing + notes


def write_report(
    run_dir: str | Path,
    *,
    evaluation: bool = True,
    data: ImageDataset | str | None = None,
    bank: ImageDataset | str | None = None,
    split: str | None = None,
    max_points: int = 3000,
    max_bank: int | None = 5000,
    seed: int = 0,
    trust_checkpoint: bool = False,
) -> Path:
    """Regenerate ``run_dir/report.md`` and ``run_dir/plots/*.png``; returns the report's path.

    evaluation: draw the plots that embed labelled data with the trained backbone; False (what
    training writes when it ends) leaves them out, removes older ones, and says how to draw
    them. data: held-out labelled images (an ImageDataset at the backbone's size, or a data
    spec loaded at that size; ``split`` picks the built-in wafer split, default val). None
    uses the run's own validation data (built-in wafers' val split, or ``val_data``). bank:
    labelled images that vote in the kNN and are retrieved; None uses the run's training
    data, or half of ``data``. max_points / max_bank cap the queries / bank (None: no cap),
    drawn with ``seed``; a smaller bank than the kNN monitor's gives lower kNN scores. Missing
    inputs skip a plot and the report says why; an interrupted run's folder still gets a
    report. A run without an export is evaluated from its last checkpoint, read safely unless
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
    outcomes: dict[str, Outcome] = {
        "training": plot_training(rows, plots / PLOTS["training"]),
        "knn_monitor": plot_knn_monitor(rows, summary, plots / PLOTS["knn_monitor"]),
        "collapse": plot_collapse(
            rows, config.get("collapse_threshold", 0.02), plots / PLOTS["collapse"]
        ),
    }
    eval_lines: list[str] = []
    if evaluation:
        eval_lines, eval_outcomes = evaluation_plots(
            run_dir, config, plots, data=data, bank=bank, split=split, max_points=max_points,
            max_bank=max_bank, seed=seed, trust_checkpoint=trust_checkpoint,
        )  # fmt: skip
    else:
        eval_outcomes = dict.fromkeys(EVALUATION_PLOTS, NOT_EVALUATED)
    outcomes.update(eval_outcomes)
    for key, outcome in outcomes.items():
        if isinstance(outcome, str):  # a plot from an earlier report would contradict this one
            (plots / PLOTS[key]).unlink(missing_ok=True)
    missing = _missing_inputs(run_dir, config, summary, notes)
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
    if gain := knn_gain_line(summary):
        lines += ["", gain]
    lines += ["", "## Settings", ""] + _config_table(config, summary) + [""]
    lines += ["## Training", ""]
    for key in TRAINING_PLOTS:
        lines += _section(TITLES[key], outcomes[key], plots)
    if (plots / RECONSTRUCTIONS_PLOT).is_file():  # drawn when a reconstruction method ends
        title = "Reconstructions at the end of training (inputs, corrupted, reconstructed)"
        lines += _section(title, plots / RECONSTRUCTIONS_PLOT, plots)
    lines += ["## Evaluation on labelled data", ""]
    if eval_lines:
        lines += eval_lines + [""]
    for key in EVALUATION_PLOTS:
        lines += _section(TITLES[key], outcomes[key], plots)
    return "\n".join(lines).rstrip() + "\n"
