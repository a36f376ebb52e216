"""MoCo v2 (He et al. 2020; Chen et al. 2020)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.heads import mlp
from selfsup.losses import infonce_queue_loss
from selfsup.methods.base import LossOutput, check_positive, embedding_std, register
from selfsup.methods.momentum import MomentumMethod
from selfsup.methods.queue import KeyQueue


@register("mocov2")
class MoCoV2(MomentumMethod):
    """MoCo v2: a momentum key encoder, a queue of negative keys and InfoNCE.

    He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual Representation
    Learning", CVPR 2020, eq. 1-2; Chen, Fan, Girshick & He, "Improved Baselines with Momentum
    Contrastive Learning", 2020 (MLP head, blur, t = 0.2). With q = f_q(x1), k = f_k(x2):
        L = -log exp(q.k/t) / (exp(q.k/t) + sum_{n in queue} exp(q.n/t)),
        theta_k <- m theta_k + (1 - m) theta_q (m = ``base_momentum`` = 0.999, constant,
        after every optimizer step).
    Keys of all ranks are enqueued FIFO after the loss (queue of 65536 keys of dim 128).
    Shapes: views 2 x [B, C, H, W]; q, k [B, proj_dim]; queue [queue_size, proj_dim].

    ``symmetric=True`` adds the swapped term and averages (not in MoCo v2; both keys are then
    enqueued). Not implemented: ShuffleBN. Without it, BatchNorm statistics inside one device's
    batch can leak which key matches a query; with several GPUs, SyncBatchNorm or small batches
    per device limit this, on one device it is a known (mild) weakness.
    """

    view_recipe = "simclr"  # MoCo v2's augmentations are SimCLR's (with blur)
    renamed_arguments = {"momentum": ("base_momentum", "the EMA rate of the key encoder")}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.2,
        base_momentum: float = 0.999,
        symmetric: bool = False,
        **kwargs: Any,
    ) -> None:
        check_positive("mocov2", temperature=temperature)
        super().__init__(backbone, feature_size, **kwargs)
        proj_hidden_dim, proj_dim = self.head_sizes(
            proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim
        ).values()
        self.temperature = temperature
        self.symmetric = symmetric
        # MoCo v2's head: fc-ReLU-fc without BatchNorm
        self.projector = mlp(self.feature_dim, proj_hidden_dim, proj_dim, batch_norm=False)
        self.queue = KeyQueue(queue_size, proj_dim)
        self.add_momentum_targets(
            {"key_backbone": "backbone", "key_projector": "projector"},
            base_momentum,
            base_momentum,
        )

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 2:
            raise ValueError(f"mocov2 needs 2 views, got {len(views)}")
        query_views = views if self.symmetric else views[:1]
        key_views = views[::-1] if self.symmetric else views[1:]
        q = self.backbone_forward(self.backbone_forward(query_views), self.projector)
        with torch.no_grad():
            k = self.backbone_forward(
                self.backbone_forward(key_views, self.key_backbone), self.key_projector
            )
        # the loss keeps the queue for backward; push() overwrites it in place before that
        negatives = self.queue.keys.clone()
        losses = [
            infonce_queue_loss(q_i, k_i, negatives, self.temperature)
            for q_i, k_i in zip(q, k, strict=True)
        ]
        loss = sum(losses) / len(losses)
        self.queue.push(F.normalize(torch.cat(k).float(), dim=1))
        return LossOutput(loss, logs={"collapse_std": embedding_std(q[0])})
