"""DCL and DCLW (Yeh et al. 2022): SimCLR with the decoupled contrastive loss."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from selfsup.losses.dcl import dcl_loss
from selfsup.methods.base import check_positive, register
from selfsup.methods.simclr import SimCLR


@register("dcl")
class DCL(SimCLR):
    """DCL: SimCLR's views and projector, trained with the decoupled contrastive loss.

    Yeh, Hong, Hsu, Liu, Chen & LeCun, "Decoupled Contrastive Learning", ECCV 2022, eq. 6
    (``selfsup.losses.dcl_loss``): for anchor z_i^k with positive z_i^(3-k),
        L_i^(k) = -sim(z_i^1, z_i^2)/t + log sum_{l in {1,2}, j != i} exp(sim(z_i^k, z_j^l)/t),
    NT-Xent without the positive in the denominator, averaged over the 2N anchors (negatives
    gathered across ranks). Shapes: views 2 x [B, C, H, W]; z1, z2 [B, proj_dim].

    Defaults: SimCLR's projector (Linear-BN-ReLU-Linear, 2048 -> 128, the paper's "SimCLR with
    DCL" keeps SimCLR's architecture) and temperature 0.1 (lightly's and the reference code's
    default; the paper reports DCL as much less sensitive to t than SimCLR).
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        temperature: float = 0.1,
        **kwargs: Any,
    ) -> None:
        check_positive(self.method_name, temperature=temperature)
        super().__init__(backbone, feature_size, temperature=temperature, **kwargs)
        self.sigma: float | None = None  # DCLW's weighting; None: every positive weighs 1

    def pair_loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        return dcl_loss(z1, z2, self.temperature, sigma=self.sigma)


@register("dclw")
class DCLW(DCL):
    """DCLW: DCL with the negative von Mises-Fisher weight on each positive term.

    Yeh et al. 2022, Sec. 3 (``selfsup.losses.dcl.vmf_weights``):
        w_i = 2 - exp(sim(z_i^1, z_i^2)/sigma) / mean_j exp(sim(z_j^1, z_j^2)/sigma),
    so easy (already close) positive pairs weigh less and hard ones up to 2 (mean 1 over the
    batch, detached). Defaults: sigma 0.5 (the paper's), temperature 0.1 as DCL.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        sigma: float = 0.5,
        **kwargs: Any,
    ) -> None:
        check_positive("dclw", sigma=sigma)
        super().__init__(backbone, feature_size, **kwargs)
        self.sigma = sigma
