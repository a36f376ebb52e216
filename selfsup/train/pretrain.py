"""``selfsup.pretrain``: build the method and data from a config and train with Lightning."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from selfsup.backbones import BACKBONES
from selfsup.config import PretrainConfig, load_yaml, resolve_config
from selfsup.data.dataset import MEMORY_PREFIX, ImageDataset, absolute_spec, spec_kind
from selfsup.methods import METHODS, build
from selfsup.runtime.allocator import glibc, heap_allocations
from selfsup.runtime.files import load_checkpoint_file
from selfsup.runtime.precision import on_gpu, resolve_channels_last, resolve_precision
from selfsup.train.callbacks import (
    CollapseMonitor,
    KNNMonitor,
    LastCheckpoint,
    ThroughputMonitor,
    backbone_knn_scores,
)
from selfsup.train.checkpoint import AtomicCheckpointIO
from selfsup.train.module import PretrainModule, total_training_steps, warmup_steps_for
from selfsup.train.optim import scaled_lr
from selfsup.train.runfolder import new_run_dir, read_summary, write_config, write_summary

log = logging.getLogger("selfsup.train")

RUN_DIR_ENV = "SELFSUP_RUN_DIR"  # lets DDP worker processes find the folder rank 0 made


class _BatchDataModule(L.LightningDataModule):
    """Hands Lightning a loader of whole uint8 batches, sharded by the trainer's rank."""

    def __init__(self, dataset: Any, batch_size: int, seed: int, num_workers: int) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.seed, self.num_workers = (
            dataset,
            batch_size,
            seed,
            num_workers,
        )

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
            pin_memory=pin_memory_for(self.trainer.strategy.root_device),
        )


def _as_config(config: Any, kwargs: dict[str, Any]) -> PretrainConfig:
    """The config, then keyword values on top; an explicit None (``val_split=None``) counts."""
    if isinstance(config, PretrainConfig):
        base = config.to_dict()
    elif isinstance(config, dict):
        base = dict(config)
    elif isinstance(config, (str, Path)):
        base = resolve_config(config).to_dict()
    else:
        base = {}
    return PretrainConfig.from_dict({**base, **kwargs})


def _explicit_keys(config: Any, kwargs: dict[str, Any]) -> set[str]:
    """Keys the caller set (not defaults): these may override a resumed run's saved config."""
    keys = set(kwargs)
    if isinstance(config, dict):
        keys |= set(config)
    elif isinstance(config, PretrainConfig):
        default = PretrainConfig().to_dict()
        keys |= {k for k, v in config.to_dict().items() if v != default[k]}
    elif isinstance(config, (str, Path)):
        keys |= set(load_yaml(config))
    return keys


def _resume_target(resume: str, out: str) -> tuple[Path, Path]:
    """(run folder, checkpoint) for ``resume`` = a run folder or a .ckpt file."""
    path = Path(resume)
    if path.is_file() and path.suffix == ".ckpt":
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run_dir, path
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"resume: run folder '{path}' has no checkpoints/last.ckpt")
        return path, ckpt
    raise FileNotFoundError(f"resume: '{resume}' is neither a run folder nor a .ckpt file")


def _has_splits(spec: str) -> bool:
    """Wafer data (built-in or a converted file): train_split / val_split select from it."""
    return spec_kind(spec) in ("wafers", "wafer_file")


def _monitor_data(cfg: PretrainConfig, train: Any) -> tuple[Any, Any] | tuple[None, None]:
    """(labelled bank, labelled queries) for the kNN monitor, or (None, None) when unlabelled."""
    from selfsup.data import load_dataset

    if _has_splits(cfg.data) and not cfg.val_data:
        if cfg.val_split is None:
            return None, None
        try:
            queries = load_dataset(cfg.data, image_size=cfg.image_size, split=cfg.val_split)
        except ValueError as err:
            if spec_kind(cfg.data) != "wafer_file":
                raise
            log.info("kNN monitor off: %s (set val_data or val_split)", err)
            return None, None
        bank = train
    elif cfg.val_data:
        queries = load_dataset(cfg.val_data, image_size=cfg.image_size, in_channels=cfg.in_channels)
        bank = train
    else:
        return None, None
    if bank.labels is None or queries.labels is None:
        return None, None
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.knn_max_train and len(bank) > cfg.knn_max_train:
        bank = bank.subset(torch.randperm(len(bank), generator=generator)[: cfg.knn_max_train])
    if cfg.knn_max_val and len(queries) > cfg.knn_max_val:
        queries = queries.subset(
            torch.randperm(len(queries), generator=generator)[: cfg.knn_max_val]
        )
    return bank, queries


