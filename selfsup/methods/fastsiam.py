"""FastSiam (Pototzky et al. 2022)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.losses import negative_cosine
from selfsup.methods.base import LossOutput, embedding_std, register
from selfsup.methods.simsiam import SimSiam
from selfsup.views import FASTSIAM_VIEWS


@register("fastsiam")
class FastSiam(SimSiam):
    """FastSiam: SimSiam with K + 1 views, each predicting the mean of the others' projections.

    Pototzky, Sultan & Schmidt-Thieme, "FastSiam: Resource-Efficient Self-supervised Learning on
    a Single GPU", GCPR 2022. The averaged target is less noisy than one view's projection, so
    training converges in fewer epochs at small batch sizes. Symmetric form used here, with
    V = ``num_views`` (K + 1 = 4 in the paper), D(p, z) = -cos(p, stopgrad(z)):
        L = (1 / V) sum_i D(p_i, (1 / (V - 1)) sum_{j != i} z_j).
    Shapes: views V x [B, C, H, W]; z_i, p_i [B, proj_dim]. Projector and predictor as SimSiam.
    """

    view_recipe = "fastsiam"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        num_views: int = FASTSIAM_VIEWS,
        **kwargs: Any,
    ) -> None:
        if num_views < 2:
            raise ValueError(f"fastsiam: num_views must be >= 2, got {num_views}")
        super().__init__(backbone, feature_size, **kwargs)
        self.num_views = num_views

    @classmethod
    def view_overrides(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        return {"num_views": arguments["num_views"]}

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != self.num_views:
            raise ValueError(f"fastsiam needs num_views={self.num_views} views, got {len(views)}")
        z, p = self.project_and_predict(views)
        targets = torch.stack(z).detach()  # [V, B, D]
        total = targets.sum(dim=0)
        others = len(views) - 1
        loss = sum(
            negative_cosine(p_i, (total - z_i) / others)
            for p_i, z_i in zip(p, targets, strict=True)
        )
        return LossOutput(loss / len(views), logs={"collapse_std": embedding_std(z[0])})
