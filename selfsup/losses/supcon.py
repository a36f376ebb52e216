"""Supervised contrastive loss (SupCon), with SimCLR's positive for unlabelled samples."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.losses.nt_xent import two_view_logits
from selfsup.losses.precision import float32_loss
from selfsup.runtime.distributed import gather_no_grad

UNLABELLED = -1  # the label of a sample without one (any negative label counts as unlabelled)


@float32_loss
def supcon_loss(
    z1: Tensor,
    z2: Tensor,
    labels: Tensor | None = None,
    temperature: float = 0.1,
    base_temperature: float | None = None,
) -> Tensor:
    """SupCon's L^sup_out: every view of a sample of the same class is a positive.

    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, eq. 2. Over the 2N views I
    (both views of N images), with A(i) = I minus i and P(i) = {p in A(i): y_p = y_i}:
        L = 1/2N sum_i -1/|P(i)| sum_{p in P(i)} log softmax_{a in A(i)}(z_i.z_a/t)[p],
    z L2-normalised. The paper writes the sum over anchors; this is its mean (the official code's,
    and ``nt_xent_loss``'s), so the value does not grow with the batch.

    A sample labelled -1 (any negative label) is unlabelled: its only positive is its own other
    view, as in SimCLR, and it is never a positive of another sample. ``labels=None`` treats
    every sample so. Hence with all labels -1, or all labels distinct, the loss equals
    ``nt_xent_loss(z1, z2, temperature)`` exactly.

    ``base_temperature``: None (default) keeps eq. 2. The official code multiplies the loss by
    t / base_temperature (0.07 there); pass that value to reproduce it.

    z1, z2: [B, D] projections of the two views (row i of each is image i); labels: int [B] or
    None. Returns a scalar. The paper used t = 0.1.

    Distributed: embeddings are gathered with their gradient and labels without one; the local
    rows are anchors against all ranks' columns, so the mean of the ranks' losses is the
    global-batch loss and DDP's averaged gradient is the single-process gradient.
    """
    pairs = two_view_logits(z1, z2, temperature, "supcon_loss")
    local = z1.shape[0]
    if labels is None:
        labels = torch.full((local,), UNLABELLED, dtype=torch.long, device=z1.device)
    if labels.shape != (local,) or labels.is_floating_point():
        raise ValueError(
            f"supcon_loss needs integer labels of shape [{local}] (-1 = unlabelled), got "
            f"{labels.dtype} of shape {tuple(labels.shape)}"
        )
    labels = labels.to(device=z1.device, dtype=torch.long)
    column_labels = gather_no_grad(labels).repeat(2)  # [2G]
    anchor_labels = labels.repeat(2)  # [2B]
    is_self = pairs.mask(pairs.self_column)
    positive = (anchor_labels[:, None] == column_labels[None, :]) & (anchor_labels[:, None] >= 0)
    positive = (positive | pairs.mask(pairs.positive_column)) & ~is_self

    logits = pairs.logits
    log_prob = logits - logits.masked_fill(is_self, float("-inf")).logsumexp(1, keepdim=True)
    per_anchor = -(log_prob * positive).sum(1) / positive.sum(1)
    loss = per_anchor.mean()
    if base_temperature is not None:
        loss = loss * (temperature / base_temperature)
    return loss
