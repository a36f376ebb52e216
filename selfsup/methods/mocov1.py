"""MoCo v1 (He et al. 2020): MoCo v2's machinery with the original linear head, t and views."""

from __future__ import annotations

from typing import Any

from torch import nn

from selfsup.methods.base import register
from selfsup.methods.mocov2 import MoCoV2


@register("mocov1")
class MoCoV1(MoCoV2):
    """MoCo v1: a momentum key encoder, a queue of negative keys and InfoNCE, linear head.

    He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual Representation
    Learning", CVPR 2020, eq. 1-2 and sec. 3.3. With q = f_q(x1), k = f_k(x2):
        L = -log exp(q.k/t) / (exp(q.k/t) + sum_{n in queue} exp(q.n/t)),
        theta_k <- m theta_k + (1 - m) theta_q (m = ``base_momentum``, constant).
    Shapes: views 2 x [B, C, H, W]; q, k [B, proj_dim]; queue [queue_size, proj_dim].

    The same method as ``mocov2`` (its subclass, one implementation: queue, shuffled BatchNorm,
    loss; see ``MoCoV2``), with the paper's defaults where MoCo v2 changed them: the head is the
    backbone's fc to 128-d (``num_proj_layers=1``, no MLP; ``proj_hidden_dim`` is then unused),
    t = 0.07, views ``mocov1`` (crop 0.2-1, flip, colour jitter 0.4 on every view, grayscale
    0.2, no blur). Kept from the paper as in MoCo v2: queue 65536, m = 0.999, shuffle BN on.
    Not here: the paper's SGD schedule (lr 0.03, 200 epochs, steps at 120 and 160).
    """

    view_recipe = "mocov1"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        num_proj_layers: int = 1,
        temperature: float = 0.07,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            backbone,
            feature_size,
            num_proj_layers=num_proj_layers,
            temperature=temperature,
            **kwargs,
        )
