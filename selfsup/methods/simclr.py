"""SimCLR (Chen et al. 2020)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from selfsup.heads import mlp
from selfsup.losses import nt_xent_loss
from selfsup.methods.base import LossOutput, Method, check_positive, embedding_std, register


@register("simclr")
class SimCLR(Method):
    """SimCLR v1: two augmented views, an MLP projector and the NT-Xent contrastive loss.

    Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020. With z = g(f(x)) and sim the cosine similarity, eq. 1:
        l(i, j) = -log exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t),
    averaged over the 2N views of a batch (2N - 2 negatives per anchor, gathered over ranks).
    Shapes: views 2 x [B, C, H, W]; features [B, feature_dim]; z1, z2 [B, proj_dim].

    Defaults: projector Linear-BN-ReLU-Linear to 128 (v1, ``num_proj_layers=2``; SimCLR v2 used
    3), temperature 0.5 (the paper's CIFAR-10 value; ImageNet used 0.1 at batch 4096).
    """

    view_recipe = "simclr"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        num_proj_layers: int = 2,
        temperature: float = 0.5,
        **kwargs: Any,
    ) -> None:
        check_positive("simclr", temperature=temperature)
        super().__init__(backbone, feature_size, **kwargs)
        proj_hidden_dim, proj_dim = self.head_sizes(
            proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim
        ).values()
        self.temperature = temperature
        self.projector = mlp(
            self.feature_dim, proj_hidden_dim, proj_dim, num_layers=num_proj_layers
        )

    def training_loss(self, views: list[Tensor], **fields: Tensor) -> LossOutput:
        if len(views) != 2:
            raise ValueError(f"{self.method_name} needs 2 views, got {len(views)}")
        z1, z2 = self.backbone_forward(self.backbone_forward(views), self.projector)
        loss = self.pair_loss(z1, z2, **fields)
        return LossOutput(loss, logs={"collapse_std": embedding_std(z1)})

    def pair_loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        """The contrastive loss of the two views' projections [B, proj_dim]: NT-Xent here;
        the methods that keep SimCLR's views and projector (DCL, SupCon) replace only this."""
        return nt_xent_loss(z1, z2, self.temperature)
