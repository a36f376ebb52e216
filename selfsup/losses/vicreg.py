"""VICReg's variance-invariance-covariance regularisation of two views' embeddings."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss
from selfsup.runtime.distributed import gather


class VICRegTerms(NamedTuple):
    """The three terms of the VICReg loss (scalars), before their weights."""

    invariance: Tensor  # s(Z, Z'): mean squared distance between paired embeddings
    variance: Tensor  # (v(Z) + v(Z')) / 2: hinge on each dimension's std
    covariance: Tensor  # c(Z) + c(Z'): squared off-diagonal covariances / D

    def weighted(self, lambda_param: float, mu_param: float, nu_param: float) -> Tensor:
        """lambda * s + mu * v + nu * c: the loss the paper minimises."""
        return (
            lambda_param * self.invariance + mu_param * self.variance + nu_param * self.covariance
        )


def _variance_hinge(z: Tensor, gamma: float, eps: float) -> Tensor:
    std = (z.var(dim=0) + eps).sqrt()  # unbiased variance, as the authors' code
    return F.relu(gamma - std).mean()


def _off_diagonal_covariance(z: Tensor) -> Tensor:
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)  # [D, D]
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d


@float32_loss
def vicreg_terms(z1: Tensor, z2: Tensor, *, gamma: float = 1.0, eps: float = 1e-4) -> VICRegTerms:
    """The invariance, variance and covariance terms of VICReg.

    Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", ICLR 2022, eq. 1-5. For embeddings Z [N, D] of a batch:
        v(Z) = 1/D sum_j max(0, gamma - sqrt(Var(z^j) + eps))      (Var unbiased over the batch)
        c(Z) = 1/D sum_{i != j} C(Z)_ij^2,   C(Z) = (Z - mean)^T (Z - mean) / (N - 1)
        s(Z, Z') = 1/N sum_b ||z_b - z'_b||^2 / D                 (mean squared error)
    The variance term is returned as (v(Z) + v(Z')) / 2 and the covariance as c(Z) + c(Z'),
    as the authors' code (the paper's eq. 6 writes mu [v(Z) + v(Z')]; the published 25/25/1
    weights were tuned with the code's halved sum). s here is also divided by D (``mse_loss``),
    as in the code.

    z1, z2: [B, D] embeddings (the expander's outputs) of two views of the same B images.

    Distributed: v and c need the statistics of the global batch, so both embeddings are
    gathered with gradient and every rank computes them in full (``gather``'s backward sums
    the ranks' gradients, which DDP's average undoes); s is the mean over this rank's rows,
    so with equal batches the mean over ranks is the global mean. Either way DDP's averaged
    gradient equals the single-process gradient of the global batch.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"vicreg_loss needs z1 and z2 of equal shape [B, D], got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )
    invariance = F.mse_loss(z1, z2)
    z1, z2 = gather(z1), gather(z2)
    if z1.shape[0] < 2:
        raise ValueError("vicreg_loss needs a global batch of at least 2 samples")
    variance = (_variance_hinge(z1, gamma, eps) + _variance_hinge(z2, gamma, eps)) / 2
    covariance = _off_diagonal_covariance(z1) + _off_diagonal_covariance(z2)
    return VICRegTerms(invariance, variance, covariance)


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    lambda_param: float = 25.0,
    mu_param: float = 25.0,
    nu_param: float = 1.0,
    *,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg: L = lambda s(Z, Z') + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z')), a scalar.

    Bardes, Ponce & LeCun, ICLR 2022, eq. 6, with the paper's lambda = mu = 25, nu = 1,
    gamma = 1, eps = 1e-4; the terms and the distributed rule are ``vicreg_terms``'.
    z1, z2: [B, D]. Computed in float32 whatever the autocast.
    """
    return vicreg_terms(z1, z2, gamma=gamma, eps=eps).weighted(lambda_param, mu_param, nu_param)
