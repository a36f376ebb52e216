"""Ensembles of fine-tuned models: one backbone fine-tuned with several seeds, the members'
logits averaged (Lakshminarayanan et al. 2017, "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles"; with few labels the seed moves the score more than most
settings, and the average is better than a typical member).

An ensemble is built as one network and one head, so it trains nothing new and saves, loads,
calibrates and predicts as any fine-tuned classifier: ``ConcatFeatures`` puts the members'
features side by side, [N, D_1 + ... + D_M], and ``mean_logit_head`` is one Linear whose
weight is [W_1 ... W_M] / M and bias (b_1 + ... + b_M) / M, so its logits are exactly the
mean of the members' logits W_m f_m + b_m.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.eval.finetune import (
    Classifier,
    FinetuneResult,
    FinetuneSearch,
    check_minutes,
    finetune_lr_search,
)
from selfsup.eval.metrics import macro_f1
from selfsup.runtime.progress import Progress, resolve_progress


class ConcatFeatures(nn.Module):
    """Several feature networks side by side: images -> [N, sum of their ``feature_dim``]."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("ConcatFeatures: give at least one network")
        self.members = nn.ModuleList(members)
        self.feature_dim = sum(int(m.feature_dim) for m in members)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([member(x) for member in self.members], dim=1)


@torch.no_grad()
def mean_logit_head(heads: Sequence[nn.Linear]) -> nn.Linear:
    """One Linear(sum D_m, C) on the concatenated features whose logits are the mean of the
    ``heads``' logits: weight [W_1 ... W_M] / M, bias mean of b_m."""
    if not heads or len({h.out_features for h in heads}) != 1:
        raise ValueError("mean_logit_head: give heads with the same number of classes")
    head = nn.Linear(sum(h.in_features for h in heads), heads[0].out_features)
    head = head.to(heads[0].weight.device, heads[0].weight.dtype)
    head.weight.copy_(torch.cat([h.weight for h in heads], dim=1) / len(heads))
    head.bias.copy_(torch.stack([h.bias for h in heads]).mean(0))
    return head


def ensemble_classifier(models: Sequence[Classifier]) -> Classifier:
    """The classifier whose logits are the mean of ``models``' logits (their networks are
    used, not copied)."""
    network = ConcatFeatures([m.backbone for m in models])
    head = mean_logit_head([m.head for m in models])
    return Classifier(network, head.out_features, head).to(head.weight.device)


@dataclass
class FinetuneEnsemble:
    """``finetune_ensemble``'s outcome: ``result`` (the ensemble as a ``FinetuneResult``, or
    the single member's when there is one), ``seeds``, and each member's learning-rate search
    (``members``: its chosen step, learning rates and val score)."""

    result: FinetuneResult
    seeds: list[int]
    members: list[FinetuneSearch]

    def selection_record(self) -> dict[str, Any]:
        """What was chosen on val, for a protocol record: the step and epoch (None for an
        ensemble), the val macro-F1, the steps run, the test-time views, and the learning
        rates (with every candidate when several were tried) or, for an ensemble, per member
        its seed, step, learning rates, val macro-F1, steps run (and FixMatch mask rates)."""
        result = self.result
        record: dict[str, Any] = {
            "step": result.step, "epoch": result.epoch, "val_macro_f1": result.val_macro_f1,
            "steps_run": result.steps_run, "test_time_views": result.test_time_views,
        }  # fmt: skip
        if len(self.members) == 1:
            search = self.members[0]
            record.update(lr=search.lr, backbone_lr=search.backbone_lr)
            if len(search.candidates) > 1:
                record["lr_candidates"] = search.candidates
            return record
        record["ensemble"] = []
        for seed, search in zip(self.seeds, self.members, strict=True):
            member = search.result
            record["ensemble"].append({
                "seed": seed, "step": member.step, "lr": search.lr,
                "backbone_lr": search.backbone_lr, "val_macro_f1": member.val_macro_f1,
                "steps_run": member.steps_run,
                **({"mask_rate": member.mask_rates} if member.mask_rates else {}),
                **({"lr_candidates": search.candidates} if len(search.candidates) > 1 else {}),
            })  # fmt: skip
        return record


def finetune_ensemble(
    backbone: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    val_images: Tensor,
    val_labels: Tensor,
    *,
    seeds: Sequence[int],
    preprocess: Any,
    num_classes: int,
    test_time_views: str = "none",
    max_minutes: float | None = None,
    progress: Progress | None = None,
    **search: Any,
) -> FinetuneEnsemble:
    """Fine-tune ``backbone`` once per seed (each a ``finetune_lr_search`` with the keywords
    ``search``: its step and learning rates chosen on val) and average the members' logits
    (``ensemble_classifier``); the ensemble's val macro-F1 is scored with the same
    ``test_time_views``. ``max_minutes`` is the budget of the whole ensemble, split evenly
    between the members. With one seed the result is that member's."""
    seeds = check_seeds(seeds)
    share = None
    if max_minutes is not None:
        share = check_minutes(max_minutes, "finetune: max_minutes") / len(seeds)
    members = []
    for i, seed in enumerate(seeds):
        if len(seeds) > 1:
            resolve_progress(progress).note(f"ensemble member {i + 1} of {len(seeds)}: seed {seed}")
        members.append(finetune_lr_search(
            backbone, train_images, train_labels, val_images, val_labels, seed=seed,
            preprocess=preprocess, num_classes=num_classes, test_time_views=test_time_views,
            max_minutes=share, progress=progress, **search,
        ))  # fmt: skip
    if len(members) == 1:
        return FinetuneEnsemble(members[0].result, seeds, members)
    model = ensemble_classifier([m.result.model for m in members]).eval()
    steps = sum(m.result.steps_run for m in members)
    result = FinetuneResult(model, None, None, 0.0, steps_run=steps,
                            test_time_views=test_time_views)  # fmt: skip
    predictions = result.logits(val_images, preprocess, progress=progress).argmax(1)
    result.val_macro_f1 = macro_f1(val_labels, predictions, num_classes)
    return FinetuneEnsemble(result, seeds, members)


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as a list of distinct integers (at least one); else a ValueError."""
    values = [int(s) for s in seeds]
    if not values or len(set(values)) != len(values):
        raise ValueError(f"finetune: ensemble seeds must be distinct, at least one, got {values}")
    return values
