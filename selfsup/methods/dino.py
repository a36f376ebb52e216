"""DINO (Caron et al. 2021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.heads import DINOHead
from selfsup.losses import dino_loss, update_center
from selfsup.methods.base import (
    LossOutput,
    check_non_negative,
    check_positive,
    embedding_std,
    register,
)
from selfsup.methods.momentum import MomentumMethod
from selfsup.views import NUM_GLOBAL_CROPS


@register("dino")
class DINO(MomentumMethod):
    """DINO: self-distillation with no labels; a student matches a centred, sharpened teacher.

    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
    eq. 2-4 and Algorithm 1. The teacher (momentum copy of backbone + head, tau 0.996 -> 1,
    cosine) sees the 2 global crops; the student sees all crops (2 global + ``num_local_crops``):
        P_t = softmax((g_t(x) - c) / tau_t),  P_s = softmax(g_s(x') / tau_s),
        L = mean over pairs (global x, any x' != x) of H(P_t(x), P_s(x')),
        c <- m c + (1 - m) mean_batch g_t(x)   (m = ``center_momentum`` = 0.9).
    tau_s = 0.1; tau_t rises linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over the
    first ``warmup_teacher_temp_progress`` of training (DINO: 0.04 -> 0.04 over 30 of 100
    epochs by default; 0.04 -> 0.07 is their variant for unstable runs).
    ``norm_last_layer`` (the official code's flag, default True): the prototypes' norms stay
    1 (logits are cosines); False trains them, which the DINO README finds better and less
    stable and uses for ViT-S/16 (``DINOHead``).
    Shapes: views 2 x [B, C, H, W] global then ``num_local_crops`` x [B, C, h, w] local;
    g(x) [B, out_dim]; c [out_dim]. ``encoder`` is the student: backbone + head.

    Not implemented: freezing the last layer in the first epoch and the weight-decay schedule.
    """

    view_recipe = "dino"
    encoder_head = "head"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        out_dim: int = 65536,
        head_hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        use_bn_in_head: bool = False,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_progress: float = 0.3,
        center_momentum: float = 0.9,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        num_local_crops: int = 6,
        local_crop_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_positive(
            "dino",
            student_temp=student_temp,
            teacher_temp=teacher_temp,
            warmup_teacher_temp=warmup_teacher_temp,
        )
        check_non_negative("dino", num_local_crops=num_local_crops)
        super().__init__(backbone, feature_size, **kwargs)
        # out_dim is a prototype count (the softmax's K), not a layer fed by the features: kept
        head_hidden_dim, bottleneck_dim = self.head_sizes(
            head_hidden_dim=head_hidden_dim, bottleneck_dim=bottleneck_dim
        ).values()
        self.num_local_crops = num_local_crops
        self.student_temp = student_temp
        self.final_teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_progress = warmup_teacher_temp_progress
        self.teacher_temp = self.teacher_temp_at(0.0)
        self.center_momentum = center_momentum
        self.head = DINOHead(
            self.feature_dim,
            out_dim,
            hidden_dim=head_hidden_dim,
            bottleneck_dim=bottleneck_dim,
            batch_norm=use_bn_in_head,
            norm_last_layer=norm_last_layer,
        )
        self.register_buffer("center", torch.zeros(out_dim))
        self.add_momentum_targets(
            {"teacher_backbone": "backbone", "teacher_head": "head"}, base_momentum, final_momentum
        )

    @classmethod
    def view_overrides(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        overrides: dict[str, Any] = {
            "num_global_crops": NUM_GLOBAL_CROPS,
            "num_local_crops": arguments["num_local_crops"],
        }
        if arguments["local_crop_size"] is not None:
            overrides["local_size"] = arguments["local_crop_size"]
        return overrides

    def teacher_temp_at(self, progress: float) -> float:
        """Linear warm-up of the teacher temperature, then constant."""
        if progress >= self.warmup_teacher_temp_progress:
            return self.final_teacher_temp
        fraction = max(progress, 0.0) / self.warmup_teacher_temp_progress
        return self.warmup_teacher_temp + fraction * (
            self.final_teacher_temp - self.warmup_teacher_temp
        )

    def set_progress(self, progress: float) -> None:
        super().set_progress(progress)
        self.teacher_temp = self.teacher_temp_at(progress)

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        expected = NUM_GLOBAL_CROPS + self.num_local_crops
        if len(views) != expected:
            raise ValueError(
                f"dino needs {NUM_GLOBAL_CROPS} global + num_local_crops={self.num_local_crops} "
                f"views, got {len(views)}"
            )
        student = self.backbone_forward(self.backbone_forward(views), self.head)
        with torch.no_grad():
            teacher = self.backbone_forward(
                self.backbone_forward(views[:NUM_GLOBAL_CROPS], self.teacher_backbone),
                self.teacher_head,
            )
        loss = dino_loss(student, teacher, self.center, self.student_temp, self.teacher_temp)
        self.center.copy_(update_center(self.center, teacher, self.center_momentum))
        logs = {
            "collapse_std": embedding_std(torch.cat(teacher)),
            "teacher_temp": self.teacher_temp,
            "momentum": self.momentum,
        }
        return LossOutput(loss, logs=logs)
