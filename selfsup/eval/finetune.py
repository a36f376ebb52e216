"""Few-label fine-tuning: backbone + linear head trained on a (stratified) fraction of labels.

The semi-supervised protocol of SimCLR (Chen et al. 2020, Sec. 6: fine-tune on 1 % / 10 % of
the labels) with selection on the validation split: at evenly spaced steps the model scores
macro-F1 on val; the best step's weights are returned. The test split never enters this module.
The backbone has its own (smaller) learning rate; the head starts from zero, or (LP-FT, Kumar
et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution")
from the linear probe of the frozen features, chosen on val, so the first steps do not push
the pretrained features around to fit a random head. SimCLR v2 (Chen et al. 2020b, Sec. 2)
fine-tunes from the projector's first layer: ``from_projector_layer`` k > 0 trains the method's
backbone and the first k Linear-BN-ReLU blocks of its projector under the head
(``finetune_network``). ``semi=FixMatch(...)`` adds FixMatch (Sohn et al. 2020): each step
also takes ``ratio`` x the batch of unlabelled images, whose confident predictions on a weak
view become the labels of a strong view (``selfsup.losses.fixmatch_loss``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.eval.features import extract_features
from selfsup.eval.metrics import classification_metrics, macro_f1
from selfsup.eval.probe import folded_linear, linear_probe
from selfsup.eval.test_time import averaged_logits, check_test_time_views
from selfsup.losses.fixmatch import FIXMATCH_THRESHOLD, fixmatch_loss
from selfsup.runtime.allocator import heap_allocations
from selfsup.runtime.optim import parameter_groups, warmup_cosine
from selfsup.runtime.progress import Progress, resolve_progress

HEAD_INITS = ("zero", "probe")
# SGD learning rates of fine-tuning: the head's, and the backbone's, ten times smaller so the
# first steps do not undo what pretraining learnt (``finetune_lr_search`` tries others on val).
FINETUNE_LR = 0.1
FINETUNE_BACKBONE_LR = 0.01
# The share of a fine-tuning time budget during which the schedule follows the steps alone. The
# first steps are slower than the rest (allocations, caches): without this, the clock would be
# a fraction of a step ahead of the steps at step 1, change the warm-up's first learning rates,
# and make a run whose budget never binds differ from the same run without a budget.
BUDGET_GRACE = 0.01


class ProjectorTrunk(nn.Module):
    """A method's backbone followed by the first blocks (Linear [+ BatchNorm] + ReLU) of its
    projector: the network SimCLR v2 fine-tunes. ``feature_dim`` is the last block's width.
    It shares the method's modules (``finetune`` trains a copy)."""

    def __init__(self, backbone: nn.Module, blocks: list[nn.Sequential]) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(*blocks)
        self.feature_dim = blocks[-1][0].out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))


def projector_blocks(projector: nn.Module | None) -> list[nn.Sequential]:
    """The hidden blocks Linear [+ BatchNorm1d] + ReLU at the start of ``projector`` (an
    ``nn.Sequential`` as ``heads.mlp`` builds), in order; [] for anything else. The output
    Linear is never a block (no ReLU follows it)."""
    if not isinstance(projector, nn.Sequential):
        return []
    blocks: list[nn.Sequential] = []
    current: list[nn.Module] = []
    for layer in projector:
        current.append(layer)
        if isinstance(layer, nn.ReLU):
            kinds = [type(m) for m in current]
            if kinds not in ([nn.Linear, nn.ReLU], [nn.Linear, nn.BatchNorm1d, nn.ReLU]):
                break
            blocks.append(nn.Sequential(*current))
            current = []
    return blocks


def default_projector_layers(method_name: str | None) -> int:
    """How many projector blocks fine-tuning keeps by default for a method: its paper's
    (``finetune_from_projector_layer`` on the class, SimCLR v2's 1), else 0 (the backbone)."""
    from selfsup.methods import METHODS

    if method_name not in METHODS:
        return 0
    return int(getattr(METHODS.get(method_name), "finetune_from_projector_layer", 0))


def check_projector_layer(from_projector_layer: int) -> int:
    """``from_projector_layer`` itself; ValueError when it is not an integer >= 0."""
    if isinstance(from_projector_layer, bool) or not isinstance(from_projector_layer, int):
        raise ValueError(
            f"finetune: from_projector_layer must be an integer >= 0, got {from_projector_layer!r}"
        )
    if from_projector_layer < 0:
        raise ValueError(
            f"finetune: from_projector_layer must be >= 0 (0: the backbone alone), "
            f"got {from_projector_layer}"
        )
    return from_projector_layer


