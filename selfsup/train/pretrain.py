"""``selfsup.pretrain``: build the method and data from a config and train with Lightning."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from selfsup.backbones import BACKBONES
from selfsup.config import PretrainConfig, resolve_config
from selfsup.data.image_dataset import ImageDataset
from selfsup.data.spec import MEMORY_PREFIX, absolute_spec, spec_kind
from selfsup.data.torch_dataset import as_image_dataset
from selfsup.eval.knn import backbone_knn_scores
from selfsup.eval.reconstructions import MAX_EXAMPLES
from selfsup.methods import METHODS, build
from selfsup.runtime.allocator import glibc, heap_allocations
from selfsup.runtime.optim import scaled_lr
from selfsup.runtime.precision import on_gpu, resolve_channels_last, resolve_precision
from selfsup.train.finish import finish_run, metrics_parts, remove_unstarted_run
from selfsup.train.module import PretrainModule, total_training_steps, warmup_steps_for
from selfsup.train.resume import explicit_keys, resumed_config
from selfsup.train.runfolder import new_run_dir, read_summary, write_config
from selfsup.train.trainer import (
    BatchDataModule,
    checkpoint_callbacks,
    expected_world_size,
    fit_default_batch,
    is_main_process,
    make_trainer,
    monitor_callbacks,
    steps_per_epoch,
)

log = logging.getLogger("selfsup.train")

RUN_DIR_ENV = "SELFSUP_RUN_DIR"  # lets DDP worker processes find the folder rank 0 made


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
        if train.labels is not None:
            log.info(
                "kNN monitor off: '%s' is labelled but there is no validation data; "
                "--set val_data=PATH (labelled) monitors kNN every epoch and keeps best.ckpt",
                cfg.data,
            )
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
    return build(cfg.method, **base, **_data_defaults(cfg, len(train)), **cfg.method_kwargs)


def _data_defaults(cfg: PretrainConfig, num_images: int) -> dict[str, Any]:
    """The method's defaults for this data (``Method.data_defaults``) that the user did not
    set, each logged where it departs from the paper's."""
    cls = METHODS.get(cfg.method)
    global_batch = cfg.batch_size * expected_world_size(cfg)
    chosen = cls.data_defaults(num_images, global_batch)
    for name, value in chosen.items():
        paper = cls.paper_default(name)
        if name not in cfg.method_kwargs and value != paper:
            log.info("%s: %s=%s for %d training images at global batch %d (paper: %s; "
                     "--set method_kwargs.%s=N chooses)", cfg.method, name, value, num_images,
                     global_batch, paper, name)  # fmt: skip
    return {k: v for k, v in chosen.items() if k not in cfg.method_kwargs}


def _optimizer_defaults(cfg: PretrainConfig, explicit: set[str]) -> None:
    """The method's paper optimizer (``Method.optimizer_defaults``) for the settings the user
    did not set, logged; the run's config.yaml records the values used."""
    chosen = {
        key: value
        for key, value in METHODS.get(cfg.method).optimizer_defaults.items()
        if key not in explicit
    }
    for key, value in chosen.items():
        setattr(cfg, key, value)
    if chosen:
        settings = ", ".join(f"{k}={v}" for k, v in chosen.items())
        log.info("%s: its paper's optimizer settings %s (--set KEY=VALUE chooses)",
                 cfg.method, settings)  # fmt: skip


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


def pretrain(config: Any = None, *, dataset: Any = None, **kwargs: Any) -> tuple[Any, Path]:
    """Pretrain a method; returns ``(method, run_dir)``.

    ``config`` is a PretrainConfig, a dict, a YAML path or None; keyword arguments override it.
    ``dataset`` trains on data already in memory instead of ``config.data`` (recorded in the
    config as ``memory:<description>``; a resumed run needs it handed over again): an
    ``ImageDataset``, or any torch Dataset or list of samples, which ``as_image_dataset``
    decodes once at the config's ``image_size`` and ``in_channels``.
    ``resume`` (a run folder or .ckpt) continues a killed run with that run's saved config.
    A fresh run whose start fails (bad settings, no GPU, data too small for the batch) or that
    ends before its first checkpoint leaves no run folder behind.
    """
    cfg = _as_config(config, kwargs)
    resume_ckpt: Path | None = None
    run_dir: Path | None = Path(os.environ[RUN_DIR_ENV]) if RUN_DIR_ENV in os.environ else None
    if cfg.resume:
        cfg, run_dir, resume_ckpt = resumed_config(cfg, explicit_keys(config, kwargs))
    if dataset is not None and not isinstance(dataset, ImageDataset):
        dataset = as_image_dataset(
            dataset,
            image_size=cfg.image_size,
            in_channels=cfg.in_channels,
            progress=cfg.progress_bar,
        )
    if resume_ckpt is None and dataset is not None:
        cfg.data = f"{MEMORY_PREFIX}{dataset.source or type(dataset).__name__}"
    elif resume_ckpt is None:
        cfg.data = absolute_spec(cfg.data)  # the saved run finds it from any directory
    cfg.val_data = absolute_spec(cfg.val_data) if cfg.val_data else cfg.val_data

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    all_train = dataset if dataset is not None else _training_data(cfg)
    train = pretraining_subset(all_train, cfg.train_max_images, cfg.seed)
    world = expected_world_size(cfg)
    if resume_ckpt is None:
        explicit = explicit_keys(config, kwargs)
        fit_default_batch(cfg, len(train), world, explicit)
        _optimizer_defaults(cfg, explicit)
    steps_per_epoch(cfg, len(train), world)  # before any folder exists
    method, precision, channels_last = prepared_method(cfg, train)
    bank, queries = _monitor_data(cfg, all_train)
    fresh = run_dir is None
    if run_dir is None:
        run_dir = new_run_dir(cfg.out, cfg.name, f"{cfg.method}-{cfg.backbone}")
    try:
        module = _train(cfg, run_dir, resume_ckpt, train, len(all_train), method, bank,
                        queries, precision, channels_last)  # fmt: skip
    except BaseException:
        if fresh and is_main_process():
            remove_unstarted_run(run_dir)
        raise
    return module.method, run_dir


