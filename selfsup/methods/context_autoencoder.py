"""Context autoencoder (Pathak et al. 2016), Super-Selfish's random-block variant."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.methods.autoencoder import AutoencoderMethod
from selfsup.methods.base import check_non_negative, check_positive, register
from selfsup.views.sampling import check_probability, check_range, rand


def random_blocks(
    like: Tensor,
    num_blocks: int,
    block_p: float,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per sample, ``num_blocks`` candidate rectangles, each erased with probability
    ``block_p`` (torchvision's RandomErasing applied ``num_blocks`` times, as Super-Selfish):
    area U(``scale``) x H W, aspect ratio w / h log-uniform in ``ratio``, position uniform
    inside the image. Sizes follow the image (1 px at least); every draw is per sample.
    like: [B, C, H, W]. Returns the erased region, bool [B, 1, H, W].
    """
    b, _, h, w = like.shape
    draws = rand((5, b, num_blocks, 1, 1), like, generator)
    kept = draws[0] < block_p
    area = (scale[0] + (scale[1] - scale[0]) * draws[1]) * (h * w)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * draws[2])
    heights = (area / aspect).sqrt().round().clamp(1, h)
    widths = (area * aspect).sqrt().round().clamp(1, w)
    tops = (draws[3] * (h - heights + 1)).floor()
    lefts = (draws[4] * (w - widths + 1)).floor()
    rows = torch.arange(h, device=like.device, dtype=heights.dtype).view(1, 1, h, 1)
    cols = torch.arange(w, device=like.device, dtype=widths.dtype).view(1, 1, 1, w)
    inside = (rows >= tops) & (rows < tops + heights) & (cols >= lefts) & (cols < lefts + widths)
    return (inside & kept).any(dim=1, keepdim=True)


@register("context_ae")
class ContextAutoencoder(AutoencoderMethod):
    """Context autoencoder: erase regions of the view and reconstruct them from their context.

    Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context Encoders: Feature Learning by
    Inpainting", CVPR 2016, eq. 1: with M the erased region (1 there), x the view, F the
    backbone (encoder) and the decoder on its last feature map,
        L_rec = || M . (x - F((1 - M) . x)) ||^2,
    here per sample normalised by the size of its region (a sample's erased share varies) and
    averaged over samples (``losses.reconstruction_mse``); ``context_weight`` > 0 adds that
    weight times the same error over the kept pixels (1 - M), so the context is reconstructed
    too, more lightly (0, the default: the erased region only, as eq. 1). Wafer maps: the
    cross-entropy over the 3 die codes instead (``methods.autoencoder``).
    Shapes: views 1 x [B, C, H, W]; region [B, 1, H, W]; reconstruction [B, C, H, W].

    Regions (Super-Selfish's ContextAutoencoder, not the paper's central square or random
    segmentation-shaped regions): ``num_blocks`` (10) candidate rectangles per image, each
    erased with probability ``block_p`` (0.3), of ``block_scale`` (5-10 %) of the image's area
    and aspect ratio in ``block_ratio`` (0.3-3.3), so about 20 % of the image is erased on
    average (the paper erases about 25 %); every sample draws its own, batched. Erased pixels
    are set to 0 in the view (the dataset mean after normalisation, as the paper's code fills
    the hole with the mean colour; wafer maps: code 0, off-wafer). A sample with no block
    (0.7^10, 3 % of them) has nothing to reconstruct and adds 0 to the batch mean.

    Departures, on purpose: no adversarial term (the paper's joint loss adds a GAN
    discriminator to sharpen the inpainting; the encoder's features come from the
    reconstruction either way), and no flag offering it: it is not implemented. No
    channel-wise fully connected layer between encoder and decoder: the decoder reads the
    backbone's feature map directly (``decoders.ConvDecoder``). The paper's code also
    predicts a thin border of context around the hole with a larger weight; not reproduced.
    View recipe "autoencoder".
    """

    paste_reconstruction = True

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        num_blocks: int = 10,
        block_p: float = 0.3,
        block_scale: tuple[float, float] = (0.05, 0.1),
        block_ratio: tuple[float, float] = (0.3, 3.3),
        context_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or num_blocks < 1:
            raise ValueError(f"context_ae: num_blocks must be an integer >= 1, got {num_blocks!r}")
        check_probability(block_p, "context_ae: block_p")
        block_scale, block_ratio = tuple(block_scale), tuple(block_ratio)
        check_range(block_scale, "context_ae: block_scale", minimum=0.0)
        if block_scale[1] > 1.0 or block_scale[1] <= 0.0:
            raise ValueError(f"context_ae: block_scale must lie in (0, 1], got {block_scale}")
        check_range(block_ratio, "context_ae: block_ratio", minimum=0.0)
        check_positive("context_ae", block_ratio_low=block_ratio[0])
        check_non_negative("context_ae", context_weight=context_weight)
        super().__init__(backbone, feature_size, **kwargs)
        self.num_blocks = num_blocks
        self.block_p = block_p
        self.block_scale = block_scale
        self.block_ratio = block_ratio
        self.context_weight = context_weight

    def corrupt(
        self, view: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        region = random_blocks(
            view, self.num_blocks, self.block_p, self.block_scale, self.block_ratio, generator
        )
        return view.masked_fill(region, 0.0), region

    def reconstruction_loss(self, output: Tensor, view: Tensor, region: Tensor | None) -> Tensor:
        loss = super().reconstruction_loss(output, view, region)
        if self.context_weight > 0 and region is not None:
            loss = loss + self.context_weight * super().reconstruction_loss(output, view, ~region)
        return loss
