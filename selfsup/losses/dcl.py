"""Decoupled contrastive loss (DCL) and its von Mises-Fisher weighted form (DCLW)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.nt_xent import two_view_logits
from selfsup.losses.precision import float32_loss
from selfsup.runtime.distributed import gather_no_grad, local_rows


@torch.no_grad()
def vmf_weights(z1: Tensor, z2: Tensor, sigma: float = 0.5) -> Tensor:
    """DCLW weights w_i = 2 - exp(s_i/sigma) / mean_j exp(s_j/sigma), s_i = <z_i^1, z_i^2>.

    Yeh et al., "Decoupled Contrastive Learning", ECCV 2022, Sec. 3 (negative von Mises-Fisher
    weighting): a positive pair that is already close (an easy one) gets less than 1, a far one
    up to 2; the weights average 1 over the batch. Equal to 2 - N softmax_i(<z^1, z^2>/sigma).

    z1, z2: [B, D] (L2-normalised here). Returns [B], no gradient: w scales the positive term,
    it is not a path for gradient (as lightly's DCLWLoss). Distributed: the mean runs over the
    global batch (the pairs of all ranks), so the weights are those of one process.
    """
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    similarity = gather_no_grad((z1 * z2).sum(dim=-1) / sigma)  # [G]
    weights = 2 - similarity.shape[0] * similarity.softmax(dim=0)
    return weights[local_rows(similarity.shape[0])]


@float32_loss
def dcl_loss(
    z1: Tensor, z2: Tensor, temperature: float = 0.1, sigma: float | None = None
) -> Tensor:
    """DCL: NT-Xent without the positive in the denominator; with ``sigma``, DCLW.

    Yeh et al., "Decoupled Contrastive Learning", ECCV 2022, eq. 6. For anchor i of view k
    (k in {1, 2}) with positive z_i^(3-k) and sim the cosine similarity:
        L_i^(k) = -w_i sim(z_i^1, z_i^2)/t + log sum_{l in {1,2}, j != i} exp(sim(z_i^k, z_j^l)/t),
    w_i = 1 (DCL) or ``vmf_weights(z1, z2, sigma)`` (DCLW), averaged over all 2N anchors (both
    views, as NT-Xent here; the paper sums them, the reference code sums the two directions).
    Removing the positive from the denominator removes InfoNCE's negative-positive coupling,
    the factor that shrinks the gradient when the batch is small or the pair easy.

    z1, z2: [B, D] projections of the two views (row i of z1 pairs with row i of z2).
    Returns a scalar; it can be negative. Defaults: t = 0.1, DCLW's sigma = 0.5.

    Distributed: the local rows are anchors against the columns of all ranks (``gather``), so
    the mean of the ranks' losses is the loss of the global batch and DDP's averaged gradient
    equals the single-process gradient.
    """
    pairs = two_view_logits(z1, z2, temperature, "dcl_loss")
    positive = pairs.logits[pairs.rows, pairs.positive_column]  # [2B]
    if sigma is not None:
        positive = positive * vmf_weights(z1, z2, sigma).repeat(2)
    # decoupled: neither the anchor itself nor its positive is a negative
    excluded = pairs.mask(pairs.self_column, pairs.positive_column)
    negative = pairs.logits.masked_fill(excluded, float("-inf")).logsumexp(dim=1)
    return (negative - positive).mean()
