"""Lightning's side of a run: the data module, the callbacks, the Trainer, and how many
processes it will have. Errors about the user's setup become one-line ValueErrors."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from selfsup.config import PretrainConfig
from selfsup.eval.metric_keys import knn_monitor_key
from selfsup.runtime.precision import on_gpu
from selfsup.train.callbacks import (
    CollapseMonitor,
    KNNMonitor,
    LastCheckpoint,
    StepProgress,
    ThroughputMonitor,
    pretrain_progress,
)
from selfsup.train.checkpoint import AtomicCheckpointIO

log = logging.getLogger("selfsup.train")


class BatchDataModule(L.LightningDataModule):
    """Hands Lightning a loader of whole uint8 batches, sharded by the trainer's rank."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        seed: int,
        num_workers: int,
        fields: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.seed, self.num_workers = (
            dataset,
            batch_size,
            seed,
            num_workers,
        )
        self.fields = fields  # the method's batch_fields: (images, {name: [b]}) batches

    def train_dataloader(self) -> Any:
        from selfsup.data import make_dataloader
        from selfsup.data.loader import pin_memory_for

        # the loader shards by rank itself; Lightning reshuffles it through sampler.set_epoch
        return make_dataloader(
            self.dataset,
            self.batch_size,
            shuffle=True,
            drop_last=True,
            seed=self.seed,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
            num_workers=self.num_workers,
            fields=self.fields,
            pin_memory=pin_memory_for(self.trainer.strategy.root_device),
        )


def monitor_callbacks(
    cfg: PretrainConfig, bank: Any, queries: Any, precision: str
) -> tuple[list[L.Callback], str | None]:
    """(callbacks, the metric best.ckpt follows): throughput, collapse, progress lines without
    a progress bar (``StepProgress``), and with labelled
    validation data the kNN monitor (and early stopping on it when asked)."""
    callbacks: list[L.Callback] = [
        ThroughputMonitor(),
        CollapseMonitor(cfg.collapse_threshold, cfg.collapse_stop),
    ]
    if not cfg.progress_bar:  # logs and batch jobs still see how far the run is
        budget_s = None if cfg.max_minutes is None else 60 * cfg.max_minutes
        callbacks.append(StepProgress(pretrain_progress(), budget_s))
    if bank is None:
        return callbacks, None
    callbacks.append(
        KNNMonitor(
            bank,
            queries,
            k=cfg.knn_k,
            temperature=cfg.knn_temperature,
            every_n_epochs=cfg.knn_every_n_epochs,
            precision=precision,
        )
    )
    monitor_key = knn_monitor_key(cfg.knn_k[0])
    if cfg.early_stopping_patience:
        callbacks.append(
            EarlyStopping(monitor_key, mode="max", patience=cfg.early_stopping_patience)
        )
    return callbacks, monitor_key


def checkpoint_callbacks(ckpt_dir: Path, monitor_key: str | None) -> list[L.Callback]:
    """last.ckpt every epoch; best.ckpt on the kNN monitor when there is one."""
    callbacks: list[L.Callback] = [LastCheckpoint(ckpt_dir / "last.ckpt")]
    if monitor_key:
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor=monitor_key,
                mode="max",
                save_top_k=1,
                enable_version_counter=False,
                auto_insert_metric_name=False,
            )
        )
    return callbacks


