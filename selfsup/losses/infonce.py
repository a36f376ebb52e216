"""MoCo's InfoNCE against a queue of negative keys."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss


@float32_loss
def infonce_queue_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE with one positive key per query and the queue's keys as negatives.

    He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
    eq. 1:  L_q = -log exp(q.k+/t) / (exp(q.k+/t) + sum_{k- in queue} exp(q.k-/t)),
    averaged over the batch. MoCo v2 (Chen et al. 2020) uses t = 0.2.

    q: [B, D] queries (gradient flows), k: [B, D] keys from the momentum encoder (detached here),
    queue: [K, D] L2-normalised earlier keys (no gradient). q and k are L2-normalised here.
    Distributed: a per-query mean; the queue is filled with keys gathered from all ranks.
    """
    if q.shape != k.shape or q.shape[-1] != queue.shape[-1]:
        raise ValueError(
            f"infonce_queue_loss needs q, k of shape [B, D] and queue [K, D], got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(queue.shape)}"
        )
    q = F.normalize(q, dim=-1)
    k = F.normalize(k.detach(), dim=-1)
    positive = (q * k).sum(dim=-1, keepdim=True)  # [B, 1]
    negative = q @ queue.detach().to(q.dtype).T  # [B, K]
    logits = torch.cat([positive, negative], dim=1) / temperature
    targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, targets)
