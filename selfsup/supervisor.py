"""``Supervisor``: the Super-Selfish style front door, training through ``selfsup.pretrain``.

```
sup = selfsup.Supervisor("byol", torchvision.datasets.CIFAR10("data"), backbone="convnet_small")
sup.supervise(lr=1e-3, optimizer=torch.optim.Adam, epochs=10, batch_size=32, name="store/base")
backbone = sup.get_backbone()                  # nn.Module: [B, C, S, S] float -> [B, D]
model = CombinedNet(backbone, nn.Linear(backbone.feature_dim, 10))
sup = selfsup.Supervisor("byol", data).load("store/base")   # later: the trained run back
```

Every registered method name works (``selfsup.methods.METHODS.names()``); keyword arguments
after ``backbone`` are the method's hyper-parameters, plus ``backbone_kwargs``,
``in_channels`` and ``view_style``. The dataset is anything ``as_image_dataset`` takes (a
torchvision dataset, a list of PIL images or tensors, an ``ImageDataset``); it is decoded once,
at ``supervise``, to the uint8 batches the trainer augments on the device. ``name`` is a run
folder (``store/base``: ``out="store"``, ``name="base"``) with config, checkpoints, metrics and
``backbone.safetensors``, as ``selfsup pretrain`` writes it; ``selfsup eval`` reads it.

Where this differs from Super-Selfish, on purpose:

- the learning rate follows a linear warm-up (``warmup_epochs``, default 0.5) then a cosine
  decay; ``lr`` is its peak, used as given (``lr_scaling="none"``);
- data are always shuffled and the last partial batch dropped (``shuffle=False`` is refused);
- the backbone is a registered name (``selfsup.backbones``, ``timm/<model>``): the run's config
  must be able to rebuild it. A user ``nn.Module`` is refused; build the method around it
  with ``selfsup.build(name, backbone=module, feature_size=D, ...)`` and
  train it in your own loop (``loss = method(uint8_batch)``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.backbones import BACKBONES
from selfsup.data.image_dataset import ImageDataset
from selfsup.data.torch_dataset import as_image_dataset
from selfsup.methods import METHODS, Method

log = logging.getLogger("selfsup")

DEFAULT_BACKBONE = "convnet_small"
# Method constructor arguments that are run settings (config keys), not hyper-parameters
BASE_ARGUMENTS = ("backbone_kwargs", "in_channels", "image_size", "view_style")
# config keys that ``supervise``'s own arguments and the Supervisor set
RESERVED_KEYS = ("method", "backbone", "method_kwargs", "data", "out", "resume", *BASE_ARGUMENTS)
# optimizer class -> the trainer's optimizer and that class's torch defaults
OPTIMIZER_CLASSES: dict[type, tuple[str, dict[str, float]]] = {
    torch.optim.Adam: ("adamw", {"weight_decay": 0.0}),  # AdamW without decay is Adam
    torch.optim.AdamW: ("adamw", {"weight_decay": 0.01}),
    torch.optim.SGD: ("sgd", {"weight_decay": 0.0, "sgd_momentum": 0.0}),
}


class CombinedNet(nn.Module):
    """A backbone with a task head: ``forward(x) = head(backbone(x))`` (Super-Selfish's name).

    ``CombinedNet(sup.get_backbone(), nn.Linear(backbone.feature_dim, num_classes))`` is a
    classifier to fine-tune in your own loop (all parameters train unless you freeze some).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


class Supervisor:
    """Self-supervised training of ``method_name`` on ``dataset`` (see the module docstring).

    backbone: a registered backbone name (default ``convnet_small``, for small images).
    method_kwargs: the method's hyper-parameters (``selfsup.list_methods()`` shows them), and
    ``backbone_kwargs``, ``in_channels`` (1 grey or 3 RGB; default the data's), ``view_style``
    and ``image_size`` (default the first sample's shorter side; ``supervise`` may set it).
    Unknown names raise ValueError here, before any data is read.
    """

    def __init__(
        self,
        method_name: str,
        dataset: Any,
        backbone: str | None = None,
        **method_kwargs: Any,
    ) -> None:
        METHODS.get(method_name)  # unknown names: ValueError listing the known ones
        self.method_name = method_name
        self.backbone_name = _backbone_name(backbone)
        self.settings = {k: method_kwargs.pop(k) for k in BASE_ARGUMENTS if k in method_kwargs}
        METHODS.check_kwargs(
            method_name, method_kwargs, "method_kwargs", reserved=("backbone", *BASE_ARGUMENTS)
        )
        self.method_kwargs = method_kwargs
        self.dataset = dataset
        self.method: Method | None = None
        self.run_dir: Path | None = None
        self._decoded: tuple[tuple[int | None, int | None], ImageDataset] | None = None

    def supervise(
        self,
        lr: float = 1e-3,
        optimizer: type | str = torch.optim.Adam,
        epochs: int = 10,
        batch_size: int = 32,
        shuffle: bool = True,
        num_workers: int = 0,
        name: str | Path = "store/base",
        pretrained: bool = False,
        lr_scheduler: Any = None,
        image_size: int | None = None,
        **pretrain_kwargs: Any,
    ) -> Supervisor:
        """Train with the Lightning trainer into the run folder ``name``; returns ``self``.

        optimizer: ``torch.optim.Adam`` (the trainer's AdamW with weight_decay=0, which is
        Adam), ``torch.optim.AdamW`` (weight_decay=0.01, torch's default), ``torch.optim.SGD``
        (sgd_momentum=0, weight_decay=0, torch's defaults), ``selfsup.runtime.optim.LARS``, or
        a name: sgd | lars | adamw (the config's defaults). ``weight_decay=`` and
        ``sgd_momentum=`` override; biases and norm weights never decay.
        lr_scheduler: None (the trainer's warm-up + cosine).
        pretrained: continue the run in ``name`` from its last checkpoint with its saved
        settings, until ``epochs`` epochs in total (a killed run finishes; a finished one
        trains on only if ``epochs`` is larger); without a checkpoint there, train afresh.
        A run folder ``name`` that exists gets a new one beside it (``name-<time>``, warned),
        never overwritten. pretrain_kwargs: any other ``PretrainConfig`` key (``precision``,
        ``warmup_epochs``, ``val_data``, ``devices``, ``progress_bar``, ...).
        """
        _check_arguments(shuffle, lr_scheduler, pretrain_kwargs)
        optimizer_settings = _optimizer_settings(optimizer)
        run = Path(name)
        quiet = pretrain_kwargs.get("progress_bar") is False
        if pretrained and (run / "checkpoints" / "last.ckpt").is_file():
            return self._resume(run, epochs, quiet, pretrain_kwargs)
        if pretrained:
            log.info("supervise: no checkpoint in '%s' to continue; training afresh", run)
        size = image_size or self.settings.get("image_size")
        data = self._data(size, self.settings.get("in_channels"), quiet)
        training = {
            "lr": lr,
            "lr_scaling": "none",  # lr as given, not a base rate for batch 256
            **optimizer_settings,
            "epochs": epochs,
            "batch_size": batch_size,
            "num_workers": num_workers,
        }
        settings = {**self._run_settings(run, data), **training, **pretrain_kwargs}
        return self._pretrain(data, settings, run)

    def _run_settings(self, run: Path, data: ImageDataset) -> dict[str, Any]:
        """Config keys for the method, its backbone, the data size and the run folder."""
        return {
            "method": self.method_name,
            "backbone": self.backbone_name,
            "method_kwargs": self.method_kwargs,
            **self.settings,
            "image_size": data.image_size,
            "out": str(run.parent),
            "name": run.name,
        }

    def load(self, name: str | Path, *, trust_checkpoint: bool = False) -> Supervisor:
        """Read back what ``supervise`` saved in the run folder ``name``; returns ``self``.

        The method (backbone and heads) comes from ``checkpoints/best.ckpt`` when the run
        kept one (the epoch its backbone export was taken from), else ``last.ckpt`` (also a
        killed run's). Checkpoints are read without running code from them unless
        ``trust_checkpoint``. A run of another method raises ValueError.
        """
        from selfsup.artifacts import load_method_from_checkpoint

        run = Path(name)
        folder = run / "checkpoints"
        ckpt = next((p for p in (folder / "best.ckpt", folder / "last.ckpt") if p.is_file()), None)
        if ckpt is None:
            raise FileNotFoundError(
                f"load: '{run}' holds no checkpoints/last.ckpt (expected the run folder "
                "supervise(name=...) wrote)"
            )
        method = load_method_from_checkpoint(ckpt, trust=trust_checkpoint)
        if method.method_name != self.method_name:
            raise ValueError(
                f"load: '{run}' holds a {method.method_name} run, not {self.method_name}; "
                f"use Supervisor('{method.method_name}', ...)"
            )
        self.method, self.run_dir = method, run
        return self

    def get_backbone(self) -> nn.Module:
        """The trained backbone (eval mode): float [B, C, S, S] -> features [B, feature_dim].

        It expects images preprocessed as in training: ``backbone(sup.preprocess(uint8))``.
        """
        return self._trained().backbone.eval()

    @property
    def preprocess(self) -> Any:
        """uint8 [B, C, S, S] -> the float input the backbone was trained on (normalised)."""
        return self._trained().views.preprocess

    def _trained(self) -> Method:
        if self.method is None:
            raise RuntimeError(
                f"Supervisor('{self.method_name}'): nothing trained yet; call "
                ".supervise(...) to train, or .load(name) to read a saved run"
            )
        return self.method

    def _data(self, image_size: int | None, in_channels: int | None, quiet: bool) -> ImageDataset:
        """The dataset decoded at ``image_size`` (kept for the next supervise call)."""
        key = (image_size, in_channels)
        if self._decoded is None or self._decoded[0] != key:
            data = as_image_dataset(
                self.dataset, image_size=key[0], in_channels=key[1], progress=not quiet
            )
            self._decoded = key, data
        return self._decoded[1]

    def _resume(
        self, run: Path, epochs: int, quiet: bool, pretrain_kwargs: dict[str, Any]
    ) -> Supervisor:
        """Continue the run in ``run`` with its saved settings, up to ``epochs`` in total
        (or to the epochs its checkpoint already holds: a run never goes back)."""
        from selfsup.config import load_yaml
        from selfsup.train.runfolder import read_summary

        saved = load_yaml(run / "config.yaml")
        for key, mine in (("method", self.method_name), ("backbone", self.backbone_name)):
            if saved.get(key) != mine:
                raise ValueError(
                    f"supervise(pretrained=True): '{run}' holds a run with {key} "
                    f"'{saved.get(key)}', not '{mine}'; pick another name or match it"
                )
        done = _epochs_done(run)
        finished = read_summary(run).get("epochs_completed") == done  # exported at `done`
        if finished and done >= epochs:
            log.warning(
                "supervise: '%s' already trained %d epoch(s) (epochs=%d); loading it as it is "
                "(raise epochs to train on)", run, done, epochs,
            )  # fmt: skip
            return self.load(run)
        if done > epochs:
            log.warning(
                "supervise: the killed run '%s' holds %d epoch(s), more than epochs=%d; "
                "finishing it at %d", run, done, epochs, done,
            )  # fmt: skip
        channels = saved.get("in_channels") or self.settings.get("in_channels")
        data = self._data(saved.get("image_size"), channels, quiet)
        settings = {"resume": str(run), "epochs": max(epochs, done), **pretrain_kwargs}
        return self._pretrain(data, settings, run)

    def _pretrain(self, data: ImageDataset, settings: dict[str, Any], run: Path) -> Supervisor:
        from selfsup.train.pretrain import pretrain

        self.method, self.run_dir = pretrain(dataset=data, **settings)
        if self.run_dir.resolve() != run.resolve():
            log.warning(
                "supervise: '%s' already held a run; this one is in '%s' (load it by that name, "
                "or pass pretrained=True to continue the earlier one)", run, self.run_dir,
            )  # fmt: skip
        return self


def _epochs_done(run: Path) -> int:
    """Epochs the run's last checkpoint holds (it is written at the end of each epoch)."""
    from selfsup.runtime.files import load_checkpoint_file

    return int(load_checkpoint_file(run / "checkpoints" / "last.ckpt").get("epoch", -1)) + 1


def _backbone_name(backbone: Any) -> str:
    """A registered backbone name (checked), or ValueError for anything the config cannot
    rebuild (a user module)."""
    if backbone is None:
        return DEFAULT_BACKBONE
    if isinstance(backbone, nn.Module):
        raise ValueError(
            f"Supervisor: backbone must be a registered name ({', '.join(BACKBONES.names())}, "
            f"or timm/<model>), got a {type(backbone).__name__} module, which the run's config "
            "cannot rebuild. Build the method around it instead: selfsup.build(method_name, "
            "backbone=module, feature_size=D, image_size=S, in_channels=C), "
            "and train it in your own loop: loss = method(uint8_batch)"
        )
    if not isinstance(backbone, str):
        raise ValueError(f"Supervisor: backbone must be a name, got {type(backbone).__name__}")
    if not backbone.startswith("timm/"):
        BACKBONES.get(backbone)  # unknown names: ValueError listing the known ones
    return backbone


def _optimizer_settings(optimizer: type | str) -> dict[str, Any]:
    """Config keys for an optimizer class (with its torch defaults) or name."""
    from selfsup.runtime.optim import LARS, OPTIMIZERS

    if isinstance(optimizer, str) and optimizer in OPTIMIZERS:
        return {"optimizer": optimizer}
    if optimizer is LARS:
        return {"optimizer": "lars"}
    if isinstance(optimizer, type) and optimizer in OPTIMIZER_CLASSES:
        config_name, defaults = OPTIMIZER_CLASSES[optimizer]
        return {"optimizer": config_name, **defaults}
    shown = getattr(optimizer, "__qualname__", repr(optimizer))
    raise ValueError(
        f"supervise: optimizer {shown} is not supported; use torch.optim.Adam, "
        "torch.optim.AdamW, torch.optim.SGD or selfsup.runtime.optim.LARS "
        f"(or a name: {', '.join(OPTIMIZERS)})"
    )


def _check_arguments(shuffle: bool, lr_scheduler: Any, pretrain_kwargs: dict[str, Any]) -> None:
    """Refuse what the trainer does not do (it always shuffles and schedules warm-up + cosine)
    and pretrain keywords that repeat the Supervisor's own settings."""
    if not shuffle:
        raise ValueError(
            "supervise: shuffle=False is not supported: the trainer always shuffles (seeded by "
            "seed=...) and drops the last partial batch; pass shuffle=True"
        )
    if lr_scheduler is not None:
        raise ValueError(
            "supervise: lr_scheduler must be None: the trainer uses a linear warm-up "
            "(warmup_epochs=..., default 0.5) then a cosine decay to 0, with lr as its peak"
        )
    clash = sorted(set(RESERVED_KEYS) & set(pretrain_kwargs))
    if clash:
        raise ValueError(
            f"supervise: {', '.join(clash)} are set by Supervisor(...) and supervise's own "
            "arguments, not by pretrain keywords"
        )
