"""SimSiam (Chen & He 2021)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from selfsup.heads import mlp
from selfsup.losses import negative_cosine
from selfsup.methods.base import LossOutput, Method, embedding_std, register


@register("simsiam")
class SimSiam(Method):
    """SimSiam: a predictor and a stop-gradient, no negatives, no momentum encoder.

    Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, eq. 1-3. With
    z = projector(backbone(x)) and p = predictor(z), D(p, z) = -cos(p, stopgrad(z)) and
        L = D(p1, z2) / 2 + D(p2, z1) / 2.
    Shapes: views 2 x [B, C, H, W]; z, p [B, proj_dim].

    Defaults (paper, ImageNet): projector 3 Linear layers of 2048 with BN on every layer
    including the output; predictor bottleneck 2048 -> 512 -> 2048 with no BN on its output.
    """

    view_recipe = "simclr"  # SimSiam uses MoCo v2's augmentations, the SimCLR recipe with blur

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 2048,
        pred_hidden_dim: int = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, feature_size, **kwargs)
        proj_hidden_dim, proj_dim, pred_hidden_dim = self.head_sizes(
            proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim
        ).values()
        self.projector = mlp(
            self.feature_dim, proj_hidden_dim, proj_dim, num_layers=3, last_norm=True
        )
        self.predictor = mlp(proj_dim, pred_hidden_dim, proj_dim)

    def project_and_predict(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Projections z and predictions p of every view (equal-size views in one pass)."""
        z = self.backbone_forward(self.backbone_forward(views), self.projector)
        return z, self.backbone_forward(z, self.predictor)

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 2:
            raise ValueError(f"simsiam needs 2 views, got {len(views)}")
        (z1, z2), (p1, p2) = self.project_and_predict(views)
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        return LossOutput(loss, logs={"collapse_std": embedding_std(z1)})
