"""SimCLR v2 (Chen et al. 2020b): SimCLR, a 3-layer projector, fine-tuned from its first layer."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from selfsup.methods.base import check_positive, register
from selfsup.methods.simclr import SimCLR


@register("simclrv2")
class SimCLRV2(SimCLR):
    """SimCLR v2: SimCLR's two views and NT-Xent loss with a deeper projector.

    Chen, Kornblith, Swersky, Norouzi & Hinton, "Big Self-Supervised Models are Strong
    Semi-Supervised Learners", NeurIPS 2020, Sec. 2. The loss is SimCLR's eq. 1 (NT-Xent,
    ``selfsup.losses.nt_xent_loss``) on z = g(f(x)), with g a 3-layer MLP
    Linear-BN-ReLU-Linear-BN-ReLU-Linear. Shapes: views 2 x [B, C, H, W]; features
    [B, feature_dim]; z1, z2 [B, proj_dim].

    Defaults (the paper's ImageNet setting, its only one): ``num_proj_layers`` 3; hidden layers
    as wide as the backbone's features (``proj_hidden_dim=None``; the official code sizes them
    from the input, 2048 on ResNet-50); ``proj_dim`` 128; temperature 0.1 (SimCLR's CIFAR-10
    value 0.5 is ``temperature=0.5``).

    Fine-tuning starts from the projector's first layer instead of the backbone alone (the
    paper's "fine-tune from the 1st layer of projection head", ``finetune_from_projector_layer``
    = 1): ``selfsup eval finetune`` (``--from-projector-layer``) and
    ``selfsup.eval.finetune.finetune(..., from_projector_layer=1)`` train backbone +
    Linear-BN-ReLU + a linear classifier.

    Not implemented: the MoCo-style memory of negatives (the paper's third change, worth ~1 %),
    selective-kernel ResNets, distillation, and the official code's BatchNorm on the projector
    output (a scale without a shift; as selfsup's SimCLR, the last layer here is a plain Linear).
    """

    finetune_from_projector_layer: ClassVar[int] = 1

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_hidden_dim: int | None = None,
        proj_dim: int = 128,
        num_proj_layers: int = 3,
        temperature: float = 0.1,
        **kwargs: Any,
    ) -> None:
        check_positive("simclrv2", temperature=temperature)
        super().__init__(
            backbone, feature_size, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim,
            num_proj_layers=num_proj_layers, temperature=temperature, **kwargs,
        )  # fmt: skip

    def head_sizes(self, **widths: int | None) -> dict[str, int]:
        """SimCLR's widths, with ``proj_hidden_dim=None`` meaning the backbone's feature size
        (recorded as that number, so a rebuild gives the same projector)."""
        if "proj_hidden_dim" in widths and widths["proj_hidden_dim"] is None:
            widths["proj_hidden_dim"] = self.feature_dim
        return super().head_sizes(**widths)
