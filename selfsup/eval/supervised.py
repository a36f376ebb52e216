"""The supervised protocols' fit: a linear or MLP probe of frozen features, or fine-tuning, on
train; selection on val; the test split scored once, at the end.

``fit_and_test`` returns a ``Fitted``: the chosen settings and test metrics (the two parts of
a protocol record that depend on the fit; ``selfsup.eval.api`` adds the rest), the selected
network and head (what ``selfsup.classifier`` saves), and the val / test logits that calibrate
its probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.data.image_dataset import ImageDataset
from selfsup.eval.finetune import FINETUNE_BACKBONE_LR, FINETUNE_LR, HEAD_INITS
from selfsup.eval.metrics import classification_metrics
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
    ``head_init``, ``views`` (view recipe parameters replaced), ``semi`` (semi-supervised
    method), ``max_minutes`` (wall-clock budget, ``finetune``) and ``test_time_views``
    (``selfsup.eval.test_time``: selection, test scores and the saved classifier average the
    logits over those views), ``lrs`` and ``backbone_lrs`` (the head and backbone learning
    rates to try, chosen on val: ``finetune_lr_search``), ``ensemble`` (members fine-tuned
    with seeds ``seed``, ``seed + 1``, ... whose logits are averaged: ``selfsup.eval.ensemble``);
    ``batch_size`` images per
    forward pass of the frozen backbone; ``progress`` (None: ``Progress.from_env``)."""

    seed: int = 0
    epochs: int = FINETUNE_EPOCHS
    min_steps: int = FINETUNE_MIN_STEPS
    head_init: str = HEAD_INITS[0]
    views: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 512
    progress: Progress | None = None
    semi: str | None = None  # fine-tuning: None, or "fixmatch" (needs splits["unlabeled"])
    max_minutes: float | None = None
    test_time_views: str = "none"
    lrs: tuple[float, ...] = (FINETUNE_LR,)
    backbone_lrs: tuple[float, ...] = (FINETUNE_BACKBONE_LR,)
    ensemble: int = 1


@dataclass
class Fitted:
    """What a supervised fit selected. ``network``: images (preprocessed) -> features (the
    frozen backbone for probes; the fine-tuned backbone [+ projector blocks]); ``head``:
    features -> logits, with its layout ``head_spec`` (``selfsup.classifier.head_from_spec``);
    ``val_logits`` / ``test_logits`` [N, C]: the selected model's logits on those splits
    (averaged over its ``test_time_views``, which the saved classifier keeps)."""

    chosen: dict[str, Any]
    metrics: dict[str, Any]
    network: nn.Module
    head: nn.Module
    head_spec: dict[str, Any]
    val_logits: Tensor
    test_logits: Tensor
    test_time_views: str = "none"