def build_method(cfg: PretrainConfig, train: Any) -> Any:
    in_channels = cfg.in_channels or train.in_channels
    if in_channels != train.in_channels:
        raise ValueError(
            f"in_channels={cfg.in_channels} but the data '{cfg.data}' has "
            f"{train.in_channels} channel(s)"
        )
    base = {
        "backbone": cfg.backbone,
        "in_channels": in_channels,
        "image_size": cfg.image_size,
        "view_style": cfg.view_style or train.style,
        "backbone_kwargs": dict(cfg.backbone_kwargs),
    }
    METHODS.check_kwargs(cfg.method, cfg.method_kwargs, "method_kwargs", reserved=base)
    if cfg.backbone in BACKBONES:  # timm/<model> keywords are timm's to check
        BACKBONES.check_kwargs(
            cfg.backbone, cfg.backbone_kwargs, "backbone_kwargs", reserved=["in_channels"]
        )
    return build(cfg.method, **base, **cfg.method_kwargs)


def prepared_method(cfg: PretrainConfig, train: Any) -> tuple[Any, str, bool]:
    """(method, precision, channels_last): the method built for ``train`` in the memory
    format the trainer uses, with the precision chosen for the hardware."""
    method = build_method(cfg, train)
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    channels_last = resolve_channels_last(
        cfg.channels_last, cfg.backbone, precision, cfg.accelerator
    )
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method, precision, channels_last


# settings a resumed run takes from the command rather than from its saved config.yaml: how
# long to train, where the devices are, and where the data is now (if it moved)
RESUME_OVERRIDES = frozenset(
    {"epochs", "max_steps", "devices", "num_nodes", "accelerator", "progress_bar", "data",
     "val_data"}
)  # fmt: skip


def _resumed_config(cfg: PretrainConfig, explicit: set[str]) -> tuple[PretrainConfig, Path, Path]:
    """(the run's saved config with the caller's overrides, run folder, checkpoint)."""
    run_dir, ckpt = _resume_target(cfg.resume, cfg.out)
    saved = load_yaml(run_dir / "config.yaml")
    given = {k: v for k, v in cfg.to_dict().items() if k in RESUME_OVERRIDES & explicit}
    # trust is the caller's decision now, never a saved value
    trust = {"trust_checkpoint": cfg.trust_checkpoint}
    resumed = PretrainConfig.from_dict(
        {**saved, **given, "resume": None, **trust}, source=str(run_dir / "config.yaml")
    )
    for key, option in (("data", "--data NEW_PATH"), ("val_data", "--set val_data=NEW_PATH")):
        spec = getattr(resumed, key)
        if spec and _is_missing(spec):
            raise FileNotFoundError(
                f"resume: the run's {key} '{spec}' (from {run_dir / 'config.yaml'}) no longer "
                f"exists; if it moved, give its new place with {option}"
            )
    best = run_dir / "checkpoints" / "best.ckpt"
    if best.is_file():  # read at the end to export the best epoch: refuse it before training
        load_checkpoint_file(best, trust=resumed.trust_checkpoint)
    return resumed, run_dir, ckpt


def _is_missing(spec: str) -> bool:
    """True when the spec names a file or folder that does not exist."""
    try:
        spec_kind(spec)
    except FileNotFoundError:
        return True
    return False


def _monitor_callbacks(
    cfg: PretrainConfig, bank: Any, queries: Any, precision: str
) -> tuple[list[L.Callback], str | None]:
    """(callbacks, the metric best.ckpt follows): throughput, collapse, and with labelled
    validation data the kNN monitor (and early stopping on it when asked)."""
    callbacks: list[L.Callback] = [
        ThroughputMonitor(),
        CollapseMonitor(cfg.collapse_threshold, cfg.collapse_stop),
    ]
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
    monitor_key = f"val/knn{cfg.knn_k[0]}_macro_f1"
    if cfg.early_stopping_patience:
        callbacks.append(
            EarlyStopping(monitor_key, mode="max", patience=cfg.early_stopping_patience)
        )
    return callbacks, monitor_key


def _checkpoint_callbacks(ckpt_dir: Path, monitor_key: str | None) -> list[L.Callback]:
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


