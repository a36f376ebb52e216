"""The resolved configuration of a pretraining run: defaults < YAML file < ``--set key=value``.

Every value is checked when a PretrainConfig is made, directly or from a dict: its type against
the field's annotation, then its range. Errors name the key, its command-line option, the value
as given and, from ``from_dict``/``resolve_config``, where it came from.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from selfsup.registry import did_you_mean

# `selfsup pretrain` options that set a key directly; every other key is `--set key=value`
CLI_OPTIONS = {
    "method": "--method",
    "backbone": "--backbone",
    "data": "--data",
    "epochs": "--epochs",
    "max_steps": "--max-steps",
    "max_minutes": "--minutes",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "optimizer": "--optimizer",
    "image_size": "--image-size",
    "devices": "--devices",
    "num_nodes": "--num-nodes",
    "accelerator": "--accelerator",
    "precision": "--precision",
    "out": "--out",
    "name": "--name",
    "resume": "--resume",
    "seed": "--seed",
    "trust_checkpoint": "--trust-checkpoint",
}
# keys of earlier versions -> what they are called now (refused with this message)
RENAMED_KEYS = {
    "momentum": "'sgd_momentum' (the optimizer's momentum; EMA rates of momentum encoders are "
    "the methods' base_momentum)",
}
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")  # Lightning's names
# convnet_tiny, convnet_small and the cifar_resnets downsample 8x (three stride-2 stages), so at
# 8 px their last stage works on a 1x1 map; below 8 px that stage has no spatial extent left to
# downsample and its 3x3 kernels read one pixel and eight zeros of padding. (The ImageNet-stem
# resnets downsample 32x and want >= 32 px; they run on less, so that is not enforced.)
MIN_IMAGE_SIZE = 8
SEED_LIMIT = 2**32  # numpy's seeds are uint32; Lightning's seed_everything refuses others

# A rule says what is wrong with a value of the right type ("must be >= 1"), or None when it is
# fine. A rule that defers to the code using the value may raise ValueError with a full message.
Rule = Callable[[Any], "str | None"]


def at_least(low: float) -> Rule:
    return lambda value: None if value >= low else f"must be >= {low}"


def above(low: float) -> Rule:
    return lambda value: None if value > low else f"must be > {low}"


def within(low: float, high: float) -> Rule:
    return lambda value: None if low <= value < high else f"must be in [{low}, {high})"


def one_of(choices: Callable[[], Iterable[str]]) -> Rule:
    """``choices`` is called when a value is checked, so its module is imported only then."""

    def rule(value: str) -> str | None:
        allowed = tuple(choices())
        return None if value in allowed else f"must be one of {', '.join(allowed)}"

    return rule


def _optimizers() -> tuple[str, ...]:
    from selfsup.runtime.optim import OPTIMIZERS  # imports torch: only when a config is checked

    return OPTIMIZERS


def _precisions() -> tuple[str, ...]:
    from selfsup.runtime.precision import PRECISIONS

    return PRECISIONS


def _known_lr_scaling(value: str) -> None:
    """scaled_lr is the one place that knows the scaling rules; its error lists them."""
    from selfsup.runtime.optim import scaled_lr

    scaled_lr(1.0, 256, value)


def _device_count_or_ids(value: str | int) -> str | None:
    """The forms Lightning takes that pretrain's world-size count understands too."""
    if isinstance(value, int):
        fits = value >= 1
    elif value == "auto" or re.fullmatch(r"[1-9][0-9]*", value):
        fits = True
    else:
        ids = value.split(",")
        fits = bool(re.fullmatch(r"[0-9]+(,[0-9]+)+", value)) and len(set(ids)) == len(ids)
    return None if fits else 'must be "auto", a number of devices >= 1, or GPU ids like "0,1"'