def fit_and_test(
    protocol: str, backbone: nn.Module, preprocess: Any, meta: dict[str, Any],
    splits: dict[str, ImageDataset], settings: FitSettings,
) -> Fitted:  # fmt: skip
    """Fit ``protocol`` ("linear", "mlp" or "finetune") on ``splits["train"]``, select on
    ``splits["val"]``, score ``splits["test"]`` once. ``meta`` is the backbone's metadata
    (fine-tuning's view recipe comes from it)."""
    labelled = [ds for role, ds in splits.items() if role != "unlabeled"]
    num_classes = int(max(int(ds.labels.max()) for ds in labelled) + 1)
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
) -> Fitted:  # fmt: skip
    from selfsup.artifacts import recipe_for
    from selfsup.eval.ensemble import finetune_ensemble

    recipe = recipe_for(meta).with_params(**settings.views)
    train, val, test = splits["train"], splits["val"], splits["test"]
    semi = None
    if settings.semi is not None:
        semi = _fixmatch(meta, splits)
    fitted = finetune_ensemble(
        backbone, train.images, train.labels, val.images, val.labels,
        seeds=range(settings.seed, settings.seed + settings.ensemble),
        lrs=settings.lrs, backbone_lrs=settings.backbone_lrs,
        augment=recipe.single_view, preprocess=preprocess, num_classes=num_classes,
        epochs=settings.epochs, min_steps=settings.min_steps, head_init=settings.head_init,
        semi=semi, max_minutes=settings.max_minutes,
        test_time_views=settings.test_time_views, progress=settings.progress,
    )  # fmt: skip
    result = fitted.result
    val_logits, test_logits = (
        result.logits(ds.images, preprocess, progress=settings.progress) for ds in (val, test)
    )
    metrics = classification_metrics(test.labels, None, num_classes, test.class_names,
                                     scores=test_logits.softmax(1))  # fmt: skip
    chosen = {**fitted.selection_record(), "head_init": settings.head_init,
              "views": recipe.params, "max_minutes": settings.max_minutes}  # fmt: skip
    if semi is not None:
        chosen["semi"] = {"method": settings.semi, **semi.settings(),
                          "weak_views": FIXMATCH_VIEWS[meta.get("view_style", "natural")][0],
                          "strong_views": FIXMATCH_VIEWS[meta.get("view_style", "natural")][1],
                          "mask_rate": result.mask_rates}  # fmt: skip
    model = result.model
    spec = {"kind": "linear", "in_dim": model.head.in_features, "num_classes": num_classes}
    return Fitted(chosen, metrics, model.backbone, model.head, spec, val_logits, test_logits,
                  result.test_time_views)  # fmt: skip


SEMI_METHODS = ("fixmatch",)
# FixMatch's (weak, strong) views as parameters of simclr's plain views of the backbone's input
# (``ViewRecipe.plain``): wafers: turns and flips / turns, flips, die noise, crops and re-gridding;
# natural images: flip and a mild crop / SimCLR's crops and colour distortion (the paper's
# RandAugment is not in selfsup's recipes).
FIXMATCH_VIEWS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "wafer": ({"die_flip_p": 0.0}, {"die_flip_p": 0.03, "crop_scale": (0.5, 1.0), "regrid_p": 0.5}),
    "natural": (
        {"crop_scale": (0.8, 1.0), "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0},
        {},
    ),
}


def fixmatch_with(recipe: Any, unlabeled: Tensor) -> Any:
    """``FixMatch`` on the ``unlabeled`` uint8 images with the weak and strong views of
    ``FIXMATCH_VIEWS`` for the style of ``recipe``, on simclr's plain views of the same model
    input (``ViewRecipe.plain``): whatever views the backbone was pretrained on (re-gridding,
    free rotation, DINO's multi-crop), the weak view stays turns and flips."""
    from selfsup.eval.finetune import FixMatch

    weak, strong = FIXMATCH_VIEWS[recipe.style]
    return FixMatch(unlabeled, recipe.plain(**weak).single_view,
                    recipe.plain(**strong).single_view)  # fmt: skip


def _fixmatch(meta: dict[str, Any], splits: dict[str, ImageDataset]) -> Any:
    from selfsup.artifacts import recipe_for

    if "unlabeled" not in splits:
        raise ValueError("fixmatch needs unlabelled images (splits['unlabeled'])")
    return fixmatch_with(recipe_for(meta), splits["unlabeled"].images)


def _probe_and_test(
    probe: str, backbone: nn.Module, preprocess: Any,
    splits: dict[str, ImageDataset], num_classes: int, settings: FitSettings,
) -> Fitted:  # fmt: skip
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
    head = result.classifier.eval()  # stays on its device, as the backbone
    device = next(head.parameters()).device
    with torch.no_grad():
        val_logits, test_logits = (
            head(feats[role].to(device).float()).cpu() for role in ("val", "test")
        )
    spec = {"kind": f"{probe}_probe", "in_dim": int(feats["train"].shape[1]),
            "num_classes": num_classes}  # fmt: skip
    if probe == "mlp":
        spec.update(hidden_dim=chosen["hidden_dim"], dropout=chosen["dropout"])
    return Fitted(chosen, metrics, backbone, head, spec, val_logits, test_logits)
