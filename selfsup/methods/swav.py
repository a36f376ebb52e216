"""SwAV (Caron et al. 2020)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.heads import mlp
from selfsup.losses import prototype_scores, sinkhorn_knopp, swav_loss
from selfsup.methods.base import (
    LossOutput,
    Method,
    check_non_negative,
    check_positive,
    embedding_std,
    register,
)
from selfsup.methods.dino import DINO
from selfsup.methods.queue import KeyQueue
from selfsup.runtime.distributed import local_rows, world_size
from selfsup.views import NUM_GLOBAL_CROPS

# The official multi-crop views (src/multicropdataset.py and the pretraining scripts): crops of
# 0.14-1 and 0.05-0.14, colour jitter of strength 1 (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale
# p 0.2, Gaussian blur p 0.5 on every crop, no solarize. Blur only from 96 px, as the simclr
# recipe (SimCLR's CIFAR-10 setting drops it).
PAPER_NATURAL_VIEWS: dict[str, Any] = {
    "global_crop_scale": (0.14, 1.0),
    "local_crop_scale": (0.05, 0.14),
    "brightness": 0.8,
    "contrast": 0.8,
    "saturation": 0.8,
    "hue": 0.2,
    "global_solarize_p": 0.0,
}
PAPER_BLUR_P = 0.5
MIN_BLUR_SIZE = 96


@register("swav")
class SwAV(Method):
    """SwAV: swapped prediction of online cluster assignments (codes) between crops.

    Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, "Unsupervised Learning of Visual Features
    by Contrasting Cluster Assignments", NeurIPS 2020, eq. 1-3. With z = normalize(g(f(x)))
    [B, proj_dim], prototypes C [K, proj_dim] (unit rows) and scores s = z C^T [B, K]:
        q_i = Sinkhorn-Knopp(s_i)  (no gradient; epsilon 0.05, 3 iterations, global batch),
        L = 1/2 sum_{i in 2 global crops} 1/(V - 1) sum_{v != i} mean_b
            -sum_k q_i[b, k] log softmax(s_v[b] / temperature)_k,   temperature 0.1.
    Codes come from the 2 global crops only and are predicted from every other crop (the 2
    global + ``num_local_crops`` local ones). ``selfsup.losses.sinkhorn_knopp`` / ``swav_loss``.
    Shapes: views 2 x [B, C, H, W] then ``num_local_crops`` x [B, C, h, w]; ``encoder`` is
    backbone + projector (un-normalised z).

    Defaults (paper / official ``swav_800ep_pretrain.sh``): projector Linear-BN-ReLU-Linear
    2048 -> 128; 3000 prototypes, a Linear without bias re-normalised (L2 per prototype) at the
    start of every ``training_loss`` (so also in your own loop); prototypes frozen during the
    first ``freeze_prototypes_epochs`` = 1 epoch (313 iterations at batch 4096, or 5005 at 256,
    in the official scripts): ``before_optimizer_step`` sets their ``.grad`` to None, so neither
    the step nor weight decay moves them (your own loop must call ``on_train_epoch_start`` and
    ``before_optimizer_step`` for this). Views: the ``dino`` multi-crop recipe (2 global + 6
    local crops at 96/224 of the image size) with SwAV's crop scales, colours and blur
    (``PAPER_NATURAL_VIEWS``) for natural images; a ``views`` dict entry replaces any of them;
    wafer maps keep the dino recipe's wafer crops.

    ``num_prototypes``: the paper finds little influence of K as long as there are enough
    prototypes (3000 for ImageNet's 1000 classes). For small data use about 10 x the number of
    classes (e.g. ``num_prototypes=100`` for 10-class data such as Fashion-MNIST), and keep K
    no larger than the global batch (plus the queue): the equipartition spreads each batch
    over all K prototypes. It is a count, so ``head_widths`` does not scale it.

    Queue (``queue_length`` > 0, off by default; the paper uses 3840 at batch 256): from epoch
    ``epoch_queue_starts`` (15) on, the normalised features of the 2 global crops of every step
    are stored (gathered over ranks, in buffers ``queues.{0,1}.keys``); once full, their scores
    join the Sinkhorn-Knopp input (never the loss), so small batches still spread over K.
    Under DDP each rank feeds its share of the queue rows to the all-reduced Sinkhorn-Knopp,
    which is the official per-rank queue's set of features.

    Not implemented: several prototype heads (the paper's ablation), SyncBatchNorm (the
    trainer's choice), the paper's LARS / learning-rate settings (the trainer's).
    """

    view_recipe = "dino"  # SwAV's multi-crop; SwAV's augmentations come from view_overrides

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        queue_length: int = 0,
        epoch_queue_starts: int = 15,
        freeze_prototypes_epochs: int = 1,
        num_local_crops: int = 6,
        local_crop_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_positive(
            "swav",
            num_prototypes=num_prototypes,
            temperature=temperature,
            sinkhorn_epsilon=sinkhorn_epsilon,
            sinkhorn_iterations=sinkhorn_iterations,
        )
        check_non_negative(
            "swav",
            queue_length=queue_length,
            epoch_queue_starts=epoch_queue_starts,
            freeze_prototypes_epochs=freeze_prototypes_epochs,
            num_local_crops=num_local_crops,
        )
        super().__init__(backbone, feature_size, **kwargs)
        proj_hidden_dim, proj_dim = self.head_sizes(
            proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim
        ).values()
        self.temperature = temperature
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.queue_length = queue_length
        self.epoch_queue_starts = epoch_queue_starts
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        self.num_local_crops = num_local_crops
        self.projector = mlp(self.feature_dim, proj_hidden_dim, proj_dim)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.normalize_prototypes()
        if queue_length > 0:
            self.queues = nn.ModuleList(
                KeyQueue(queue_length, proj_dim) for _ in range(NUM_GLOBAL_CROPS)
            )
            # rows of the queues holding features (the queue joins Sinkhorn-Knopp once full)
            self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    @classmethod
    def data_defaults(cls, num_images: int, global_batch: int) -> dict[str, Any]:
        """No more prototypes than one global batch spreads over (the equipartition gives
        each B/K of a batch's mass; with the queue off, K <= B keeps that >= 1 sample)."""
        return {"num_prototypes": min(cls.paper_default("num_prototypes"), global_batch)}

    @classmethod
    def view_overrides(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        overrides = DINO.view_overrides(arguments)  # the same crop counts and local crop size
        views = arguments["views"]
        if arguments["view_style"] == "natural" and (views is None or isinstance(views, dict)):
            blur_p = PAPER_BLUR_P if arguments["image_size"] >= MIN_BLUR_SIZE else 0.0
            paper = {**PAPER_NATURAL_VIEWS, "global_blur_p": blur_p, "local_blur_p": blur_p}
            overrides.update({k: v for k, v in paper.items() if k not in (views or {})})
        return overrides

    @property
    def prototypes_frozen(self) -> bool:
        """True during the first ``freeze_prototypes_epochs`` epochs (``current_epoch``)."""
        return self.current_epoch < self.freeze_prototypes_epochs

    @property
    def queue_active(self) -> bool:
        """True once the queue is filled every step (``epoch_queue_starts`` reached)."""
        return self.queue_length > 0 and self.current_epoch >= self.epoch_queue_starts

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Project every prototype back onto the unit sphere (the official code, every step)."""
        weight = self.prototypes.weight
        weight.copy_(F.normalize(weight, dim=1))

    def before_optimizer_step(self) -> None:
        super().before_optimizer_step()
        if self.prototypes_frozen:
            self.prototypes.weight.grad = None

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        expected = NUM_GLOBAL_CROPS + self.num_local_crops
        if len(views) != expected:
            raise ValueError(
                f"swav needs {NUM_GLOBAL_CROPS} global + num_local_crops={self.num_local_crops} "
                f"views, got {len(views)}"
            )
        self.normalize_prototypes()
        z = self.backbone_forward(self.backbone_forward(views), self.projector)
        scores = [prototype_scores(z_v, self.prototypes.weight) for z_v in z]
        codes = self.codes(scores[:NUM_GLOBAL_CROPS], z[:NUM_GLOBAL_CROPS])
        loss = swav_loss(scores, codes, self.temperature)
        logs: dict[str, Tensor | float] = {
            "collapse_std": embedding_std(torch.cat(z[:NUM_GLOBAL_CROPS])),
            "prototypes_frozen": float(self.prototypes_frozen),
        }
        if self.queue_length > 0:
            logs["queue_filled"] = float(self.queue_filled) / self.queue_length
        return LossOutput(loss, logs=logs)

    @torch.no_grad()
    def codes(self, scores: list[Tensor], z: list[Tensor]) -> list[Tensor]:
        """Sinkhorn-Knopp codes [B, K] of the global crops' ``scores`` (with the queue's scores
        once it is full), then the crops' normalised ``z`` enter the queue (if active)."""
        use_queue = self.queue_length > 0 and int(self.queue_filled) >= self.queue_length
        if self.queue_active or use_queue:
            self._check_queue(scores[0].shape[0])
        codes = []
        for i, s in enumerate(scores):
            if use_queue:
                share = self.queues[i].keys[local_rows(self.queue_length)]
                s = torch.cat([prototype_scores(share, self.prototypes.weight), s])
            codes.append(sinkhorn_knopp(s, self.sinkhorn_epsilon, self.sinkhorn_iterations))
        codes = [c[-s.shape[0] :] for c, s in zip(codes, scores, strict=True)]
        if self.queue_active:
            for queue, z_i in zip(self.queues, z, strict=True):
                queue.push(F.normalize(z_i.float(), dim=-1))
            filled = self.queue_filled + scores[0].shape[0] * world_size()
            self.queue_filled.copy_(filled.clamp(max=self.queue_length))
        return codes

    def _check_queue(self, local_batch: int) -> None:
        ranks = world_size()
        if self.queue_length % ranks:
            raise ValueError(
                f"swav: queue_length={self.queue_length} must be a multiple of the number of "
                f"processes ({ranks}): each rank feeds its share to Sinkhorn-Knopp"
            )
        if local_batch * ranks > self.queue_length:
            raise ValueError(
                f"swav: queue_length={self.queue_length} is smaller than the global batch "
                f"({local_batch * ranks}); raise it (the paper: 3840 at batch 256) or set 0"
            )
