"""Training monitors: kNN on a labelled validation split, representation collapse, throughput,
and progress lines when there is no progress bar."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L

from selfsup.eval.knn import KNN_TEMPERATURE, backbone_knn_scores
from selfsup.eval.metric_keys import MONITOR_PREFIX, knn_metric_key
from selfsup.runtime.progress import ENV_VAR, Progress, format_seconds

log = logging.getLogger("selfsup.train")


class KNNMonitor(L.Callback):
    """Logs ``knn_monitor_key(k, metric)`` (``val/knn5_macro_f1``, ...) for every k and kNN
    metric every ``every_n_epochs`` epochs.

    Every rank computes the same scores (evaluation data is small next to training), so
    Lightning's EarlyStopping can read them on all ranks.
    """

    def __init__(
        self,
        bank: Any,
        queries: Any,
        *,
        k: list[int],
        temperature: float = KNN_TEMPERATURE,
        every_n_epochs: int = 1,
        precision: str = "32-true",
    ) -> None:
        self.bank = bank
        self.queries = queries
        self.k = list(k)
        self.temperature = temperature
        self.every_n_epochs = max(1, every_n_epochs)
        self.precision = precision
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0  # spent in this fit's passes (a time budget counts them)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        last_epoch = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs and not last_epoch:
            return
        start = time.perf_counter()
        method = pl_module.method
        scores = backbone_knn_scores(
            method.backbone,
            method.views.preprocess,
            self.bank,
            self.queries,
            k=self.k,
            temperature=self.temperature,
            precision=self.precision,
        )
        logged = {MONITOR_PREFIX + key: value for key, value in scores.items()}
        pl_module.log_dict(logged, sync_dist=False)
        self.history.append({"epoch": epoch, **scores})
        main = knn_metric_key(self.k[0])
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        log.info("epoch %d: kNN %s = %.4f (%.1f s)", epoch, main, scores[main], elapsed)


class CollapseMonitor(L.Callback):
    """Warns when ``train/collapse_std`` falls below ``threshold`` at an epoch's end, and with
    ``stop=True`` ends training there, so a collapsed model is never trained further.

    collapse_std is the std of L2-normalised projections scaled by sqrt(D): ~1 when spread,
    0 when every sample maps to the same point (SimSiam/FastSiam collapse late on wafer maps).
    The collapsed epoch's checkpoint is still written (``last.ckpt``) but, when a kNN monitor
    runs, ``best.ckpt`` (what the run exports) holds the best epoch on validation.
    """

    def __init__(self, threshold: float = 0.02, stop: bool = True) -> None:
        self.threshold = threshold
        self.stop = stop
        self.collapsed_epochs: list[int] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("train/collapse_std")
        if value is None:
            return
        value = float(value)
        if value < self.threshold:
            self.collapsed_epochs.append(trainer.current_epoch)
            log.warning(
                "epoch %d: representation collapse suspected (collapse_std %.4f < %.4f)%s",
                trainer.current_epoch,
                value,
                self.threshold,
                "; stopping training" if self.stop else "",
            )
            if self.stop:
                trainer.should_stop = True


class ThroughputMonitor(L.Callback):
    """Logs ``train/images_per_s`` per epoch (raw images per second, all ranks together)."""

    def __init__(self) -> None:
        self._start = 0.0
        self._images = 0
        self.last: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        self._images += images.shape[0] * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self._start
        if self._images and elapsed > 0:
            self.last = self._images / elapsed
            pl_module.log("train/images_per_s", self.last)


# seconds between pretraining progress lines without a progress bar (SELFSUP_PROGRESS overrides)
PRETRAIN_PROGRESS_EVERY = 30.0


def pretrain_progress() -> Progress:
    """The reporter of ``StepProgress``: ``SELFSUP_PROGRESS`` when set (0 / off: quiet), else a
    line every ``PRETRAIN_PROGRESS_EVERY`` seconds."""
    return (
        Progress.from_env()
        if os.environ.get(ENV_VAR, "").strip()
        else Progress(every=PRETRAIN_PROGRESS_EVERY)
    )


class StepProgress(L.Callback):
    """Progress lines when the progress bar is off (logs, batch jobs, benchmarks), at most one
    every ``progress.every`` seconds, from the main process: the step, the epoch and the share
    of it done, the latest loss, the time elapsed and the time left (of ``budget_s``, the run's
    time budget, when it has one; else estimated from the steps planned)."""

    def __init__(self, progress: Progress, budget_s: float | None = None) -> None:
        self.progress = progress
        self.budget_s = budget_s
        self._start = self._last = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = self.progress.clock()
        self._first_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self.progress.clock()
        if not (self.progress.enabled and trainer.is_global_zero):
            return
        if now - self._last < self.progress.every:
            return
        self._last = now
        self.progress.write(self.line(trainer, outputs, batch_idx, now - self._start))

    def line(self, trainer: L.Trainer, outputs: Any, batch_idx: int, elapsed: float) -> str:
        batches = trainer.num_training_batches
        parts = [f"pretrain: step {trainer.global_step}"]
        if isinstance(batches, int):
            parts.append(f"epoch {trainer.current_epoch} ({batch_idx + 1}/{batches} batches)")
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            parts.append(f"loss {float(loss):.4g}")
        parts.append(f"{format_seconds(elapsed)} elapsed")
        done = trainer.global_step - self._first_step
        if self.budget_s is not None:
            parts.append(f"~{format_seconds(max(self.budget_s - elapsed, 0))} left of the "
                         f"{self.budget_s / 60:g}-minute budget")  # fmt: skip
        elif done > 0 and math.isfinite(total := trainer.estimated_stepping_batches):
            left = (total - trainer.global_step) * elapsed / done
            parts.append(f"~{format_seconds(max(left, 0))} left of {int(total)} steps")
        return ", ".join(parts)


class LastCheckpoint(L.Callback):
    """Writes ``last.ckpt`` at the end of every epoch (atomically, through the trainer's
    checkpoint IO), after the monitors have logged. A killed run resumes from it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # full state: resumable
