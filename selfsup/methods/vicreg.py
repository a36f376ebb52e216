"""VICReg (Bardes, Ponce & LeCun 2022)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from selfsup.heads import mlp
from selfsup.losses import vicreg_terms
from selfsup.methods.base import (
    LossOutput,
    Method,
    check_non_negative,
    check_positive,
    embedding_std,
    register,
)


@register("vicreg")
class VICReg(Method):
    """VICReg: keep each embedding dimension's variance up, decorrelate the dimensions, and
    pull the two views' embeddings together; no negatives, no momentum, no predictor.

    Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", ICLR 2022, eq. 6: with Z, Z' [N, D] the expander's outputs,
        L = lambda s(Z, Z') + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z')),
    s the mean squared error, v a hinge at ``gamma`` on each dimension's std, c the squared
    off-diagonal covariances / D (``selfsup.losses.vicreg_terms``); v and c over the batch
    gathered across ranks. Shapes: views 2 x [B, C, H, W]; z1, z2 [B, proj_dim].

    Defaults (the paper and the authors' code): lambda = mu = 25, nu = 1, gamma = 1,
    eps = 1e-4; expander of 3 Linear layers of 8192 (BN + ReLU after the first two, no bias:
    a bias before BN or on the last layer cannot change the loss); BYOL's augmentations
    (``view_recipe = "byol"``), which the paper uses. The paper's optimizer (LARS, base lr 0.2,
    weight decay 1e-6, batch 2048) is the trainer's choice, not set here. Not implemented:
    VICRegL's local (feature-map) terms.
    """

    view_recipe = "byol"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_hidden_dim: int = 8192,
        proj_dim: int = 8192,
        num_proj_layers: int = 3,
        lambda_param: float = 25.0,
        mu_param: float = 25.0,
        nu_param: float = 1.0,
        gamma: float = 1.0,
        **kwargs: Any,
    ) -> None:
        check_positive("vicreg", gamma=gamma)
        # 0 removes a term, as in the paper's ablations
        check_non_negative(
            "vicreg", lambda_param=lambda_param, mu_param=mu_param, nu_param=nu_param
        )
        super().__init__(backbone, feature_size, **kwargs)
        proj_hidden_dim, proj_dim = self.head_sizes(
            proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim
        ).values()
        self.lambda_param, self.mu_param, self.nu_param = lambda_param, mu_param, nu_param
        self.gamma = gamma
        self.projector = mlp(
            self.feature_dim, proj_hidden_dim, proj_dim, num_layers=num_proj_layers, bias=False
        )

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 2:
            raise ValueError(f"vicreg needs 2 views, got {len(views)}")
        z1, z2 = self.backbone_forward(self.backbone_forward(views), self.projector)
        terms = vicreg_terms(z1, z2, gamma=self.gamma)
        loss = terms.weighted(self.lambda_param, self.mu_param, self.nu_param)
        logs = {k: v.detach() for k, v in terms._asdict().items()}
        return LossOutput(loss, logs={"collapse_std": embedding_std(z1), **logs})
