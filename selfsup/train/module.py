"""The thin LightningModule around any Method: views, training_loss, on_train_step_end, logs.

Methods with several optimizer parts (``Method.optimizer_parts``: a GAN's discriminator, then
its generator and encoder) train through the same module by Lightning's manual optimization;
every other method keeps Lightning's automatic optimization, unchanged.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.core.optimizer import do_nothing_closure
from torch import Tensor, nn

from selfsup.methods.base import LossOutput, Method, checked_parts, only_trainable
from selfsup.runtime.distributed import seed_rank_views
from selfsup.runtime.optim import ADAM_BETAS, build_optimizer, warmup_cosine
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

    A method with several optimizer parts gets one optimizer and LR schedule per part, all
    built from the same settings, and, per batch, for each part in its update order: only that
    part trainable (``only_trainable``: the others' ``requires_grad`` off, so the part's
    backward leaves no gradient on another part, and under DDP, which the trainer then runs
    with ``find_unused_parameters``, only this part's gradients are all-reduced, inside
    ``manual_backward`` as in the automatic path) -> ``method.part_loss(views, part,
    **fields)`` -> NaN/Inf guard -> backward (AMP loss scaling as Lightning's automatic path)
    -> ``method.before_optimizer_step()`` -> that optimizer's step -> its LR schedule's step;
    then ``on_train_step_end`` once. The next part's loss sees the parameters this step
    moved (alternating updates). ``global_step`` counts batches, as for one optimizer (only
    the last part's step goes through Lightning's step counter), so ``max_steps``, the LR
    cosine and the methods' schedules mean the same for every method. Logged: each part's
    ``train/loss_<part>``, their sum as ``train/loss``, and the parts' logs. Every optimizer's
    and schedule's state is in the checkpoints (Lightning saves all of them).
    """

    def __init__(
        self,
        method: Method,
        *,
        optimizer: str = "sgd",
        lr: float = 0.06,
        weight_decay: float = 5e-4,
        sgd_momentum: float = 0.9,
        adam_betas: tuple[float, float] = ADAM_BETAS,
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
        self.adam_betas = (float(adam_betas[0]), float(adam_betas[1]))
        self.warmup_steps = warmup_steps
        self.total_steps = max(1, total_steps)
        self.channels_last = channels_last
        self.time_budget_s = 60 * time_budget_minutes if time_budget_minutes else None
        self.time_progress = 0.0  # elapsed / budget, the same on every process
        self._train_seconds_before = 0.0  # training time of earlier runs of a resumed fit
        self._clock_start: float | None = None
        # enough to rebuild the method from a checkpoint alone
        self.save_hyperparameters({"build_config": build_config or {}})
        self.part_names = [name for name, _ in checked_parts(method)]
        self.automatic_optimization = len(self.part_names) == 1

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
        seed_rank_views(self.global_rank)  # each process its own random views
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
        fields = self.method.select_fields(fields)
        if not self.automatic_optimization:
            out = self._step_each_part(views, fields)
        else:
            out = self.method.training_loss(views, **fields)
            self._check_finite(out.loss)
        batch_size = images.shape[0]
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=batch_size)
        for key, value in out.logs.items():
            self.log(f"train/{key}", value, batch_size=batch_size)
        optimizer = self.optimizers()
        optimizer = optimizer[0] if isinstance(optimizer, list) else optimizer
        self.log("train/lr", optimizer.param_groups[0]["lr"], batch_size=batch_size)
        return out.loss

    def _check_finite(self, loss: Tensor, part: str = "") -> None:
        if not torch.isfinite(loss.detach()).item():
            raise NonFiniteLossError(
                f"loss{part} is {loss.item()} at step {self.global_step} "
                f"(epoch {self.current_epoch}); stopped. Lower the learning rate or use "
                "precision=32-true; the last good checkpoint is kept"
            )

    def _step_each_part(self, views: list[Tensor], fields: dict[str, Tensor]) -> LossOutput:
        """One optimizer step per part, in the method's update order (see the class doc);
        returns the parts' summed loss (detached) and their logs."""
        optimizers, schedulers = self.optimizers(), self.lr_schedulers()
        last = len(self.part_names) - 1
        total = torch.zeros((), device=views[0].device)
        logs: dict[str, Tensor | float] = {}
        steps = zip(self.part_names, optimizers, schedulers, strict=True)  # type: ignore[arg-type]
        for index, (part, optimizer, scheduler) in enumerate(steps):
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            self.method.zero_grad(set_to_none=True)
            with only_trainable(self.method, parameters):
                out = self.method.part_loss(views, part, **fields)
                self._check_finite(out.loss, f" of part '{part}'")
                self.manual_backward(out.loss)
            if index == last:
                optimizer.step()  # counted: one global step per batch
            else:  # the same precision plugin, hooks and AMP scaler, without the step counter
                self.trainer.strategy.optimizer_step(optimizer.optimizer, do_nothing_closure)
            scheduler.step()
            total += out.loss.detach().float()
            logs.update(out.logs)
            logs[f"loss_{part}"] = out.loss.detach()
        self.method.zero_grad(set_to_none=True)
        return LossOutput(total, logs)

    def on_train_epoch_start(self) -> None:
        self.method.on_train_epoch_start(self.current_epoch)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.method.before_optimizer_step()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.method.on_train_step_end(self.progress())
        if self.time_progress >= 1.0:
            self.trainer.should_stop = True  # the budget is spent and the LR has annealed

    def configure_optimizers(self) -> Any:
        """One optimizer and warm-up + cosine LR schedule per optimizer part of the method
        (one for most methods), in the parts' update order."""
        configs = [self._optimizer_config(params) for _, params in checked_parts(self.method)]
        if self.automatic_optimization:
            return configs[0]
        for config in configs:
            del config["lr_scheduler"]["interval"]  # manual optimization steps them itself
        return configs

    def _optimizer_config(self, parameters: list[nn.Parameter]) -> dict[str, Any]:
        optimizer = build_optimizer(
            self.optimizer_name,
            parameters,
            lr=self.lr,
            weight_decay=self.weight_decay,
            momentum=self.sgd_momentum,
            betas=self.adam_betas,
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