def _available_accelerator(value: str) -> str | None:
    if value not in ACCELERATORS:
        return f"must be one of {', '.join(ACCELERATORS)}"
    import torch

    from selfsup.runtime.precision import on_gpu

    if value != "auto" and on_gpu(value) and not torch.cuda.is_available():
        raise ValueError(
            f"{option_label('accelerator')} is '{value}' but no GPU was found "
            "(torch.cuda.is_available() is False); use cpu or auto"
        )
    return None


def _positive_ks(ks: list[int]) -> str | None:
    return None if ks and min(ks) >= 1 else "must be a non-empty list of integers >= 1"


def _betas(betas: list[float]) -> str | None:
    fits = len(betas) == 2 and all(0 <= b < 1 for b in betas)
    return None if fits else "must be 2 values in [0, 1)"


def checked(default: Any = dataclasses.MISSING, rule: Rule | None = None, **kw: Any) -> Any:
    """A dataclass field whose values must also pass ``rule`` once their type is right
    (``None`` skips the rule where the type allows it)."""
    return field(default=default, metadata={"rule": rule}, **kw)


@dataclass
class PretrainConfig:
    """Everything a pretraining run depends on. Saved as ``config.yaml`` in the run folder.

    The defaults are the README's main job: SimCLR on the built-in WM-811K wafer maps at 32 px
    with a small conv net, sized for a few minutes to tens of minutes on a 2-core CPU (the
    measured times and why SimCLR is the default are in docs/benchmarks.md).

    Each field's comment gives its allowed range; constructing a config checks them.
    """

    method: str = "simclr"
    backbone: str = "convnet_small"
    # the keys are checked against the constructors when the method is built
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    method_kwargs: dict[str, Any] = field(default_factory=dict)  # the method's hyper-parameters
    data: str = "wafers"  # "wafers" (built-in), an image folder, or a .npy/.npz file
    train_split: str = "train"  # for built-in wafers: train, or one of train_1/10/20/29
    # >= 1: pretrain on a random (seeded) subset of this many training images, e.g. Exemplar's
    # surrogate classes; the kNN monitor's bank still draws from all of them. None: all
    train_max_images: int | None = checked(None, at_least(1))
    val_split: str | None = "val"  # labelled split for the kNN monitor; None disables it
    val_data: str | None = None  # other data: a labelled folder/array file for the kNN monitor
    image_size: int = checked(32, at_least(MIN_IMAGE_SIZE))  # >= 8 (see MIN_IMAGE_SIZE)
    in_channels: int | None = checked(None, at_least(1))  # >= 1; None: what the data has
    view_style: str | None = None  # natural | wafer; None: what the data is
    epochs: int = checked(3, at_least(1))  # >= 1
    # >= 1: stop after this many optimizer steps (overrides epochs); None: no limit
    max_steps: int | None = checked(None, at_least(1))
    # > 0, wall-clock budget: the LR cosine and the methods' schedules run on
    # max(steps / total steps, minutes / max_minutes) and training stops when either ends
    max_minutes: float | None = checked(None, above(0))
    batch_size: int = checked(256, at_least(1))  # >= 1, per device
    optimizer: str = checked("sgd", one_of(_optimizers))  # sgd | lars | adam | adamw (optim.py)
    lr: float = checked(0.06, above(0))  # > 0, base learning rate for batch 256 (see lr_scaling)
    # linear (lr * B/256) | sqrt (lr * sqrt(B/256)) | none (runtime/optim.py scaled_lr)
    lr_scaling: str = checked("linear", _known_lr_scaling)
    weight_decay: float = checked(5e-4, at_least(0))  # >= 0
    # [0, 1): SGD/LARS momentum (AdamW ignores it); at 1 and above old gradients never fade
    sgd_momentum: float = checked(0.9, within(0, 1))
    # [beta1, beta2] of adam / adamw, each in [0, 1) (GANs: beta1 0.5, Radford et al. 2016)
    adam_betas: list[float] = checked(rule=_betas, default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = checked(0.5, at_least(0))  # >= 0
    # auto | bf16-mixed | 16-mixed | 32-true | 32 (runtime/precision.py PRECISIONS)
    precision: str = checked("auto", one_of(_precisions))
    channels_last: bool | None = None  # None: on when it helps (conv backbone, mixed precision)
    # CPU training with glibc: keep freed tensor memory for the next step instead of page-faulting
    # it in again (selfsup/runtime/allocator.py); ignored on GPUs
    cpu_heap_allocations: bool = True
    # "auto", a number of devices >= 1 (int or string), or GPU ids as a string: "0,1"
    devices: str | int = checked("auto", _device_count_or_ids)
    num_nodes: int = checked(1, at_least(1))  # >= 1
    # auto | cpu | gpu | cuda | mps | tpu; gpu/cuda only where torch finds a CUDA GPU
    accelerator: str = checked("auto", _available_accelerator)
    seed: int = checked(0, within(0, SEED_LIMIT))  # [0, 2**32)
    out: str = "runs"
    name: str | None = None  # run folder name; default <method>-<backbone>-<timestamp>
    resume: str | None = (
        None  # a run folder or checkpoint; "auto" resumes the run folder's last.ckpt
    )
    # --resume: read checkpoints with full unpickling (can run code from the file); never taken
    # from a saved config.yaml, only from the current command
    trust_checkpoint: bool = False
    knn_k: list[int] = checked(rule=_positive_ks, default_factory=lambda: [5, 200])  # each >= 1
    knn_temperature: float = checked(0.1, above(0))  # > 0
    knn_every_n_epochs: int = checked(1, at_least(1))  # >= 1
    # >= 1: cap on the labelled kNN bank (random, seeded) for speed; None: no cap
    knn_max_train: int | None = checked(20000, at_least(1))
    knn_max_val: int | None = checked(None, at_least(1))  # >= 1; None: no cap
    # >= 1: epochs without kNN improvement before stopping; None: never stop early
    early_stopping_patience: int | None = checked(None, at_least(1))
    # >= 0: std of normalised embeddings below this x sqrt(D) warns
    collapse_threshold: float = checked(0.02, at_least(0))
    collapse_stop: bool = True  # end training at the first collapsed epoch
    log_every_n_steps: int = checked(10, at_least(1))  # >= 1
    num_workers: int = checked(0, at_least(0))  # >= 0
    progress_bar: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked_value(f, getattr(self, f.name)))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls,
        values: Mapping[str, Any],
        source: str | None = None,
        origins: Mapping[str, str] | None = None,
    ) -> PretrainConfig:
        """A checked config from ``values``. ``source`` says where they came from (a file,
        ``--set``), ``origins`` where single keys did (``{"epochs": "--set epochs=abc"}``);
        an error ends with it: ``(from --set epochs=abc)``."""

        def where(key: str) -> str:
            origin = (origins or {}).get(key, source)
            return f" (from {origin})" if origin else ""

        known = cls.field_names()
        for old in sorted(set(values) & set(RENAMED_KEYS)):
            raise ValueError(f"config key '{old}'{where(old)} is now {RENAMED_KEYS[old]}")
        unknown = sorted(set(values) - set(known))
        if unknown:
            keys = ", ".join(f"'{k}'{where(k)}{did_you_mean(k, known)}" for k in unknown)
            plural = "s" if len(unknown) > 1 else ""
            raise ValueError(f"unknown key{plural} {keys}; known: {', '.join(known)}")
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(err.key, f"{err}{where(err.key)}") from None


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; ``key`` is the setting it is for."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def option_label(key: str) -> str:
    """``epochs (--epochs)`` for a key with a command-line option, else the key."""
    return f"{key} ({CLI_OPTIONS[key]})" if key in CLI_OPTIONS else key


