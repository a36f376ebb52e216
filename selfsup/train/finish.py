"""The end of a run, whatever the end: the best epoch exported and summarised, the metrics of
resumed parts kept, and the folder of a run that never reached a checkpoint removed."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor

from selfsup.config import PretrainConfig
from selfsup.eval.metric_keys import knn_metric_key
from selfsup.eval.reconstructions import RECONSTRUCTIONS_PLOT, save_reconstructions
from selfsup.runtime.files import load_checkpoint_file
from selfsup.train.callbacks import CollapseMonitor, KNNMonitor, ThroughputMonitor
from selfsup.train.module import PretrainModule
from selfsup.train.runfolder import write_summary
from selfsup.train.trainer import is_main_process

log = logging.getLogger("selfsup.train")


def remove_unstarted_run(run_dir: Path) -> None:
    """Delete a run folder this call made when the run failed before its first checkpoint:
    nothing in it can be resumed, and a corrected rerun should get the same name."""
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        log.info("the run stopped; '%s' keeps its last checkpoint (--resume %s)", run_dir, run_dir)
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("removed '%s': the run stopped before its first checkpoint", run_dir)


@contextlib.contextmanager
def metrics_parts(run_dir: Path, resumed: bool) -> Iterator[None]:
    """Lightning's CSV logger starts metrics.csv afresh on resume: the earlier part's rows move
    to metrics.partN.csv, and come back when the resumed fit logged nothing (a finished run)."""
    current = run_dir / "metrics.csv"
    part: Path | None = None
    if resumed and current.is_file() and is_main_process():
        part = run_dir / f"metrics.part{len(list(run_dir.glob('metrics.part*.csv')))}.csv"
        current.rename(part)
    try:
        yield
    finally:
        if part is not None and not current.exists():
            part.rename(current)


def finish_run(
    run_dir: Path,
    trainer: L.Trainer,
    module: PretrainModule,
    cfg: PretrainConfig,
    summary: dict[str, Any],
    callbacks: list[L.Callback],
    examples: Tensor | None = None,
) -> None:
    """Export the chosen epoch's backbone, write summary.json and the report; a method that
    reconstructs (``reconstruction_examples``) also draws its reconstructions of
    ``examples`` (raw uint8 images, e.g. the first validation images)."""
    from selfsup.artifacts import export_backbone

    best = run_dir / "checkpoints" / "best.ckpt"
    if best.is_file():  # the epoch chosen on the val kNN, never a later collapsed one
        state = load_checkpoint_file(best, trust=cfg.trust_checkpoint)["state_dict"]
        module.load_state_dict(state)
    method = module.method
    export_backbone(method, run_dir)
    if examples is not None:
        save_reconstructions(method, examples, run_dir / "plots" / RECONSTRUCTIONS_PLOT)
    summary["exported_checkpoint"] = "best" if best.is_file() else "last"
    for cb in callbacks:
        if isinstance(cb, KNNMonitor) and cb.history:
            history = summary.get("knn_history", []) + cb.history
            key = knn_metric_key(cfg.knn_k[0])
            chosen = max(history, key=lambda h: h[key]) if best.is_file() else history[-1]
            summary["pretrained"] = {k: v for k, v in chosen.items() if k != "epoch"}
            summary["pretrained_epoch"] = chosen["epoch"]
            summary["knn_history"] = history
            # every segment of a resumed run: its summary carries the earlier passes' time
            summary["knn_monitor_seconds"] = summary.get("knn_monitor_seconds", 0.0) + cb.seconds
        if isinstance(cb, ThroughputMonitor) and cb.last:
            summary["images_per_s"] = cb.last
        if isinstance(cb, CollapseMonitor):
            summary["collapse_warnings_epochs"] = cb.collapsed_epochs
    summary.update(
        {
            "method": cfg.method,
            "backbone": cfg.backbone,
            "data": cfg.data,
            "epochs_completed": trainer.current_epoch,
            # a run stopped by max_steps or the time budget ends inside an epoch
            "epochs_trained": round(trainer.global_step / max(1, trainer.num_training_batches), 4),
            "steps": trainer.global_step,
            # every segment of a resumed run, kept in the checkpoints
            "train_seconds": module.train_seconds(),
        }
    )
    write_summary(run_dir, summary)
    from selfsup.eval.report import NO_GAIN_FLAG, knn_gain_line, write_report

    if (gain := knn_gain_line(summary)).startswith(NO_GAIN_FLAG):
        log.warning(gain.replace("**", ""))

    write_report(run_dir, evaluation=False)
