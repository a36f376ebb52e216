"""The supervised protocols' fit: a linear or MLP probe of frozen features, or fine-tuning, on
train; selection on val; the test split scored once, at the end.

``fit_and_test`` returns (chosen settings, test metrics), the two parts of a protocol record
that depend on the fit (``selfsup.eval.api`` adds the rest).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from selfsup.data.image_dataset import ImageDataset
from selfsup.eval.finetune import HEAD_INITS
from selfsup.runtime.progress import Progress

# fine-tuning steps at the least: 1 % of the wafer labels (623) is 3 batches of 256 an epoch
FINETUNE_MIN_STEPS = 300
FINETUNE_EPOCHS = 10
PROBE_PATIENCE = 10  # epochs without a better val score before a probe setting stops
# mini-batch Adam (full-batch L-BFGS on a hidden layer is slow on large splits)
MLP_PROBE_SETTINGS = {"batch_size": 256, "epochs": 40}


@dataclass(frozen=True)
class FitSettings:
    """How the supervised protocols fit: ``seed``; fine-tuning's ``epochs``, ``min_steps``,
    ``head_init`` and ``views`` (view recipe parameters replaced); ``batch_size`` images per
    forward pass of the frozen backbone; ``progress`` (None: ``Progress.from_env``)."""

    seed: int = 0
    epochs: int = FINETUNE_EPOCHS
    min_steps: int = FINETUNE_MIN_STEPS
    head_init: str = HEAD_INITS[0]
    views: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 512
    progress: Progress | None = None


def fit_and_test(
    protocol: str, backbone: nn.Module, preprocess: Any, meta: dict[str, Any],
    splits: dict[str, ImageDataset], settings: FitSettings,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """(chosen settings, test metrics): fit ``protocol`` ("linear", "mlp" or "finetune") on
    ``splits["train"]``, select on ``splits["val"]``, score ``splits["test"]`` once.
    ``meta`` is the backbone's metadata (fine-tuning's view recipe comes from it)."""
    num_classes = int(max(int(ds.labels.max()) for ds in splits.values()) + 1)
    if protocol == "finetune":
        return _finetune_and_test(backbone, preprocess, meta, splits, num_classes, settings)
    if protocol not in ("linear", "mlp"):
        raise ValueError(
            f"fit_and_test: protocol must be linear, mlp or finetune, got '{protocol}'"
        )
    return _probe_and_test(protocol, backbone, preprocess, splits, num_classes, settings)


def _finetune_and_test(
    backbone: nn.Module, preprocess: Any, meta: dict[str, Any],
    splits: dict[str, ImageDataset], num_classes: int, settings: FitSettings,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    from selfsup.artifacts import recipe_for
    from selfsup.eval.finetune import finetune

    recipe = recipe_for(meta).with_params(**settings.views)
    train, val, test = splits["train"], splits["val"], splits["test"]
    result = finetune(
        backbone, train.images, train.labels, val.images, val.labels,
        augment=recipe.single_view, preprocess=preprocess, num_classes=num_classes,
        epochs=settings.epochs, min_steps=settings.min_steps, head_init=settings.head_init,
        seed=settings.seed, progress=settings.progress,
    )  # fmt: skip
    metrics = result.evaluate(test.images, test.labels, preprocess, test.class_names)
    chosen = {"step": result.step, "epoch": result.epoch, "val_macro_f1": result.val_macro_f1,
              "head_init": settings.head_init, "views": recipe.params}  # fmt: skip
    return chosen, metrics


def _probe_and_test(
    probe: str, backbone: nn.Module, preprocess: Any,
    splits: dict[str, ImageDataset], num_classes: int, settings: FitSettings,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    from selfsup.eval.features import extract_features
    from selfsup.eval.probe import linear_probe, mlp_probe

    feats = {
        role: extract_features(
            backbone,
            ds.images,
            preprocess,
            batch_size=settings.batch_size,
            progress=settings.progress,
        )  # fmt: skip
        for role, ds in splits.items()
    }
    fit, extra = (linear_probe, {}) if probe == "linear" else (mlp_probe, MLP_PROBE_SETTINGS)
    result = fit(
        feats["train"], splits["train"].labels, feats["val"], splits["val"].labels,
        num_classes=num_classes, seed=settings.seed, patience=PROBE_PATIENCE,
        progress=settings.progress, **extra,
    )  # fmt: skip
    test = splits["test"]
    metrics = result.evaluate(feats["test"], test.labels, class_names=test.class_names)
    chosen = {**result.hyperparameters, "weight_decay": result.weight_decay,
              "epoch": result.epoch, "val_macro_f1": result.val_macro_f1}  # fmt: skip
    return chosen, metrics
