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
from selfsup.methods.queue import KeyQueue, queue_size_for
from selfsup.methods.shuffle_bn import bn_groups, shuffled_key_forward, split_bn_forward


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

    ``shuffle_bn=True`` (the paper's, MoCo sec. 3.3): the keys are computed on the batch shuffled
    across ranks and, on each device, in ``bn_splits`` sub-batches with their own BatchNorm
    statistics, the queries in ``bn_splits`` sub-batches in order (``methods.shuffle_bn``), so a
    query and its key are not normalised with the same images' statistics (which the network
    would use to match them). ``bn_splits`` None: sub-batches of about 32 samples, MoCo's per-GPU
    batch, at least 2 over all devices (``shuffle_bn.bn_groups``). ``shuffle_bn=False``: one
    forward of the whole batch per encoder, as before. With shuffle_bn the method asks the
    trainer for per-device BatchNorm (``sync_batchnorm`` False), as the paper: SyncBatchNorm
    would pool the groups' statistics over all ranks again.

    ``symmetric=True`` adds the swapped term and averages (not in MoCo v2; both keys are then
    enqueued). ``num_proj_layers``: Linear layers of the head (MoCo v1 has 1, a linear fc).
    """

    view_recipe = "mocov2"  # SimCLR's augmentations (with blur), crops of 0.2-1
    renamed_arguments = {"momentum": ("base_momentum", "the EMA rate of the key encoder")}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        num_proj_layers: int = 2,
        queue_size: int = 65536,
        temperature: float = 0.2,
        base_momentum: float = 0.999,
        symmetric: bool = False,
        shuffle_bn: bool = True,
        bn_splits: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_positive(self.method_name, temperature=temperature, num_proj_layers=num_proj_layers)
        bn_groups(2, bn_splits)  # a bad bn_splits fails before the backbone is built
        super().__init__(backbone, feature_size, **kwargs)
        proj_hidden_dim, proj_dim = self.head_sizes(
            proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim
        ).values()
        self.temperature = temperature
        self.symmetric = symmetric
        self.shuffle_bn = shuffle_bn
        self.sync_batchnorm = not shuffle_bn  # SyncBN would pool the statistics shuffling splits
        self.bn_splits = bn_splits
        # MoCo v2's head: fc-ReLU-fc without BatchNorm (MoCo v1: one fc)
        self.projector = mlp(
            self.feature_dim,
            proj_hidden_dim,
            proj_dim,
            num_layers=num_proj_layers,
            batch_norm=False,
        )
        self.queue = KeyQueue(queue_size, proj_dim)
        self.add_momentum_targets(
            {"key_backbone": "backbone", "key_projector": "projector"},
            base_momentum,
            base_momentum,
        )

    @classmethod
    def data_defaults(cls, num_images: int, global_batch: int) -> dict[str, Any]:
        paper = cls.paper_default("queue_size")
        return {"queue_size": queue_size_for(paper, num_images, global_batch)}

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 2:
            raise ValueError(f"{self.method_name} needs 2 views, got {len(views)}")
        query_views = views if self.symmetric else views[:1]
        key_views = views[::-1] if self.symmetric else views[1:]
        q, k = self.encode_queries(query_views), self.encode_keys(key_views)
        # the loss keeps the queue for backward; push() overwrites it in place before that
        negatives = self.queue.keys.clone()
        losses = [
            infonce_queue_loss(q_i, k_i, negatives, self.temperature)
            for q_i, k_i in zip(q, k, strict=True)
        ]
        loss = sum(losses) / len(losses)
        self.queue.push(F.normalize(torch.cat(k).float(), dim=1))
        return LossOutput(loss, logs={"collapse_std": embedding_std(q[0])})

    def encode_queries(self, views: list[Tensor]) -> list[Tensor]:
        """q = projector(backbone(view)) per view; in ``bn_splits`` sub-batches if shuffle_bn."""
        if self.shuffle_bn:
            return [split_bn_forward(self.encoder, v, self.bn_splits) for v in views]
        return self.backbone_forward(self.backbone_forward(views), self.projector)

    @torch.no_grad()
    def encode_keys(self, views: list[Tensor]) -> list[Tensor]:
        """k from the momentum encoder per view, with shuffled BatchNorm if shuffle_bn."""
        if self.shuffle_bn:
            key_encoder = nn.Sequential(self.key_backbone, self.key_projector)
            return [shuffled_key_forward(key_encoder, v, self.bn_splits) for v in views]
        return self.backbone_forward(
            self.backbone_forward(views, self.key_backbone), self.key_projector
        )
