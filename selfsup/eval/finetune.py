"""Few-label fine-tuning: backbone + linear head trained on a (stratified) fraction of labels.

The semi-supervised protocol of SimCLR (Chen et al. 2020, Sec. 6: fine-tune on 1 % / 10 % of
the labels) with selection on the validation split: after every epoch the model scores macro-F1
on val; the best epoch's weights are returned. The test split never enters this module.
The backbone has its own (smaller) learning rate; the head starts from zero.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.eval.metrics import classification_metrics, macro_f1
from selfsup.train.optim import parameter_groups, warmup_cosine


def stratified_fraction(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Indices of a class-stratified random ``fraction`` of ``labels`` (at least one per class).

    Deterministic for a seed; sorted. labels: [N] int64.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in labels.unique():
        members = (labels == cls).nonzero().squeeze(1)
        count = max(1, round(fraction * members.numel()))
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


class Classifier(nn.Module):
    """Backbone + linear head: what fine-tuning trains and returns."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


@dataclass
class FinetuneResult:
    model: Classifier
    epoch: int
    val_macro_f1: float
    history: list[float] = field(default_factory=list)

    @torch.no_grad()
    def predict(self, images: Tensor, preprocess: Callable[[Tensor], Tensor], batch_size=512):
        """Class scores [N, C] (eval mode) for raw images."""
        self.model.eval()
        device = next(self.model.parameters()).device
        out = [
            self.model(preprocess(images[i : i + batch_size].to(device))).float().softmax(-1).cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(out)

    def evaluate(self, images, labels, preprocess, class_names=None) -> dict:
        scores = self.predict(images, preprocess)
        return classification_metrics(
            labels, None, scores.shape[1], class_names=class_names, scores=scores
        )


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
    batch_size: int = 256,
    lr: float = 0.1,
    backbone_lr: float | None = 0.01,
    weight_decay: float = 5e-4,
    class_balanced: bool = True,
    precision: str = "32-true",
    seed: int = 0,
) -> FinetuneResult:
    """Fine-tune a copy of ``backbone`` with a linear head; pick the epoch on val macro-F1.

    ``augment`` maps a raw batch to one augmented float view; ``preprocess`` is the
    deterministic eval transform. ``backbone_lr=None`` freezes the backbone (a linear probe
    trained with augmentation); otherwise SGD with momentum, warm-up + cosine over all steps.
    ``class_balanced`` weights the loss by inverse class frequency (few labels, 59 % "none").
    """
    if train_images.shape[0] == 0:
        raise ValueError("finetune: no training images")
    torch.manual_seed(seed)
    model = Classifier(copy.deepcopy(backbone), num_classes)
    device = next(backbone.parameters()).device
    model.to(device)
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
    optimizer = torch.optim.SGD(groups, momentum=0.9)
    batch_size = min(batch_size, train_images.shape[0])
    steps_per_epoch = math.ceil(train_images.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    weight = None
    if class_balanced:
        counts = torch.bincount(train_labels, minlength=num_classes).float()
        weight = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), 0.0)
        weight = weight.to(device)
    use_bf16 = precision == "bf16-mixed"
    generator = torch.Generator().manual_seed(seed)
    best_state, best_epoch, best_score, history = None, -1, -1.0, []
    step = 0
    for epoch in range(epochs):
        model.train()
        if backbone_lr is None:
            model.backbone.eval()
        order = torch.randperm(train_images.shape[0], generator=generator)
        for start in range(0, order.numel(), batch_size):
            idx = order[start : start + batch_size]
            if idx.numel() < 2:  # BatchNorm needs two samples
                continue
            factor = warmup_cosine(step, total, steps_per_epoch)
            for g, base in zip(optimizer.param_groups, base_lrs, strict=True):
                g["lr"] = base * factor
            x = augment(train_images[idx].to(device))
            y = train_labels[idx].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        result = FinetuneResult(model, epoch, 0.0)
        preds = result.predict(val_images, preprocess).argmax(1)
        score = macro_f1(val_labels, preds, num_classes)
        history.append(score)
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return FinetuneResult(model.eval(), best_epoch, best_score, history)
