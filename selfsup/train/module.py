"""The thin LightningModule around any Method: views, training_loss, on_train_step_end, logs."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor

from selfsup.methods.base import Method
from selfsup.runtime.optim import build_optimizer, warmup_cosine
from selfsup.runtime.precision import views_threads


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; training stops and the last good checkpoint is kept."""


class PretrainModule(L.LightningModule):
    """Trains ``method`` with the trainer never special-casing a method.

    One step: ``views = method.views(batch)`` (outside autocast, on the device) ->
    ``method.training_loss(views, **fields)`` (the ``batch_fields`` the method declared, which
    the loader yields beside the images) -> NaN/Inf guard -> backward ->
    ``method.before_optimizer_step()`` -> optimizer step -> ``method.on_train_step_end(progress)``;
    ``method.on_train_epoch_start(epoch)`` at every epoch start.
    """

    def __init__(
        self,
        method: Method,
        *,
        optimizer: str = "sgd",
        lr: float = 0.06,
        weight_decay: float = 5e-4,
        sgd_momentum: float = 0.9,
        warmup_steps: int = 0,
        total_steps: int = 1,
        channels_last: bool = False,
        time_budget_minutes: float | None = None,
        build_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.method = method
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.sgd_momentum = sgd_momentum
        self.warmup_steps = warmup_steps
        self.total_steps = max(1, total_steps)
        self.channels_last = channels_last
        self.time_budget_s = 60 * time_budget_minutes if time_budget_minutes else None
        self.time_progress = 0.0  # elapsed / budget, the same on every process
        self._train_seconds_before = 0.0  # training time of earlier runs of a resumed fit
        self._clock_start: float | None = None
        # enough to rebuild the method from a checkpoint alone
        self.save_hyperparameters({"build_config": build_config or {}})

    def _images_and_fields(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """(images, the method's per-sample fields) of a loader batch."""
        if isinstance(batch, (tuple, list)):
            fields = batch[1] if len(batch) > 1 and isinstance(batch[1], dict) else {}
            return batch[0], fields
        return batch, {}

    # --- wall-clock budget ----------------------------------------------------------------------

    def train_seconds(self) -> float:
        """Seconds of training so far, including the runs before a resume."""
        if self._clock_start is None:
            return self._train_seconds_before
        return self._train_seconds_before + time.monotonic() - self._clock_start

    def on_train_start(self) -> None:
        self._clock_start = time.monotonic()
        # a resumed run continues its schedules (EMA rate, temperatures) where it stopped
        self._update_time_progress()
        self.method.set_progress(self.progress())

    def _update_time_progress(self) -> None:
        """elapsed / budget, taken from process 0 so every process follows the same schedule
        and stops at the same step."""
        if self.time_budget_s is None:
            return
        elapsed = self.trainer.strategy.broadcast(self.train_seconds(), src=0)
        self.time_progress = min(1.0, elapsed / self.time_budget_s)

    def progress(self) -> float:
        """Training progress in [0, 1]: steps / total_steps, or the time budget's share when
        that is further along. Drives the LR cosine and the methods' schedules."""
        return min(1.0, max(self.global_step / self.total_steps, self.time_progress))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["selfsup_train_seconds"] = self.train_seconds()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._train_seconds_before = float(checkpoint.get("selfsup_train_seconds", 0.0))

    # --- the step ---------------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        # before the optimizer step, so the LR scheduler (stepped right after it) sees it
        self._update_time_progress()
        images, fields = self._images_and_fields(batch)
        # Views are data preparation: keep them out of autocast so geometric ops stay exact.
        with torch.autocast(device_type=images.device.type, enabled=False), views_threads(images):
            views = self.method.views(images)
            if self.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        out = self.method.training_loss(views, **self.method.select_fields(fields))
        loss = out.loss
        if not torch.isfinite(loss.detach()).item():
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); "
                "stopped. Lower the learning rate or use precision=32-true; the last good "
                "checkpoint is kept"
            )
        batch_size = images.shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        for key, value in out.logs.items():
            self.log(f"train/{key}", value, batch_size=batch_size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size)
        return loss

    def on_train_epoch_start(self) -> None:
        self.method.on_train_epoch_start(self.current_epoch)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.method.before_optimizer_step()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.method.on_train_step_end(self.progress())
        if self.time_progress >= 1.0:
            self.trainer.should_stop = True  # the budget is spent and the LR has annealed

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(
            self.optimizer_name,
            self.method,
            lr=self.lr,
            weight_decay=self.weight_decay,
            momentum=self.sgd_momentum,
        )
        warmup, total = self.warmup_steps, self.total_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, total, warmup, time_progress=self.time_progress),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def total_training_steps(steps_per_epoch: int, epochs: int, max_steps: int | None) -> int:
    total = steps_per_epoch * epochs
    return min(total, max_steps) if max_steps else total


def warmup_steps_for(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    return min(total_steps // 2, math.ceil(warmup_epochs * steps_per_epoch))
