"""MoCo v3 (Chen, Xie & He 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from selfsup.heads import mlp
from selfsup.losses import mocov3_contrastive_loss
from selfsup.methods.base import LossOutput, check_positive, embedding_std, register
from selfsup.methods.momentum import MomentumMethod


@register("mocov3")
class MoCoV3(MomentumMethod):
    """MoCo v3: a predictor on the query side, a momentum key encoder, in-batch negatives.

    Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers",
    ICCV 2021, sec. 2 and Alg. 1. With q = predictor(projector(backbone(x))) and
    k = key_projector(key_backbone(x)) (momentum copies, no gradient), for views x1, x2:
        L = ctr(q1, k2) + ctr(q2, k1),
        ctr(q, k) = 2t * CrossEntropy(q k^T / t, positives on the diagonal)
    on L2-normalised q, k, the keys gathered over ranks (``mocov3_contrastive_loss``): the
    other images' keys of the batch are the negatives, there is no queue. The key encoder
    follows theta_k <- m theta_k + (1 - m) theta_q with m from ``base_momentum`` 0.99 to
    ``final_momentum`` 1 (cosine, after every optimizer step).

    Shapes: views 2 x [B, C, H, W]; projections and q, k [B, proj_dim].

    Defaults (paper): projector of ``num_proj_layers`` 3 Linear layers (4096 hidden, 256 out),
    BN and ReLU between them and a BatchNorm without affine parameters at the end; predictor
    Linear(4096)-BN-ReLU-Linear(256); no Linear bias (the official code's). The official code's
    ResNet model has a 2-layer projector (``num_proj_layers=2``) and a predictor ending without
    BN; its ViT model has 3 layers and a predictor ending with an affine-free BN
    (``pred_last_norm=True``). Temperature 1.0 is the ResNet-50 setting; the ViT setting is
    t = 0.2. Views: BYOL's asymmetric recipe (``byol``), as the paper. Each view is its own
    BatchNorm batch, as in the official code. The paper's SyncBatchNorm over GPUs is the
    trainer's (``sync_batchnorm`` on multi-GPU runs); per-device BatchNorm lets a query match
    the keys normalised with its own device's batch. Not here: the ViT patch-projection freeze.
    """

    view_recipe = "byol"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        num_proj_layers: int = 3,
        pred_hidden_dim: int = 4096,
        pred_last_norm: bool = False,
        temperature: float = 1.0,
        base_momentum: float = 0.99,
        final_momentum: float = 1.0,
        **kwargs: Any,
    ) -> None:
        check_positive("mocov3", temperature=temperature, num_proj_layers=num_proj_layers)
        super().__init__(backbone, feature_size, **kwargs)
        proj_hidden_dim, proj_dim, pred_hidden_dim = self.head_sizes(
            proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim
        ).values()
        self.temperature = temperature
        self.projector = mlp(
            self.feature_dim,
            proj_hidden_dim,
            proj_dim,
            num_layers=num_proj_layers,
            last_norm=True,
            last_norm_affine=False,
            bias=False,
        )
        self.predictor = mlp(
            proj_dim,
            pred_hidden_dim,
            proj_dim,
            last_norm=pred_last_norm,
            last_norm_affine=False,
            bias=False,
        )
        self.add_momentum_targets(
            {"key_backbone": "backbone", "key_projector": "projector"},
            base_momentum,
            final_momentum,
        )

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 2:
            raise ValueError(f"mocov3 needs 2 views, got {len(views)}")
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        q1, q2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            k1, k2 = (self.key_projector(self.key_backbone(v)) for v in views)
        loss = mocov3_contrastive_loss(q1, k2, self.temperature) + mocov3_contrastive_loss(
            q2, k1, self.temperature
        )
        return LossOutput(loss, logs={"collapse_std": embedding_std(z1), "momentum": self.momentum})
