"""NNCLR (Dwibedi et al. 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.heads import mlp
from selfsup.losses import nearest_neighbours, nnclr_loss
from selfsup.methods.base import LossOutput, Method, check_positive, embedding_std, register
from selfsup.methods.queue import KeyQueue, queue_size_for
from selfsup.runtime.distributed import world_size


@register("nnclr")
class NNCLR(Method):
    """NNCLR: the nearest neighbour of a view's projection in a support set of earlier
    projections is the positive of the other view's prediction.

    Dwibedi, Aytar, Tompson, Sermanet & Zisserman, "With a Little Help from My Friends:
    Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021. With projections
    z = g(f(x)), predictions p = h(z), NN(z, Q) the most cosine-similar support row (eq. 3):
        L_i = -log exp(NN(z1_i).p2_i/t) / sum_k exp(NN(z1_i).p2_k/t)            (eq. 2)
    plus the paper's symmetric term (denominator sum_k exp(NN(z1_k).p2_i/t)), averaged; the
    negatives are the other images of the global batch (gathered across ranks). The loss is
    applied in both view orders and averaged, (nnclr_loss(NN(z1), p2) + nnclr_loss(NN(z2), p1)) / 2,
    as solo-learn and lightly do, so both views' predictions get a gradient; the neighbours get
    none. After the loss, the normalised first-view projections of all ranks enter the FIFO
    support set (``KeyQueue``, a buffer, so checkpoints and --resume keep it).
    Shapes: views 2 x [B, C, H, W]; z, p [B, proj_dim]; support set [queue_size, proj_dim].

    Defaults (paper, sec. 4): support set 98,304; t = 0.1; projector 3 Linear layers
    2048-2048-256, each followed by BatchNorm (ReLU after the hidden two); predictor
    Linear(4096)-BN-ReLU-Linear(256); BYOL's augmentations.

    The support set at the start: it is allocated as random unit vectors (as MoCo's queue and
    lightly's memory bank), but the lookup only searches the rows written so far (the
    ``support_filled`` buffer counts them), and before the first write it uses each
    projection itself (NN(z) = z, i.e. SimCLR with a predictor for that one step). Random
    vectors are projections of no image, so a neighbour among them only adds noise; with the
    paper's batch (4096) the set fills in 24 steps and this changes nothing, but with a small
    dataset or batch (say 1,000 images, batch 256: 4 steps an epoch) the paper's 98,304 rows
    would stay partly random for about 100 epochs. A support set larger than the dataset still
    holds several (older) projections of each image; pass a smaller ``queue_size`` there.
    """

    view_recipe = "byol"  # the paper uses BYOL's augmentations (sec. 4.1)

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 256,
        pred_hidden_dim: int = 4096,
        queue_size: int = 98304,
        temperature: float = 0.1,
        **kwargs: Any,
    ) -> None:
        check_positive("nnclr", temperature=temperature, queue_size=queue_size)
        super().__init__(backbone, feature_size, **kwargs)
        proj_hidden_dim, proj_dim, pred_hidden_dim = self.head_sizes(
            proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim
        ).values()
        self.temperature = temperature
        self.projector = mlp(
            self.feature_dim, proj_hidden_dim, proj_dim, num_layers=3, last_norm=True
        )
        self.predictor = mlp(proj_dim, pred_hidden_dim, proj_dim)
        self.support_set = KeyQueue(queue_size, proj_dim)
        self.register_buffer("support_filled", torch.zeros((), dtype=torch.long))

    def support(self) -> Tensor | None:
        """The support-set rows written so far ([filled, proj_dim]), None before the first."""
        filled = int(self.support_filled)
        return self.support_set.keys[:filled] if filled > 0 else None

    def neighbours(self, z: Tensor) -> Tensor:
        """NN(z, Q) over the written support rows; z itself (normalised) before any write."""
        support = self.support()
        if support is None:
            return F.normalize(z.detach().float(), dim=-1)
        return nearest_neighbours(z, support)

    @torch.no_grad()
    def update_support_set(self, z: Tensor) -> None:
        """Enqueue the normalised projections ``z`` [B, D] of every rank (FIFO)."""
        self.support_set.push(F.normalize(z.float(), dim=-1))
        size = self.support_set.keys.shape[0]
        self.support_filled.copy_((self.support_filled + len(z) * world_size()).clamp(max=size))

    @classmethod
    def data_defaults(cls, num_images: int, global_batch: int) -> dict[str, Any]:
        paper = cls.paper_default("queue_size")
        return {"queue_size": queue_size_for(paper, num_images, global_batch)}

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 2:
            raise ValueError(f"nnclr needs 2 views, got {len(views)}")
        z1, z2 = self.backbone_forward(self.backbone_forward(views), self.projector)
        p1, p2 = self.backbone_forward([z1, z2], self.predictor)
        n1, n2 = self.neighbours(torch.cat([z1, z2])).chunk(2)  # one pass over the support set
        loss = (nnclr_loss(n1, p2, self.temperature) + nnclr_loss(n2, p1, self.temperature)) / 2
        with torch.no_grad():
            similarity = F.cosine_similarity(z1.float(), n1, dim=-1).mean()
        self.update_support_set(z1.detach())
        return LossOutput(
            loss,
            logs={
                "collapse_std": embedding_std(z1),
                "neighbour_similarity": similarity,
                "support_filled": self.support_filled.float() / self.support_set.keys.shape[0],
            },
        )