def _make_trainer(
    cfg: PretrainConfig,
    run_dir: Path,
    callbacks: list[L.Callback],
    monitor_key: str | None,
    precision: str,
) -> L.Trainer:
    """Lightning's Trainer for this run; its complaints about the user's setup (no GPU, bad
    devices) become one-line ValueErrors."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    world = _expected_world_size(cfg)
    try:
        trainer = L.Trainer(
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy="ddp" if world > 1 else "auto",
            # torch's SyncBatchNorm runs on GPUs only; CPU processes keep per-process statistics
            sync_batchnorm=world > 1 and on_gpu(cfg.accelerator),
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
            log_every_n_steps=cfg.log_every_n_steps,
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
    _warn_if_oversubscribed(trainer)
    return trainer


def _warn_if_oversubscribed(trainer: L.Trainer) -> None:
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


def _steps_per_epoch(cfg: PretrainConfig, images: int, world: int) -> int:
    steps = images // (cfg.batch_size * world)
    if steps == 0:
        raise ValueError(
            f"batch_size={cfg.batch_size} x {world} device(s) is larger than the "
            f"{images} images of '{cfg.data}'; lower --batch-size"
        )
    return steps


def pretrain(
    config: Any = None, *, dataset: ImageDataset | None = None, **kwargs: Any
) -> tuple[Any, Path]:
    """Pretrain a method; returns ``(method, run_dir)``.

    ``config`` is a PretrainConfig, a dict, a YAML path or None; keyword arguments override it.
    ``dataset`` trains on data already in memory instead of ``config.data`` (recorded in the
    config as ``memory:<description>``; a resumed run needs it handed over again).
    ``resume`` (a run folder or .ckpt) continues a killed run with that run's saved config.
    A fresh run whose start fails (bad settings, no GPU, data too small for the batch) or that
    ends before its first checkpoint leaves no run folder behind.
    """
    cfg = _as_config(config, kwargs)
    resume_ckpt: Path | None = None
    run_dir: Path | None = Path(os.environ[RUN_DIR_ENV]) if RUN_DIR_ENV in os.environ else None
    if cfg.resume:
        cfg, run_dir, resume_ckpt = _resumed_config(cfg, _explicit_keys(config, kwargs))
    elif dataset is not None:
        cfg.data = f"{MEMORY_PREFIX}{dataset.source or type(dataset).__name__}"
    else:
        cfg.data = absolute_spec(cfg.data)  # the saved run finds it from any directory
    cfg.val_data = absolute_spec(cfg.val_data) if cfg.val_data else cfg.val_data

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train = dataset if dataset is not None else _training_data(cfg)
    _steps_per_epoch(cfg, len(train), _expected_world_size(cfg))  # before any folder exists
    method, precision, channels_last = prepared_method(cfg, train)
    bank, queries = _monitor_data(cfg, train)
    fresh = run_dir is None
    if run_dir is None:
        run_dir = new_run_dir(cfg.out, cfg.name, f"{cfg.method}-{cfg.backbone}")
    try:
        module = _train(cfg, run_dir, resume_ckpt, train, method, bank, queries,
                        precision, channels_last)  # fmt: skip
    except BaseException:
        if fresh and is_main_process():
            _remove_unstarted_run(run_dir)
        raise
    return module.method, run_dir


def _training_data(cfg: PretrainConfig) -> ImageDataset:
    from selfsup.data import load_dataset

    split = cfg.train_split if _has_splits(cfg.data) else None
    return load_dataset(
        cfg.data, image_size=cfg.image_size, in_channels=cfg.in_channels, split=split
    )


def _remove_unstarted_run(run_dir: Path) -> None:
    """Delete a run folder this call made when the run failed before its first checkpoint:
    nothing in it can be resumed, and a corrected rerun should get the same name."""
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        log.info("the run stopped; '%s' keeps its last checkpoint (--resume %s)", run_dir, run_dir)
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("removed '%s': the run stopped before its first checkpoint", run_dir)


def _train(
    cfg: PretrainConfig,
    run_dir: Path,
    resume_ckpt: Path | None,
    train: Any,
    method: Any,
    bank: Any,
    queries: Any,
    precision: str,
    channels_last: bool,
) -> PretrainModule:
    """Set up the trainer and module in ``run_dir``, fit, and finish the run folder."""
    knn_precision = "bf16-mixed" if precision == "bf16-mixed" else "32-true"
    callbacks, monitor_key = _monitor_callbacks(cfg, bank, queries, knn_precision)
    callbacks += _checkpoint_callbacks(run_dir / "checkpoints", monitor_key)
    trainer = _make_trainer(cfg, run_dir, callbacks, monitor_key, precision)
    world = trainer.world_size
    steps_per_epoch = _steps_per_epoch(cfg, len(train), world)
    total_steps = total_training_steps(steps_per_epoch, cfg.epochs, cfg.max_steps)
    lr = scaled_lr(cfg.lr, cfg.batch_size * world, cfg.lr_scaling)
    module = PretrainModule(
        method,
        optimizer=cfg.optimizer,
        lr=lr,
        weight_decay=cfg.weight_decay,
        sgd_momentum=cfg.sgd_momentum,
        warmup_steps=warmup_steps_for(cfg.warmup_epochs, steps_per_epoch, total_steps),
        total_steps=total_steps,
        channels_last=channels_last,
        time_budget_minutes=cfg.max_minutes,
        build_config={"method": cfg.method, **method.hyperparameters()},
    )
    heap = cfg.cpu_heap_allocations and not on_gpu(cfg.accelerator) and glibc() is not None
    summary = read_summary(run_dir) if resume_ckpt else {}
    if trainer.is_global_zero and not resume_ckpt:
        write_config(
            run_dir,
            cfg.to_dict(),
            {
                "seed": cfg.seed,
                "precision": precision,
                "channels_last": channels_last,
                "cpu_heap_allocations": heap,
                "world_size": world,
                "lr_scaled": lr,
                "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps,
                "train_images": len(train),
                "method_hyperparameters": method.hyperparameters(),
            },
        )
    if bank is not None and "random_init" not in summary:
        summary["random_init"] = backbone_knn_scores(
            method.backbone, method.views.preprocess, bank, queries,
            k=cfg.knn_k, temperature=cfg.knn_temperature, precision=knn_precision,
        )  # fmt: skip
    datamodule = _BatchDataModule(train, cfg.batch_size, cfg.seed, cfg.num_workers)
    with _metrics_parts(run_dir, resumed=resume_ckpt is not None):
        _fit(trainer, module, datamodule, run_dir, resume_ckpt, heap)
    if trainer.is_global_zero:
        _finish_run(run_dir, trainer, module, cfg, summary, callbacks)
    return module


def _fit(
    trainer: L.Trainer,
    module: PretrainModule,
    datamodule: Any,
    run_dir: Path,
    resume_ckpt: Path | None,
    heap: bool,
) -> None:
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        with heap_allocations(heap):
            trainer.fit(
                module, datamodule=datamodule, ckpt_path=str(resume_ckpt) if resume_ckpt else None
            )
    finally:
        os.environ.pop(RUN_DIR_ENV, None)  # only DDP workers started by this fit may read it


@contextlib.contextmanager
def _metrics_parts(run_dir: Path, resumed: bool) -> Iterator[None]:
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


def is_main_process() -> bool:
    """True in process 0 of a (possibly distributed) run, and in a plain single process."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _expected_world_size(cfg: PretrainConfig) -> int:
    devices = cfg.devices
    if isinstance(devices, str):
        if devices == "auto":
            count = torch.cuda.device_count() if cfg.accelerator in ("auto", "gpu", "cuda") else 1
            return max(1, count) * cfg.num_nodes
        devices = len(devices.split(",")) if "," in devices else int(devices)
    return max(1, int(devices)) * cfg.num_nodes


