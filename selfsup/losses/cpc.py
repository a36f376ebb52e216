"""CPC's InfoNCE over a grid of patch encodings: each prediction picks its patch out of all the
patches of the (global) batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss
from selfsup.runtime.distributed import gather, local_rows


class CPCLoss(NamedTuple):
    """``cpc_infonce_with_accuracy``'s result (scalars)."""

    loss: Tensor  # the InfoNCE loss, mean over every prediction
    accuracy: Tensor  # detached: the fraction of predictions whose own patch scores highest


def _check(predictions: Tensor, targets: Tensor, shifts: Sequence[tuple[int, int]]) -> None:
    if targets.ndim != 4 or predictions.ndim != 5:
        raise ValueError(
            f"cpc_infonce needs predictions [B, S, D, H, W] and targets [B, D, H, W], got "
            f"{tuple(predictions.shape)} and {tuple(targets.shape)}"
        )
    b, s, d, h, w = predictions.shape
    if (b, d, h, w) != tuple(targets.shape) or s != len(shifts):
        raise ValueError(
            f"cpc_infonce: predictions {tuple(predictions.shape)} must be [B, S, D, H, W] for "
            f"targets {tuple(targets.shape)} = [B, D, H, W] and S = {len(shifts)} shifts"
        )
    for di, dj in shifts:
        if not (abs(di) < h and abs(dj) < w) or (di, dj) == (0, 0):
            raise ValueError(
                f"cpc_infonce: shift {(di, dj)} points to no other patch of a {h}x{w} grid"
            )


@float32_loss
def cpc_infonce_with_accuracy(
    predictions: Tensor, targets: Tensor, shifts: Sequence[tuple[int, int]]
) -> CPCLoss:
    """CPC's InfoNCE with every other patch of the global batch as a negative, and its accuracy.

    Henaff et al., "Data-Efficient Image Recognition with Contrastive Predictive Coding",
    ICML 2020, eq. 1-2 (van den Oord et al. 2018, eq. 4): the prediction zhat of patch
    (b, i + di, j + dj) made from the context at (b, i, j) scores every encoded patch z_l of the
    batch by a plain dot product (no temperature, no normalisation) and
        L = -log exp(zhat . z_{b, i+di, j+dj}) / sum_l exp(zhat . z_l),
    averaged over every prediction whose target lies on the grid (of every shift and image).
    The sum runs over all positions of all images, the positive included.

    predictions: [B, S, D, H, W], S predictions per grid position, prediction s aimed at the
    patch ``shifts[s]`` = (di, dj) rows and columns away; targets: [B, D, H, W], the encoded
    patches z. Returns (loss, accuracy), scalars.

    Distributed: the targets of all ranks are the candidates (``gather``, with gradient), the
    predictions stay local and every rank makes as many as the others (equal batches), so the
    mean of the ranks' losses is the loss of the global batch and DDP's averaged gradient is the
    single-process gradient.
    """
    _check(predictions, targets, shifts)
    batch, _, dim, height, width = predictions.shape
    candidates = gather(targets.permute(0, 2, 3, 1).reshape(batch * height * width, dim))
    first = local_rows(candidates.shape[0] // (height * width)).start
    images = torch.arange(batch, device=targets.device)[:, None, None] + first
    rows = torch.arange(height, device=targets.device)[None, :, None]
    columns = torch.arange(width, device=targets.device)[None, None, :]
    total = correct = predictions.new_zeros(())
    count = 0
    for s, (di, dj) in enumerate(shifts):  # a handful of grid shifts, never samples
        top, bottom = max(0, -di), height - max(0, di)
        left, right = max(0, -dj), width - max(0, dj)
        chosen = predictions[:, s, :, top:bottom, left:right].permute(0, 2, 3, 1)
        logits = chosen.reshape(-1, dim) @ candidates.T  # [B h w, G H W]
        positives = (
            images * height * width
            + (rows[:, top:bottom] + di) * width
            + columns[:, :, left:right]
            + dj
        ).reshape(-1)
        total = total + F.cross_entropy(logits, positives, reduction="sum")
        correct = correct + (logits.detach().argmax(dim=1) == positives).sum()
        count += positives.numel()
    return CPCLoss(total / count, correct.detach() / count)


def cpc_infonce(predictions: Tensor, targets: Tensor, shifts: Sequence[tuple[int, int]]) -> Tensor:
    """CPC's InfoNCE loss (a scalar): ``cpc_infonce_with_accuracy`` without the accuracy.

    predictions [B, S, D, H, W] aimed at ``shifts`` (S pairs (di, dj)), targets [B, D, H, W].
    """
    return cpc_infonce_with_accuracy(predictions, targets, shifts).loss
