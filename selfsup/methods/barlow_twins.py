"""Barlow Twins (Zbontar et al. 2021)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from selfsup.heads import mlp
from selfsup.losses import barlow_twins_loss
from selfsup.methods.base import LossOutput, Method, embedding_std, register


@register("barlow_twins")
class BarlowTwins(Method):
    """Barlow Twins: make the cross-correlation of two views' embeddings the identity.

    Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
    Reduction", ICML 2021, eq. 1: with z normalised per dimension over the (global) batch and
    C = z1n^T z2n / N,
        L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2,   lambda = 5e-3.
    Shapes: views 2 x [B, C, H, W]; z1, z2 [B, proj_dim]; C [proj_dim, proj_dim].

    Defaults (paper): projector of 3 Linear layers of 8192 (BN + ReLU after the first two), no
    extra loss scale, LARS with lr 0.2 per 256 images and weight decay 1.5e-6 (sec. 4; the
    trainer's SGD at lr 0.06 leaves the 4096-d cross-correlation far from the identity in a
    short run: docs/benchmarks.md). The augmentations are BYOL's.
    """

    view_recipe = "byol"
    optimizer_defaults = {"optimizer": "lars", "lr": 0.2, "weight_decay": 1.5e-6}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_hidden_dim: int = 8192,
        proj_dim: int = 8192,
        num_proj_layers: int = 3,
        lambda_param: float = 5e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, feature_size, **kwargs)
        proj_hidden_dim, proj_dim = self.head_sizes(
            proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim
        ).values()
        self.lambda_param = lambda_param
        self.projector = mlp(
            self.feature_dim, proj_hidden_dim, proj_dim, num_layers=num_proj_layers
        )

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 2:
            raise ValueError(f"barlow_twins needs 2 views, got {len(views)}")
        z1, z2 = self.backbone_forward(self.backbone_forward(views), self.projector)
        loss = barlow_twins_loss(z1, z2, self.lambda_param)
        return LossOutput(loss, logs={"collapse_std": embedding_std(z1)})
