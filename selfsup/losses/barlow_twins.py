"""Barlow Twins' redundancy-reduction loss on the cross-correlation matrix."""

from __future__ import annotations

from torch import Tensor

from selfsup.losses.precision import float32_loss
from selfsup.runtime.distributed import gather

_BATCH_NORM_EPS = 1e-5  # as the paper's nn.BatchNorm1d(affine=False)


def _batch_normalise(z: Tensor) -> Tensor:
    return (z - z.mean(dim=0)) / (z.var(dim=0, unbiased=False) + _BATCH_NORM_EPS).sqrt()


@float32_loss
def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_param: float = 5e-3) -> Tensor:
    """Barlow Twins: push the cross-correlation of the two views' embeddings to the identity.

    Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
    ICML 2021, eq. 1-2:
        C_ij = sum_b zn1_bi zn2_bj / N,  zn = z normalised per dimension over the batch
               (mean 0, biased variance 1, as BatchNorm1d without affine),
        L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2,   lambda = 5e-3.

    z1, z2: [B, D] projections of two views. Returns a scalar (not divided by D).

    Distributed: the normalisation statistics and C need the global batch, so both embeddings
    are gathered (with gradient) and every rank computes the full loss; ``gather``'s backward
    sums the ranks' gradients, which DDP's average turns back into the single-process gradient.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"barlow_twins_loss needs z1 and z2 of equal shape [B, D], got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )
    z1, z2 = gather(z1), gather(z2)
    if z1.shape[0] < 2:
        raise ValueError("barlow_twins_loss needs a global batch of at least 2 samples")
    c = _batch_normalise(z1).T @ _batch_normalise(z2) / z1.shape[0]  # [D, D]
    on_diagonal = (1 - c.diagonal()).pow(2).sum()
    off_diagonal = c.pow(2).sum() - c.diagonal().pow(2).sum()
    return on_diagonal + lambda_param * off_diagonal
