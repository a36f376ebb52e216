"""BYOL (Grill et al. 2020)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from selfsup.heads import mlp
from selfsup.losses import byol_loss
from selfsup.methods.base import LossOutput, embedding_std, register
from selfsup.methods.momentum import MomentumMethod


@register("byol")
class BYOL(MomentumMethod):
    """BYOL: an online network predicts a slow-moving target network's projection.

    Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
    NeurIPS 2020, eq. 2 and sec. 3.2. With online projection z, prediction p = q(z) and target
    projection z' (stop-gradient),
        L = ||p1/|p1| - z'2/|z'2| ||^2 + ||p2/|p2| - z'1/|z'1| ||^2   (each 2 - 2 cos),
    summed over the two directions as the paper; the target follows
        xi <- tau xi + (1 - tau) theta,  tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2,
    from ``base_momentum`` 0.996 to ``final_momentum`` 1 over training.

    Shapes: views 2 x [B, C, H, W]; z, p, z' [B, proj_dim].

    Defaults (paper): projector and predictor Linear(4096)-BN-ReLU-Linear(256).
    """

    view_recipe = "byol"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        pred_hidden_dim: int = 4096,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, feature_size, **kwargs)
        proj_hidden_dim, proj_dim, pred_hidden_dim = self.head_sizes(
            proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim
        ).values()
        self.projector = mlp(self.feature_dim, proj_hidden_dim, proj_dim)
        self.predictor = mlp(proj_dim, pred_hidden_dim, proj_dim)
        self.add_momentum_targets(
            {"target_backbone": "backbone", "target_projector": "projector"},
            base_momentum,
            final_momentum,
        )

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 2:
            raise ValueError(f"byol needs 2 views, got {len(views)}")
        z = self.backbone_forward(self.backbone_forward(views), self.projector)
        p1, p2 = self.backbone_forward(z, self.predictor)
        with torch.no_grad():
            t1, t2 = self.backbone_forward(
                self.backbone_forward(views, self.target_backbone), self.target_projector
            )
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return LossOutput(
            loss, logs={"collapse_std": embedding_std(z[0]), "momentum": self.momentum}
        )
