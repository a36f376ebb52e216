"""MoCo v3's contrastive loss: InfoNCE against the keys of the whole (gathered) batch."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss
from selfsup.runtime.distributed import gather_no_grad, local_rows


@float32_loss
def mocov3_contrastive_loss(q: Tensor, k: Tensor, temperature: float = 1.0) -> Tensor:
    """MoCo v3's ctr(q, k): in-batch InfoNCE, key i the positive of query i, scaled by 2t.

    Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers",
    ICCV 2021, eq. 1 and Alg. 1. With q, k L2-normalised and N the global batch,
        ctr(q, k) = 2t * (1/N) sum_i -log exp(q_i.k_i/t) / sum_{j=1..N} exp(q_i.k_j/t),
    the cross-entropy of the logits q k^T / t with the positives on the diagonal, times 2t
    as in the paper's Alg. 1 (so the value depends on t beyond the logits). MoCo v3 sums both
    directions: ctr(q1, k2) + ctr(q2, k1). The paper's t: 1.0 for ResNet-50, 0.2 for ViT.

    q: [B, D] queries (predictor outputs; gradient flows). k: [B, D] keys from the momentum
    encoder (detached here). Returns a scalar. Unlike SimCLR's NT-Xent the negatives are the
    other keys only (not the other queries), N - 1 per query.

    Distributed: the keys of all ranks are gathered (no gradient: they are momentum keys) and
    the local queries' positives are this rank's rows of them; each rank's loss is the mean
    over its queries, so the mean over ranks is the loss of the global batch and DDP's averaged
    gradient equals the single-process gradient.
    """
    if q.shape != k.shape or q.ndim != 2:
        raise ValueError(
            f"mocov3_contrastive_loss needs q and k of equal shape [B, D], got "
            f"{tuple(q.shape)} and {tuple(k.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"mocov3_contrastive_loss: temperature must be > 0, got {temperature}")
    q = F.normalize(q, dim=-1)
    keys = gather_no_grad(F.normalize(k.detach(), dim=-1))  # [N, D]
    logits = q @ keys.T / temperature  # [B, N]
    positives = torch.arange(q.shape[0], device=q.device) + local_rows(keys.shape[0]).start
    return F.cross_entropy(logits, positives) * (2 * temperature)