def finetune_network(model: nn.Module, from_projector_layer: int = 0) -> nn.Module:
    """What ``finetune`` trains under its linear head. ``model``: a backbone, or a Method (its
    backbone). ``from_projector_layer`` k > 0 (a Method only): its backbone and the first k
    Linear [+ BN] + ReLU blocks of its projector (``ProjectorTrunk``), refused with a
    ValueError for a projector without k such blocks."""
    from selfsup.methods.base import Method

    if check_projector_layer(from_projector_layer) == 0:
        return model.backbone if isinstance(model, Method) else model
    if not isinstance(model, Method):
        raise ValueError(
            f"finetune: from_projector_layer={from_projector_layer} needs the method (its "
            f"projector), got a {type(model).__name__}; pass the Method, or the run folder or "
            ".ckpt to evaluate"
        )
    projector = getattr(model, "projector", None)
    blocks = projector_blocks(projector)
    if len(blocks) < from_projector_layer:
        has = "no projector" if projector is None else f"{len(blocks)} such layer(s)"
        raise ValueError(
            f"finetune: from_projector_layer={from_projector_layer} needs that many "
            f"Linear-BN-ReLU layers at the start of {model.method_name}'s projector; it has "
            f"{has} (from_projector_layer=0 fine-tunes the backbone alone)"
        )
    return ProjectorTrunk(model.backbone, blocks[:from_projector_layer])


