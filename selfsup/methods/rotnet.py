"""RotNet (Gidaris et al. 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.heads import mlp
from selfsup.methods.base import LossOutput, Method, register
from selfsup.views import NUM_ROTATIONS


@register("rotnet")
class RotNet(Method):
    """RotNet: predict which of 4 rotations (0, 90, 180, 270 degrees) was applied to an image.

    Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by Predicting Image
    Rotations", ICLR 2018, eq. 1-2: with F the classifier on backbone features,
        L = -(1/4) sum_{y=0..3} log F_y(rot(x, 90 y degrees)),
    averaged over the batch. The "rotnet" view recipe returns the 4 rotated copies in order,
    so view i has target i. Shapes: views 4 x [B, C, H, W]; logits [4B, 4].
    ``classifier_hidden_dim`` = None gives a linear classifier; an integer gives a 2-layer MLP
    (Linear-BN-ReLU-Linear). ``encoder`` is backbone + classifier: images -> the 4 logits.
    """

    view_recipe = "rotnet"
    encoder_head = "classifier"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        classifier_hidden_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, feature_size, **kwargs)
        if classifier_hidden_dim is None:
            self.classifier: nn.Module = nn.Linear(self.feature_dim, NUM_ROTATIONS)
        else:
            self.classifier = mlp(self.feature_dim, classifier_hidden_dim, NUM_ROTATIONS)

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != NUM_ROTATIONS:
            raise ValueError(
                f"rotnet needs {NUM_ROTATIONS} views (rotated by 0/90/180/270), got {len(views)}"
            )
        features = torch.cat(self.backbone_forward(views))
        logits = self.classifier(features).float()
        batch = views[0].shape[0]
        targets = torch.arange(NUM_ROTATIONS, device=logits.device).repeat_interleave(batch)
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.detach().argmax(dim=1) == targets).float().mean()
        return LossOutput(loss, logs={"accuracy": accuracy})