_MISMATCH = object()  # what _converted returns for a value that does not fit the type
_FIELD_TYPES = get_type_hints(PretrainConfig)
# (a value, values) of each simple type, as the errors say it
_TYPE_NAMES: dict[Any, tuple[str, str]] = {
    int: ("an integer", "integers"),
    float: ("a finite number", "finite numbers"),
    str: ("a string", "strings"),
    bool: ("true or false", "true/false values"),
    type(None): ("null", "nulls"),
}


def _checked_value(f: dataclasses.Field, value: Any) -> Any:
    """``value`` of field ``f`` converted to its type (int -> float, tuple -> list) after the
    type and range checks; raises ConfigError naming the key and the value as given."""
    hint = _FIELD_TYPES[f.name]
    converted = _converted(value, hint)
    if converted is _MISMATCH:
        raise ConfigError(f.name, f"{f.name}: expected {_described(hint)}, got {value!r}")
    rule = f.metadata.get("rule")
    if rule is None or converted is None:
        return converted
    try:
        problem = rule(converted)
    except ValueError as err:
        raise ConfigError(f.name, str(err)) from None
    if problem:
        nullable = " (or null)" if type(None) in get_args(hint) else ""
        raise ConfigError(f.name, f"{option_label(f.name)} {problem}{nullable}, got {value!r}")
    return converted


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _converted(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` wants it, or _MISMATCH. bool is not an int here; a float field
    takes an int or a numeric string (YAML reads ``1e-3``, without a dot, as a string)."""
    if hint is Any:
        return value
    if _is_union(hint):
        for option in get_args(hint):
            converted = _converted(value, option)
            if converted is not _MISMATCH:
                return converted
        return _MISMATCH
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return _MISMATCH
        try:
            number = float(value)
        except ValueError:
            return _MISMATCH
        return number if math.isfinite(number) else _MISMATCH
    if hint in _TYPE_NAMES:
        fits = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
        return value if fits else _MISMATCH
    origin, args = get_origin(hint), get_args(hint)
    if origin is list and isinstance(value, (list, tuple)):
        items = [_converted(item, args[0]) for item in value]
        return _MISMATCH if any(item is _MISMATCH for item in items) else items
    if origin is dict and isinstance(value, dict):
        fits = all(_converted(k, args[0]) is not _MISMATCH for k in value)
        return dict(value) if fits else _MISMATCH
    if origin in (list, dict):
        return _MISMATCH
    raise TypeError(f"PretrainConfig: no check for the field type {hint}")


def _described(hint: Any) -> str:
    """``an integer or null``, ``a list of integers``: the type as a user reads it."""
    if _is_union(hint):
        return " or ".join(_described(option) for option in get_args(hint))
    if hint in _TYPE_NAMES:
        return _TYPE_NAMES[hint][0]
    if get_origin(hint) is list:
        return f"a list of {_TYPE_NAMES[get_args(hint)[0]][1]}"
    return "a mapping of names to values"


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
    values: dict[str, Any],
    overrides: list[str],
    option: str = "--set",
    origins: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Apply ``key=value`` strings (values parsed as YAML; dotted keys go into nested dicts).
    ``option`` names the command-line option in errors; ``origins``, when given, records
    ``"--set key=value"`` for each top-level key set."""
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
                raise ValueError(f"{option} {key}: '{part}' is not a mapping")
        target[parts[-1]] = value
        if origins is not None:
            origins[parts[0]] = f"{option} {item}"
    return values


def resolve_config(
    file: str | Path | None = None, overrides: list[str] | None = None, **explicit: Any
) -> PretrainConfig:
    """Defaults, then the YAML ``file``, then ``explicit`` keyword values, then ``overrides``."""
    values: dict[str, Any] = load_yaml(file) if file else {}
    origins = dict.fromkeys(values, str(file))
    given = {k: v for k, v in explicit.items() if v is not None}
    values.update(given)
    for key in given:
        origins.pop(key, None)  # the caller's value: its option is in the message already
    values = apply_overrides(values, overrides or [], origins=origins)
    cfg = PretrainConfig.from_dict(values, origins=origins)
    cfg.given_keys = frozenset(values)  # what the caller set, defaults aside (explicit_keys)
    return cfg