def _finish_run(
    run_dir: Path,
    trainer: L.Trainer,
    module: PretrainModule,
    cfg: PretrainConfig,
    summary: dict[str, Any],
    callbacks: list[L.Callback],
) -> None:
    from selfsup.artifacts import export_backbone

    best = run_dir / "checkpoints" / "best.ckpt"
    if best.is_file():  # the epoch chosen on the val kNN, never a later collapsed one
        state = load_checkpoint_file(best, trust=cfg.trust_checkpoint)["state_dict"]
        module.load_state_dict(state)
    method = module.method
    export_backbone(method, run_dir)
    summary["exported_checkpoint"] = "best" if best.is_file() else "last"
    for cb in callbacks:
        if isinstance(cb, KNNMonitor) and cb.history:
            history = summary.get("knn_history", []) + cb.history
            key = f"knn{cfg.knn_k[0]}_macro_f1"
            chosen = max(history, key=lambda h: h[key]) if best.is_file() else history[-1]
            summary["pretrained"] = {k: v for k, v in chosen.items() if k != "epoch"}
            summary["pretrained_epoch"] = chosen["epoch"]
            summary["knn_history"] = history
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
            "steps": trainer.global_step,
            # every segment of a resumed run, kept in the checkpoints
            "train_seconds": module.train_seconds(),
        }
    )
    write_summary(run_dir, summary)
    from selfsup.train.report import write_run_report

    write_run_report(run_dir, summary)
