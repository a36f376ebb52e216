"""SupCon (Khosla et al. 2020)."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from selfsup.losses import supcon_loss
from selfsup.methods.base import LossOutput, check_positive, register
from selfsup.methods.simclr import SimCLR


@register("supcon")
class SupCon(SimCLR):
    """Supervised contrastive learning: SimCLR whose positives are all views of the same class.

    Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu & Krishnan, "Supervised
    Contrastive Learning", NeurIPS 2020, eq. 2 (L^sup_out). Over the 2N views I, with
    A(i) = I minus i and P(i) the views in A(i) of i's class:
        L = mean_i -1/|P(i)| sum_{p in P(i)} log exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t)
    (the paper sums over i; the mean is the official code's). Details in ``supcon_loss``.

    Labels: the trainer passes ``labels`` (int64 [B]) because of ``batch_fields``. A sample
    labelled -1 is unlabelled: its only positive is its own other view (SimCLR's), so partly
    labelled data trains too. ``training_loss(views)`` without labels (or ``method(images)``)
    treats every sample as unlabelled, which is exactly SimCLR with this temperature.

    Defaults (paper): temperature 0.1; projector as SimCLR's (Linear(2048)-BN-ReLU-Linear(128);
    the paper's is 2048 -> 128), SimCLR's views. ``base_temperature`` None keeps eq. 2; the
    official code scales the loss by t / 0.07. Not implemented: L^sup_in (eq. 3), worse in the
    paper; more than two views per image.
    """

    view_recipe = "simclr"
    batch_fields: ClassVar[tuple[str, ...]] = ("labels",)

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        temperature: float = 0.1,
        base_temperature: float | None = None,
        **kwargs: Any,
    ) -> None:
        check_positive("supcon", temperature=temperature)
        if base_temperature is not None:
            check_positive("supcon", base_temperature=base_temperature)
        super().__init__(backbone, feature_size, temperature=temperature, **kwargs)
        self.base_temperature = base_temperature

    def training_loss(self, views: list[Tensor], labels: Tensor | None = None) -> LossOutput:
        out = super().training_loss(views, labels=labels)
        if labels is not None:
            out.logs["labelled_fraction"] = (labels >= 0).float().mean()
        return out

    def pair_loss(self, z1: Tensor, z2: Tensor, labels: Tensor | None = None) -> Tensor:
        return supcon_loss(z1, z2, labels, self.temperature, self.base_temperature)
