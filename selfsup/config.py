"""The resolved configuration of a pretraining run: defaults < YAML file < ``--set key=value``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class PretrainConfig:
    """Everything a pretraining run depends on. Saved as ``config.yaml`` in the run folder.

    The defaults are the README's main job: SimCLR on the built-in WM-811K wafer maps at 32 px
    with a small conv net, sized to finish in about 20 minutes on a 2-core fp32 CPU (6 minutes
    measured with native bf16; less on a GPU). (SimCLR, not
    FastSiam, since 2026-12-02: on these maps two SimCLR runs reached val kNN k=5 0.78 where
    FastSiam runs reached 0.66-0.71, with half the views per step; docs/benchmarks.md.)
    """

    method: str = "simclr"
    backbone: str = "convnet_small"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    method_kwargs: dict[str, Any] = field(default_factory=dict)  # the method's hyper-parameters
    data: str = "wafers"  # "wafers" (built-in), an image folder, or a .npy/.npz file
    train_split: str = "train"  # for built-in wafers: train, or one of train_1/10/20/29
    val_split: str | None = "val"  # labelled split for the kNN monitor; None disables it
    val_data: str | None = None  # other data: a labelled folder/array file for the kNN monitor
    image_size: int = 32
    in_channels: int | None = None  # None: what the data has
    view_style: str | None = None  # natural | wafer; None: what the data is
    epochs: int = 3
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    # wall-clock budget: the LR cosine and the methods' schedules run on
    # max(steps / total steps, minutes / max_minutes) and training stops when either ends
    max_minutes: float | None = None
    batch_size: int = 256
    optimizer: str = "sgd"  # sgd | lars | adamw
    lr: float = 0.06  # base learning rate for batch size 256 (see lr_scaling)
    lr_scaling: str = "linear"  # linear (lr * B/256) | sqrt (lr * sqrt(B/256)) | none
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 0.5
    precision: str = "auto"  # auto | bf16-mixed | 16-mixed | 32-true
    channels_last: bool | None = None  # None: on when it helps (conv backbone, mixed precision)
    # CPU training with glibc: keep freed tensor memory for the next step instead of page-faulting
    # it in again (selfsup/train/allocator.py); ignored on GPUs
    cpu_heap_allocations: bool = True
    devices: str | int = "auto"
    num_nodes: int = 1
    accelerator: str = "auto"
    seed: int = 0
    out: str = "runs"
    name: str | None = None  # run folder name; default <method>-<backbone>-<timestamp>
    resume: str | None = (
        None  # a run folder or checkpoint; "auto" resumes the run folder's last.ckpt
    )
    knn_k: list[int] = field(default_factory=lambda: [5, 200])
    knn_temperature: float = 0.1
    knn_every_n_epochs: int = 1
    knn_max_train: int | None = 20000  # cap on the labelled kNN bank (random, seeded) for speed
    knn_max_val: int | None = None
    early_stopping_patience: int | None = None  # epochs without kNN improvement before stopping
    collapse_threshold: float = 0.02  # std of normalised embeddings below this x sqrt(D) warns
    collapse_stop: bool = True  # end training at the first collapsed epoch
    log_every_n_steps: int = 10
    num_workers: int = 0
    progress_bar: bool = True

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> PretrainConfig:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"{source}: unknown key(s) {', '.join(unknown)} "
                f"(known: {', '.join(cls.field_names())})"
            )
        return cls(**values)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file '{path}' does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config file '{path}' is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"config file '{path}' must hold a mapping of keys to values")
    return values


def apply_overrides(
    values: dict[str, Any], overrides: list[str], option: str = "--set"
) -> dict[str, Any]:
    """Apply ``key=value`` strings (values parsed as YAML; dotted keys go into nested dicts).
    ``option`` names the command-line option in the error for a string without ``=``."""
    values = dict(values)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"{option} expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        parts = key.strip().split(".")
        target = values
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {key}: '{part}' is not a mapping")
        target[parts[-1]] = value
    return values


def resolve_config(
    file: str | Path | None = None, overrides: list[str] | None = None, **explicit: Any
) -> PretrainConfig:
    """Defaults, then the YAML ``file``, then ``explicit`` keyword values, then ``overrides``."""
    values: dict[str, Any] = load_yaml(file) if file else {}
    values.update({k: v for k, v in explicit.items() if v is not None})
    values = apply_overrides(values, overrides or [])
    return PretrainConfig.from_dict(values, source=str(file) if file else "config")
