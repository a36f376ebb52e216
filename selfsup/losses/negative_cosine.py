"""Losses of the predictor + stop-gradient family: SimSiam's negative cosine and BYOL's."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss


@float32_loss
def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), averaged over the batch.

    Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, eq. 1 and 3.
    p: [B, D] predictions, z: [B, D] targets (no gradient reaches z). Returns a scalar in [-1, 1].
    Distributed: a per-sample mean, so no gather is needed.
    """
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


@float32_loss
def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's normalised mean squared error ||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z).

    Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, eq. 2. p: [B, D] online predictions,
    z: [B, D] target projections (stop-gradient: no gradient reaches z). Returns the batch mean.
    """
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()