def make_trainer(
    cfg: PretrainConfig,
    run_dir: Path,
    callbacks: list[L.Callback],
    monitor_key: str | None,
    precision: str,
    log_every_at_most: int,
    sync_batchnorm: bool = True,
    several_optimizers: bool = False,
) -> L.Trainer:
    """Lightning's Trainer for this run; its complaints about the user's setup (no GPU, bad
    devices) become one-line ValueErrors. Metrics are logged at least once an epoch
    (``log_every_at_most``: the steps of one epoch). ``sync_batchnorm``: the method's wish
    (``Method.sync_batchnorm``; False for MoCo's shuffled BN), applied on multi-GPU runs.
    ``several_optimizers``: the method trains several optimizer parts (``Method.
    optimizer_parts``), each backward reaching one part only, so DDP must not wait for the
    other parts' gradients (``find_unused_parameters``)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    world = expected_world_size(cfg)
    try:
        trainer = L.Trainer(
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy=(
                ("ddp_find_unused_parameters_true" if several_optimizers else "ddp")
                if world > 1
                else "auto"
            ),
            # torch's SyncBatchNorm runs on GPUs only; CPU processes keep per-process statistics
            sync_batchnorm=sync_batchnorm and world > 1 and on_gpu(cfg.accelerator),
            precision=precision,
            max_epochs=cfg.epochs,
            max_steps=cfg.max_steps or -1,
            callbacks=callbacks,
            logger=[
                CSVLogger(run_dir, name="", version=""),
                TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False),
            ],
            plugins=[AtomicCheckpointIO(trust=cfg.trust_checkpoint)],
            # last.ckpt is ours (LastCheckpoint); without a best.ckpt monitor Lightning would add
            # its own default checkpoint (epoch=N-step=M.ckpt) beside it
            enable_checkpointing=monitor_key is not None,
            log_every_n_steps=min(cfg.log_every_n_steps, log_every_at_most),
            enable_progress_bar=cfg.progress_bar,
            enable_model_summary=False,
            use_distributed_sampler=False,
            num_sanity_val_steps=0,
            default_root_dir=run_dir,
        )
    except (MisconfigurationException, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot set up training with accelerator={cfg.accelerator!r}, "
            f"devices={cfg.devices!r}: {first}"
        ) from err
    warn_if_oversubscribed(trainer)
    return trainer


def warn_if_oversubscribed(trainer: L.Trainer) -> None:
    """More CPU training processes than cores: each one waits for the others."""
    from lightning.pytorch.accelerators import CPUAccelerator

    cores = os.cpu_count() or 1
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > cores:
        if trainer.is_global_zero:
            log.warning(
                "--devices %d starts %d CPU training processes on %d core(s): they compete for "
                "the cores, so each step is slower than with --devices 1",
                trainer.num_devices,
                trainer.num_devices,
                cores,
            )


def steps_per_epoch(cfg: PretrainConfig, images: int, world: int) -> int:
    steps = images // (cfg.batch_size * world)
    if steps == 0:
        raise ValueError(
            f"batch_size={cfg.batch_size} x {world} device(s) is larger than the "
            f"{images} images of '{cfg.data}'; the largest batch that fits is "
            f"{max(1, images // world)} (--batch-size {max(1, images // world)})"
        )
    return steps


def fit_default_batch(cfg: PretrainConfig, images: int, world: int, explicit: set[str]) -> None:
    """A default batch larger than the data shrinks to the data (with a warning); a batch the
    user chose is kept, and ``steps_per_epoch`` names the largest that fits."""
    fits = images // world
    if "batch_size" in explicit or cfg.batch_size <= fits or fits < 1:
        return
    log.warning(
        "the default batch_size %d x %d device(s) is larger than the %d images of '%s': "
        "using batch_size=%d (--batch-size chooses another)",
        cfg.batch_size, world, images, cfg.data, fits,
    )  # fmt: skip
    cfg.batch_size = fits


def is_main_process() -> bool:
    """True in process 0 of a (possibly distributed) run, and in a plain single process."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def expected_world_size(cfg: PretrainConfig) -> int:
    devices = cfg.devices
    if isinstance(devices, str):
        if devices == "auto":
            count = torch.cuda.device_count() if cfg.accelerator in ("auto", "gpu", "cuda") else 1
            return max(1, count) * cfg.num_nodes
        devices = len(devices.split(",")) if "," in devices else int(devices)
    return max(1, int(devices)) * cfg.num_nodes