class Classifier(nn.Module):
    """Backbone + linear head: what fine-tuning trains and returns. The head starts at zero
    (uniform predictions) unless ``head`` gives its starting weights."""

    def __init__(self, backbone: nn.Module, num_classes: int, head: nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        if head is not None:
            self.head.load_state_dict(head.state_dict())

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def probe_head(
    backbone: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    val_images: Tensor,
    val_labels: Tensor,
    *,
    preprocess: Callable[[Tensor], Tensor],
    num_classes: int,
    precision: str = "32-true",
    seed: int = 0,
    progress: Progress | None = None,
) -> nn.Linear:
    """The linear probe of ``backbone``'s frozen features (eval mode, no augmentation), weight
    decay and iteration chosen on val, folded into one Linear on raw features: LP-FT's start."""
    device = next(backbone.parameters()).device
    feats = [  # extract_features restores the backbone's modes afterwards
        extract_features(
            backbone, x, preprocess, device=device, precision=precision, progress=progress
        )
        for x in (train_images, val_images)
    ]
    probe = linear_probe(
        feats[0], train_labels, feats[1], val_labels, num_classes=num_classes, seed=seed,
        patience=20, progress=progress,
    )  # fmt: skip
    return folded_linear(probe.classifier).to(device)


FIXMATCH_RATIO = 7  # mu: unlabelled images per labelled image in a step (the paper's)
FIXMATCH_WEIGHT = 1.0  # lambda_u: the unlabelled loss's weight (the paper's)


@dataclass
class FixMatch:
    """FixMatch's part of fine-tuning (Sohn et al. 2020, Algorithm 1). ``unlabeled``: uint8
    images [U, C, S, S] without labels (the training data at large); ``weak`` / ``strong``:
    raw batch -> one augmented view (wafers: turns and flips / the pretraining views with die
    noise, crops and re-gridding); ``threshold`` tau, ``ratio`` mu, ``weight`` lambda_u."""

    unlabeled: Tensor
    weak: Callable[[Tensor], Tensor]
    strong: Callable[[Tensor], Tensor]
    threshold: float = FIXMATCH_THRESHOLD
    ratio: int = FIXMATCH_RATIO
    weight: float = FIXMATCH_WEIGHT

    def __post_init__(self) -> None:
        if self.unlabeled.ndim != 4 or self.unlabeled.shape[0] < 2:
            raise ValueError(
                f"FixMatch: unlabeled must be images [U >= 2, C, S, S], got "
                f"{tuple(self.unlabeled.shape)}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"FixMatch: threshold must be in [0, 1], got {self.threshold}")
        if self.ratio < 1 or self.weight < 0:
            raise ValueError(
                f"FixMatch: ratio must be >= 1 and weight >= 0, got {self.ratio} and {self.weight}"
            )

    def settings(self) -> dict[str, float | int]:
        return {"threshold": self.threshold, "ratio": self.ratio, "weight": self.weight,
                "unlabeled": int(self.unlabeled.shape[0])}  # fmt: skip


@dataclass
class FinetuneResult:
    """The fine-tuned model at its best validation step.

    ``history`` holds (step, val macro-F1) of every evaluation; ``step`` is the chosen one and
    ``epoch`` the same point in passes over the labelled set. With FixMatch, ``mask_rates``
    holds (step, mean share of the unlabelled samples above the threshold since the previous
    evaluation) at every evaluation. ``steps_run``: the steps trained (fewer than planned when
    a ``max_minutes`` budget ended the run). ``test_time_views``: the views whose logits are
    averaged in ``logits`` / ``predict`` / ``evaluate``, as in the val scores that selected the
    model (``selfsup.eval.test_time``). An ensemble (``selfsup.eval.ensemble``) has no single
    step: ``step`` and ``epoch`` are None, ``val_macro_f1`` is the ensemble's and ``steps_run``
    the members' total.
    """

    model: Classifier
    step: int | None
    epoch: float | None
    val_macro_f1: float
    history: list[tuple[int, float]] = field(default_factory=list)
    mask_rates: list[tuple[int, float]] = field(default_factory=list)
    steps_run: int = 0
    test_time_views: str = "none"

    def predict(
        self, images: Tensor, preprocess: Callable[[Tensor], Tensor], batch_size: int = 512,
        progress: Progress | None = None,
    ) -> Tensor:  # fmt: skip
        """Class scores [N, C] (eval mode) for raw images."""
        return self.logits(images, preprocess, batch_size, progress).softmax(-1)

    def logits(
        self, images: Tensor, preprocess: Callable[[Tensor], Tensor], batch_size: int = 512,
        progress: Progress | None = None,
    ) -> Tensor:  # fmt: skip
        """Class logits [N, C] (eval mode, float32, on the CPU) for raw images, averaged over
        the ``test_time_views``; ``progress`` reports the batches."""
        return _logits(self.model, images, preprocess, batch_size, self.test_time_views,
                       progress)  # fmt: skip

    def evaluate(
        self, images, labels, preprocess, class_names=None, progress: Progress | None = None
    ) -> dict:
        scores = self.predict(images, preprocess, progress=progress)
        return classification_metrics(
            labels, None, scores.shape[1], class_names=class_names, scores=scores
        )


@torch.no_grad()
def _logits(
    model: nn.Module, images: Tensor, preprocess: Callable[[Tensor], Tensor],
    batch_size: int = 512, test_time_views: str = "none", progress: Progress | None = None,
) -> Tensor:  # fmt: skip
    """Class logits [N, C] of ``model`` in eval mode for raw images, float32 on the CPU,
    averaged over ``test_time_views``; ``progress`` reports the batches (long inputs, many
    views or an ensemble make this a job of minutes)."""
    model.eval()
    device = next(model.parameters()).device
    batches = range(0, images.shape[0], batch_size)
    task = resolve_progress(progress).task(
        f"class scores of {images.shape[0]} images", len(batches), "batches"
    )
    out = []
    for i in batches:
        x = preprocess(images[i : i + batch_size].to(device))
        out.append(averaged_logits(model, x, test_time_views).cpu())
        task.advance()
    task.close()
    return torch.cat(out)


def class_weights(labels: Tensor, num_classes: int, mode: str) -> Tensor | None:
    """Cross-entropy class weights [C] from the labelled set, mean 1 over present classes.

    mode "none": no weights; "balanced": N / (C n_c) (inverse frequency, as scikit-learn);
    "sqrt": 1 / sqrt(n_c), the milder choice for few labels, where "balanced" gives a class
    with 1 example hundreds of times the weight of the majority and the model chases it.
    Classes absent from ``labels`` get weight 0.
    """
    if mode == "none":
        return None
    counts = torch.bincount(labels, minlength=num_classes).float()
    present = counts > 0
    if mode == "balanced":
        raw = 1.0 / counts.clamp(min=1)
    elif mode == "sqrt":
        raw = counts.clamp(min=1).rsqrt()
    else:
        raise ValueError(f"class_weighting must be none, balanced or sqrt, got '{mode}'")
    raw = torch.where(present, raw, 0.0)
    return raw * present.sum() / raw.sum()


def _optimizer(model: Classifier, lr: float, backbone_lr: float | None, weight_decay: float):
    head_groups = parameter_groups(model.head, weight_decay)
    for g in head_groups:
        g["lr"] = lr
    groups = head_groups
    if backbone_lr is None:
        model.backbone.requires_grad_(False)
    else:
        backbone_groups = parameter_groups(model.backbone, weight_decay)
        for g in backbone_groups:
            g["lr"] = backbone_lr
        groups = groups + backbone_groups
    for g in groups:
        g.pop("lars_exclude", None)
    return torch.optim.SGD(groups, momentum=0.9, nesterov=True)


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless shuffled batches of indices: a new permutation per pass, no batch below 2."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - 1, batch_size):
            idx = order[start : start + batch_size]
            if idx.numel() >= 2:  # BatchNorm needs two samples
                yield idx


def finetune(
    backbone: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    val_images: Tensor,
    val_labels: Tensor,
    *,
    augment: Callable[[Tensor], Tensor],
    preprocess: Callable[[Tensor], Tensor],
    num_classes: int,
    epochs: int = 30,
    min_steps: int = 0,
    evaluations: int = 10,
    batch_size: int = 256,
    lr: float = FINETUNE_LR,
    backbone_lr: float | None = FINETUNE_BACKBONE_LR,
    weight_decay: float = 5e-4,
    class_weighting: str = "sqrt",
    label_smoothing: float = 0.0,
    head_init: str = "zero",
    from_projector_layer: int = 0,
    precision: str = "32-true",
    seed: int = 0,
    semi: FixMatch | None = None,
    max_minutes: float | None = None,
    test_time_views: str = "none",
    progress: Progress | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``backbone`` with a linear head; pick the step on val macro-F1.

    Trains for ``max(epochs * steps_per_epoch, min_steps)`` SGD steps (Nesterov momentum 0.9,
    linear warm-up over the first 5 % then cosine to 0), so a few hundred labels still get
    enough steps; the model is scored on val ``evaluations`` times, evenly spaced, and the
    best state is returned. ``augment`` maps a raw uint8 batch to one augmented float view;
    ``preprocess`` is the deterministic eval transform. ``backbone_lr=None`` freezes the
    backbone (a linear probe trained with augmentation). ``class_weighting``: see
    ``class_weights``. ``head_init``: "zero", or "probe" (LP-FT: the head starts as the
    linear probe of the frozen features, ``probe_head``). ``precision`` "bf16-mixed" runs
    forward passes under bf16 autocast. ``progress`` reports steps done, the latest and best
    val macro-F1 and the time left (default: ``resolve_progress``, silent for short runs).
    ``backbone`` may be a Method (its backbone is fine-tuned); with ``from_projector_layer`` k
    > 0 its backbone and the first k blocks of its projector are (SimCLR v2: k = 1;
    ``finetune_network``). ``semi``: FixMatch with unlabelled images (``FixMatch``); its
    unlabelled batches are ``semi.ratio`` x ``batch_size``, and the labelled steps are as
    without it. ``max_minutes``: a wall-clock budget for the steps and evaluations; the
    schedule then runs on progress = max(step / total, elapsed / budget), so the cosine ends
    and the last evaluation happens when the time is up, even after fewer steps (a FixMatch
    step costs ~15 plain ones; ``FinetuneResult.steps_run`` tells how many ran).
    ``test_time_views`` ("none", "hflip", "dihedral"; ``selfsup.eval.test_time``): the val
    scores that select the step, and the result's logits, average the logits over those views.
    """
    _check_finetune_args(train_images, evaluations, head_init)
    check_test_time_views(test_time_views, "finetune: test_time_views")
    if max_minutes is not None:
        check_minutes(max_minutes, "finetune: max_minutes")
    backbone = finetune_network(backbone, from_projector_layer)
    torch.manual_seed(seed)
    head = None
    if head_init == "probe":
        head = probe_head(
            backbone, train_images, train_labels, val_images, val_labels, preprocess=preprocess,
            num_classes=num_classes, precision=precision, seed=seed, progress=progress,
        )  # fmt: skip
    trainer = _Trainer.create(
        Classifier(copy.deepcopy(backbone), num_classes, head), augment, preprocess, lr=lr,
        backbone_lr=backbone_lr, weight_decay=weight_decay, label_smoothing=label_smoothing,
        class_weight=class_weights(train_labels, num_classes, class_weighting),
        precision=precision,
    )  # fmt: skip
    batch_size = min(batch_size, train_images.shape[0])
    steps_per_epoch = math.ceil(train_images.shape[0] / batch_size)
    batches = _batches(train_images.shape[0], batch_size, torch.Generator().manual_seed(seed))
    total_steps, plan = finetune_plan(epochs, steps_per_epoch, min_steps)
    unlabeled = None
    if semi is not None:
        trainer.semi = semi
        unlabeled = _batches(semi.unlabeled.shape[0], semi.ratio * batch_size,
                             torch.Generator().manual_seed(seed + 1))  # fmt: skip
        plan += (f"; FixMatch: {semi.ratio} x {batch_size} of {semi.unlabeled.shape[0]} "
                 f"unlabelled images a step, threshold {semi.threshold}")  # fmt: skip
    if max_minutes is not None:
        plan += f"; at most {max_minutes:g} min (the schedule ends when the time is up)"
    resolve_progress(progress).note(plan)
    selection = trainer.run(
        total_steps, evaluations, batches,
        (train_images, train_labels), (val_images, val_labels), progress, unlabeled,
        budget_s=None if max_minutes is None else 60 * max_minutes,
        test_time_views=test_time_views,
    )  # fmt: skip
    model = trainer.model
    model.load_state_dict(selection.state)
    step, score, history = selection.step, selection.score, selection.history
    return FinetuneResult(model.eval(), step, step / steps_per_epoch, score, history,
                          selection.mask_rates, selection.steps_run, test_time_views)  # fmt: skip


@dataclass
class FinetuneSearch:
    """What ``finetune_lr_search`` chose: the fine-tuned ``result`` with the best val macro-F1,
    its ``lr`` and ``backbone_lr``, and every candidate in the order tried (``candidates``:
    {"lr", "backbone_lr", "val_macro_f1", "step", "steps_run"})."""

    result: FinetuneResult
    lr: float
    backbone_lr: float
    candidates: list[dict[str, float]]


def finetune_lr_search(
    backbone: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    val_images: Tensor,
    val_labels: Tensor,
    *,
    lrs: Sequence[float] = (FINETUNE_LR,),
    backbone_lrs: Sequence[float] = (FINETUNE_BACKBONE_LR,),
    max_minutes: float | None = None,
    progress: Progress | None = None,
    **settings: Any,
) -> FinetuneSearch:
    """Fine-tune once per pair of the grid ``lrs`` x ``backbone_lrs`` (head and backbone
    learning rates) and keep the pair with the best val macro-F1 (the first on a tie): the
    learning rates are chosen on val like the step, and the test split is never read. Every
    candidate uses the same seed, hence the same batches and views. ``max_minutes`` is the
    budget of the whole search, split evenly between the candidates. ``settings``: the other
    keywords of ``finetune``. With one pair this is ``finetune`` itself."""
    pairs = [
        (lr, backbone_lr)
        for lr in check_learning_rates(lrs, "finetune: lrs")
        for backbone_lr in check_learning_rates(backbone_lrs, "finetune: backbone_lrs")
    ]
    share = None
    if max_minutes is not None:
        share = check_minutes(max_minutes, "finetune: max_minutes") / len(pairs)
    best: FinetuneSearch | None = None
    candidates: list[dict[str, float]] = []
    for i, (lr, backbone_lr) in enumerate(pairs):
        if len(pairs) > 1:
            resolve_progress(progress).note(
                f"learning rates {i + 1} of {len(pairs)}: head {lr:g}, backbone {backbone_lr:g}"
            )
        result = finetune(
            backbone, train_images, train_labels, val_images, val_labels, lr=lr,
            backbone_lr=backbone_lr, max_minutes=share, progress=progress, **settings,
        )  # fmt: skip
        candidates.append({"lr": lr, "backbone_lr": backbone_lr, "step": result.step,
                           "val_macro_f1": result.val_macro_f1,
                           "steps_run": result.steps_run})  # fmt: skip
        if best is None or result.val_macro_f1 > best.result.val_macro_f1:
            best = FinetuneSearch(result, lr, backbone_lr, candidates)
    assert best is not None  # pairs is never empty
    return best


def check_learning_rates(values: float | Sequence[float], name: str) -> list[float]:
    """``values`` (one number or several) as a list of finite learning rates > 0; else a
    ValueError naming them as ``name``."""
    rates = [values] if isinstance(values, (int, float)) else list(values)
    if not rates:
        raise ValueError(f"{name}: give at least one learning rate")
    for rate in rates:
        if not 0 < rate < math.inf:
            raise ValueError(f"{name}: learning rates must be > 0 and finite, got {rate}")
    return [float(rate) for rate in rates]


def check_minutes(value: float, name: str = "max_minutes") -> float:
    """``value`` when it is a finite number of minutes > 0; else a ValueError naming it as
    ``name`` (no budget is None, not infinity)."""
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def finetune_plan(epochs: int, steps_per_epoch: int, min_steps: int) -> tuple[int, str]:
    """(total steps, the one-line plan printed before training): ``epochs * steps_per_epoch``
    steps, raised to ``min_steps`` when that is more, and the line says why."""
    asked = epochs * steps_per_epoch
    total = max(asked, min_steps, 1)
    plan = f"fine-tune: {epochs} epochs of {steps_per_epoch} steps = {asked} steps"
    if total > asked and min_steps > asked:
        plan += (
            f", raised to {total} by --min-steps {min_steps} (few labels make short epochs; "
            f"--min-steps 0 runs exactly {epochs} epochs)"
        )
    elif total > asked:
        plan += f", raised to {total} (at least one step)"
    return total, plan


def _check_finetune_args(train_images: Tensor, evaluations: int, head_init: str) -> None:
    if train_images.shape[0] < 2:
        raise ValueError(f"finetune: need at least 2 training images, got {train_images.shape[0]}")
    if evaluations < 1:
        raise ValueError(f"finetune: evaluations must be >= 1, got {evaluations}")
    if head_init not in HEAD_INITS:
        raise ValueError(f"finetune: head_init must be one of {HEAD_INITS}, got '{head_init}'")


@dataclass
class _Trainer:
    """The fine-tuning loop's parts: the model and its optimizer, the training augmentation and
    the eval transform, the loss, the autocast context, and whether the backbone is frozen
    (it then stays in eval mode)."""

    model: Classifier
    optimizer: torch.optim.Optimizer
    augment: Callable[[Tensor], Tensor]
    preprocess: Callable[[Tensor], Tensor]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    autocast: Callable[[], torch.autocast]
    frozen_backbone: bool
    semi: FixMatch | None = None

    @classmethod
    def create(
        cls,
        model: Classifier,
        augment: Callable[[Tensor], Tensor],
        preprocess: Callable[[Tensor], Tensor],
        *,
        lr: float,
        backbone_lr: float | None,
        weight_decay: float,
        class_weight: Tensor | None,
        label_smoothing: float,
        precision: str,
    ) -> _Trainer:
        """SGD on ``model``, moved to its backbone's device (``backbone_lr`` None: backbone
        frozen), weighted cross-entropy, bf16 autocast when ``precision`` is "bf16-mixed"."""
        device = next(model.backbone.parameters()).device
        model.to(device)
        weight = None if class_weight is None else class_weight.to(device)
        return cls(
            model, _optimizer(model, lr, backbone_lr, weight_decay), augment, preprocess,
            loss_fn=partial(F.cross_entropy, weight=weight, label_smoothing=label_smoothing),
            autocast=partial(
                torch.autocast, device.type, dtype=torch.bfloat16,
                enabled=precision == "bf16-mixed",
            ),
            frozen_backbone=backbone_lr is None,
        )  # fmt: skip

    def run(
        self,
        total: int,
        evaluations: int,
        batches: Iterator[Tensor],
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor],
        progress: Progress | None,
        unlabeled: Iterator[Tensor] | None = None,
        budget_s: float | None = None,
        test_time_views: str = "none",
    ) -> _Selection:
        """``total`` warm-up + cosine steps on ``batches`` of ``train`` (and with FixMatch
        ``unlabeled`` batches of ``self.semi.unlabeled``), scored on ``val`` ``evaluations``
        times, evenly spaced in progress (logits averaged over ``test_time_views``): every
        score and the best step's weights. With ``budget_s`` progress is
        max(step / total, elapsed / budget_s) (the clock counting from ``BUDGET_GRACE`` of the
        budget on) and the run ends at 1."""
        device = next(self.model.parameters()).device
        num_classes = self.model.head.out_features
        base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        selection = _Selection()
        rates: list[float] = []
        evaluated = 0  # evaluations done; the next is due at progress (evaluated + 1) / evaluations
        start, time_progress = time.monotonic(), 0.0
        task = resolve_progress(progress).task("fine-tune", total, "steps")
        with heap_allocations(device.type == "cpu"):  # freed activations reused, not re-faulted
            for step in range(1, total + 1):
                if budget_s is not None:
                    spent = (time.monotonic() - start) / budget_s
                    time_progress = min(1.0, spent) if spent >= BUDGET_GRACE else 0.0
                # warm-up and cosine both run on progress: a budget shorter than the plan
                # compresses the whole schedule, warm-up included
                at = max(step - 1, time_progress * total)
                factor = warmup_cosine(at, total, max(1, total // 20))
                for g, base in zip(self.optimizer.param_groups, base_lrs, strict=True):
                    g["lr"] = base * factor
                idx = next(batches)
                views = None
                if unlabeled is not None and self.semi is not None:
                    raw = self.semi.unlabeled[next(unlabeled)].to(device)
                    views = (self.semi.weak(raw), self.semi.strong(raw))
                mask_rate = self.step(
                    self.augment(train[0][idx].to(device)), train[1][idx].to(device), views
                )
                if mask_rate is not None:
                    rates.append(mask_rate)
                done = max(step / total, time_progress)
                if step == total or done >= 1.0 or done >= (evaluated + 1) / evaluations:
                    evaluated = min(evaluations, math.floor(done * evaluations + 1e-9))
                    with self.autocast():
                        logits = _logits(self.model, val[0], self.preprocess,
                                         test_time_views=test_time_views,
                                         progress=progress)  # fmt: skip
                    preds = logits.argmax(1)
                    selection.record(step, macro_f1(val[1], preds, num_classes), self.model)
                    if rates:  # FixMatch: the mean share above the threshold since the last
                        selection.mask_rates.append((step, sum(rates) / len(rates)))
                        rates = []
                selection.steps_run = step
                task.update(step, selection.status())
                if done >= 1.0:
                    break
        task.close()
        return selection

    def step(
        self, x: Tensor, y: Tensor, views: tuple[Tensor, Tensor] | None = None
    ) -> float | None:
        """One training step on the batch (x, y); a frozen backbone stays in eval mode. With
        FixMatch ``views`` = (weak, strong) views of an unlabelled batch: one forward pass over
        labelled + weak + strong (BatchNorm sees them together, as the paper's code) and
        loss = CE(labelled) + weight * ``fixmatch_loss``; returns the share of the unlabelled
        batch above the threshold (None without FixMatch)."""
        self.model.train()
        if self.frozen_backbone:
            self.model.backbone.eval()
        with self.autocast():
            logits = self.model(x if views is None else torch.cat([x, *views]))
        mask_rate = None
        if views is None or self.semi is None:
            loss = self.loss_fn(logits.float(), y)
        else:
            labelled, weak, strong = logits.float().split(
                [x.shape[0], *(v.shape[0] for v in views)]
            )
            unlabeled_loss, mask = fixmatch_loss(weak, strong, self.semi.threshold)
            loss = self.loss_fn(labelled, y) + self.semi.weight * unlabeled_loss
            mask_rate = float(mask.float().mean())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return mask_rate


@dataclass
class _Selection:
    """Every (step, val macro-F1) so far and the best step's weights."""

    step: int = 0
    score: float = -1.0
    state: dict[str, Tensor] | None = None
    history: list[tuple[int, float]] = field(default_factory=list)
    mask_rates: list[tuple[int, float]] = field(default_factory=list)
    steps_run: int = 0

    def record(self, step: int, score: float, model: nn.Module) -> None:
        self.history.append((step, score))
        if score > self.score:
            self.step, self.score = step, score
            self.state = copy.deepcopy(model.state_dict())

    def status(self) -> str:
        """The latest and the best val score, for progress lines ("" before the first)."""
        if not self.history:
            return ""
        step, score = self.history[-1]
        return (
            f"val macro-F1 {score:.3f} at step {step} (best {self.score:.3f} at step {self.step})"
        )