def _training_data(cfg: PretrainConfig) -> ImageDataset:
    from selfsup.data import load_dataset

    split = cfg.train_split if _has_splits(cfg.data) else None
    return load_dataset(
        cfg.data, image_size=cfg.image_size, in_channels=cfg.in_channels, split=split
    )


def pretraining_subset(train: ImageDataset, max_images: int | None, seed: int) -> ImageDataset:
    """``max_images`` of ``train`` drawn at random with ``seed`` (in dataset order), or all of
    it; a resumed run draws the same subset from its saved config."""
    if max_images is None or max_images >= len(train):
        return train
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(train), generator=generator)[:max_images].sort().values
    log.info("pretraining on a random %d of the %d training images (train_max_images, seed %d)",
             max_images, len(train), seed)  # fmt: skip
    return train.subset(chosen)


def _train(
    cfg: PretrainConfig,
    run_dir: Path,
    resume_ckpt: Path | None,
    train: Any,
    all_train_images: int,
    method: Any,
    bank: Any,
    queries: Any,
    precision: str,
    channels_last: bool,
) -> PretrainModule:
    """Set up the trainer and module in ``run_dir``, fit, and finish the run folder.
    ``train`` is what the method trains on, ``all_train_images`` the size of the training data
    it and the kNN bank were drawn from (more than ``len(train)`` under ``train_max_images``)."""
    knn_precision = "bf16-mixed" if precision == "bf16-mixed" else "32-true"
    callbacks, monitor_key = monitor_callbacks(cfg, bank, queries, knn_precision)
    callbacks += checkpoint_callbacks(run_dir / "checkpoints", monitor_key)
    expected_steps = steps_per_epoch(cfg, len(train), expected_world_size(cfg))
    trainer = make_trainer(cfg, run_dir, callbacks, monitor_key, precision, expected_steps,
                           sync_batchnorm=method.sync_batchnorm,
                           several_optimizers=method.several_optimizers)  # fmt: skip
    world = trainer.world_size
    epoch_steps = steps_per_epoch(cfg, len(train), world)
    total_steps = total_training_steps(epoch_steps, cfg.epochs, cfg.max_steps)
    lr = scaled_lr(cfg.lr, cfg.batch_size * world, cfg.lr_scaling)
    module = PretrainModule(
        method,
        optimizer=cfg.optimizer,
        lr=lr,
        weight_decay=cfg.weight_decay,
        sgd_momentum=cfg.sgd_momentum,
        adam_betas=(cfg.adam_betas[0], cfg.adam_betas[1]),
        warmup_steps=warmup_steps_for(cfg.warmup_epochs, epoch_steps, total_steps),
        total_steps=total_steps,
        channels_last=channels_last,
        time_budget_minutes=cfg.max_minutes,
        build_config={"method": cfg.method, **method.hyperparameters()},
    )
    heap = cfg.cpu_heap_allocations and not on_gpu(cfg.accelerator) and glibc() is not None
    if trainer.is_global_zero and not resume_ckpt:
        write_config(run_dir, cfg.to_dict(), {
            "seed": cfg.seed, "precision": precision, "channels_last": channels_last,
            "cpu_heap_allocations": heap, "world_size": world, "lr_scaled": lr,
            "steps_per_epoch": epoch_steps, "total_steps": total_steps, "train_images": len(train),
            "train_images_of": all_train_images,
            "method_hyperparameters": method.hyperparameters(),
        })  # fmt: skip
    summary = _starting_summary(cfg, run_dir, resume_ckpt, method, all_train_images, bank,
                                queries, knn_precision)  # fmt: skip
    if "labels" in method.batch_fields and getattr(train, "labels", None) is None:
        log.warning("%s learns from labels, but '%s' has none: each sample is its own class",
                    cfg.method, cfg.data)  # fmt: skip
    datamodule = BatchDataModule(
        train, cfg.batch_size, cfg.seed, cfg.num_workers, fields=method.batch_fields
    )
    with metrics_parts(run_dir, resumed=resume_ckpt is not None):
        _fit(trainer, module, datamodule, run_dir, resume_ckpt, heap)
    if trainer.is_global_zero:
        shown = queries if queries is not None else train  # reconstructions of unseen maps
        examples = shown.images[:MAX_EXAMPLES]
        finish_run(run_dir, trainer, module, cfg, summary, callbacks, examples)
    return module


def _starting_summary(
    cfg: PretrainConfig,
    run_dir: Path,
    resume_ckpt: Path | None,
    method: Any,
    all_train_images: int,
    bank: Any,
    queries: Any,
    knn_precision: str,
) -> dict[str, Any]:
    """The summary a run starts from: a resumed run's own, plus the random-init kNN scores (once)
    and the kNN monitor's bank (``eval knn --max-bank SIZE --seed SEED`` draws the same)."""
    summary = read_summary(run_dir) if resume_ckpt else {}
    if bank is None:
        return summary
    if "random_init" not in summary:
        summary["random_init"] = backbone_knn_scores(
            method.backbone, method.views.preprocess, bank, queries,
            k=cfg.knn_k, temperature=cfg.knn_temperature, precision=knn_precision,
        )  # fmt: skip
    summary["knn_bank"] = {
        "size": len(bank), "of": all_train_images, "cap": cfg.knn_max_train, "seed": cfg.seed,
    }  # fmt: skip
    return summary


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
