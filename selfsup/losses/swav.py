"""SwAV: prototype scores, Sinkhorn-Knopp codes over the global batch, swapped prediction."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss
from selfsup.runtime.distributed import is_distributed, world_size


def _all_reduce(x: Tensor, op: Any = dist.ReduceOp.SUM) -> Tensor:
    """``x`` reduced over ranks in place (sum by default); unchanged in one process."""
    if is_distributed():
        dist.all_reduce(x, op=op)
    return x


@float32_loss
def prototype_scores(z: Tensor, prototypes: Tensor) -> Tensor:
    """Cosine scores of projections against prototypes: normalize(z) @ prototypes.T.

    z: [B, D] projections (normalised here); prototypes: [K, D] (SwAV keeps them unit-norm).
    Returns [B, K] in float32 (under bf16 autocast the scores would lose the precision that
    exp(score / epsilon) in Sinkhorn-Knopp amplifies 20-fold).
    """
    return F.normalize(z, dim=-1) @ prototypes.T


@torch.no_grad()
@float32_loss
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """SwAV's soft codes: an equipartitioned assignment of samples to prototypes (no gradient).

    Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments", NeurIPS 2020, eq. 3 and sec. 3.1: Q* = Diag(u) exp(C^T Z / epsilon) Diag(v),
    the u, v rescalings found by ``iterations`` alternating normalisations so that every
    prototype gets 1/K of the mass and every sample 1/B; finally every sample's code is
    rescaled to sum to 1. Starts from the scores' total normalised to 1, as the official code.

    scores: [B, K] (sample . prototype). Returns codes [B, K], rows summing to 1, float32 (or
    float64 for float64 scores).

    Distributed: B is the GLOBAL batch. The sums over samples (the total mass and the
    per-prototype sums) are all-reduced, as in the official ``distributed_sinkhorn``, so rank
    r's codes are exactly the rows r holds of the codes computed on the concatenated batch.
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn_knopp needs scores [B, K], got shape {tuple(scores.shape)}")
    if epsilon <= 0 or iterations < 1:
        raise ValueError(
            f"sinkhorn_knopp needs epsilon > 0 and iterations >= 1, got {epsilon}, {iterations}"
        )
    # subtracting the global maximum changes no code (a constant factor the first
    # normalisation removes) and keeps exp finite for scores that are not cosines
    peak = _all_reduce(scores.max().clone(), dist.ReduceOp.MAX)
    q = torch.exp((scores - peak) / epsilon).T  # [K, B]: rows prototypes, columns samples
    num_prototypes, batch = q.shape[0], q.shape[1] * world_size()
    q /= _all_reduce(q.sum())
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True)) * num_prototypes
        q /= q.sum(dim=0, keepdim=True) * batch
    return (q * batch).T


@float32_loss
def swav_loss(scores: list[Tensor], codes: list[Tensor], temperature: float = 0.1) -> Tensor:
    """The swapped prediction: every crop predicts the codes of the other crops' assignments.

    Caron et al., NeurIPS 2020, eq. 1-2 and the multi-crop loss of sec. 3.2: with
    p_v = softmax(scores_v / temperature) and q_i the codes of assignment crop i,
        L = 1/G sum_{i < G} 1/(V - 1) sum_{v != i} mean_b -sum_k q_i[b, k] log p_v[b, k].

    scores: V tensors [B, K] (the G assignment crops first, then the others); codes: G tensors
    [B, K] for scores[0:G] (``sinkhorn_knopp``; used without gradient). Returns a scalar.
    Distributed: a per-sample mean, so the ranks' mean is the global-batch loss (the codes
    already come from the global batch).
    """
    if not 1 <= len(codes) <= len(scores) or len(scores) < 2:
        raise ValueError(
            f"swav_loss needs at least 2 crops and 1..{len(scores)} code tensors, "
            f"got {len(scores)} crops and {len(codes)} code tensors"
        )
    log_p = [F.log_softmax(s / temperature, dim=-1) for s in scores]
    total = log_p[0].new_zeros(())
    for i, q in enumerate(codes):
        q = q.detach().to(log_p[0].dtype)
        others = [-(q * lp).sum(dim=-1).mean() for v, lp in enumerate(log_p) if v != i]
        total = total + sum(others) / len(others)
    return total / len(codes)
