"""Denoising autoencoder (Vincent, Larochelle, Bengio & Manzagol 2008)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from selfsup.methods.autoencoder import AutoencoderMethod, view_fill_and_scale
from selfsup.methods.base import check_positive, register
from selfsup.views.sampling import rand

NOISE_KINDS = ("masking", "gaussian")


def masking_noise(
    x: Tensor,
    fraction: float,
    fill: Tensor,
    *,
    per_channel: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Vincent et al.'s masking noise q_D: in every sample, round(``fraction`` d) of its d
    components, chosen at random, are forced to ``fill`` (the value of 0 in pixel units).

    A component is one value (``per_channel``) or one position across all channels (a die of
    a wafer map). Each sample draws its own set. x: [B, C, H, W]; fill: [1, C, 1, 1].
    Returns (corrupted x, mask [B, C or 1, H, W] bool, True where forced).
    """
    b, c, h, w = x.shape
    shape = (b, c, h, w) if per_channel else (b, 1, h, w)
    components = shape[1] * h * w
    count = round(fraction * components)
    if count == 0:
        return x, torch.zeros(shape, dtype=torch.bool, device=x.device)
    scores = rand((b, components), x, generator)
    threshold = scores.kthvalue(count, dim=1, keepdim=True).values
    mask = (scores <= threshold).view(shape)
    return torch.where(mask, fill.to(x.dtype), x), mask


def gaussian_noise(
    x: Tensor, std: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, None]:
    """Additive isotropic Gaussian noise x + std_c N(0, 1) (Vincent et al., JMLR 2010, sec. 4.1),
    a draw per value. x: [B, C, H, W]; std: [1, C, 1, 1] in view units. Returns (x~, None)."""
    device = generator.device if generator is not None else x.device
    noise = torch.randn(tuple(x.shape), generator=generator, device=device).to(x.device)
    return x + noise * std.to(x.dtype), None


@register("denoising_ae")
class DenoisingAutoencoder(AutoencoderMethod):
    """Denoising autoencoder: reconstruct the clean view from a corrupted copy of it.

    Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing Robust Features with
    Denoising Autoencoders", ICML 2008, sec. 2.3: with x~ ~ q_D(x~ | x) the corrupted input,
    f the encoder (the backbone) and g the decoder (``decoders.ConvDecoder`` on its last
    feature map),
        L = E_x E_{x~ ~ q_D} || x - g(f(x~)) ||^2    (averaged over pixels and samples),
    on every pixel, corrupted or not (the paper's loss on all components). Wafer maps: the
    cross-entropy over the 3 die codes of every die instead (``methods.autoencoder``).
    Shapes: views 1 x [B, C, H, W]; feature map [B, D, h, w]; reconstruction [B, C, H, W].

    Corruption (``noise``, batched, each sample its own draw): "masking" (the paper's q_D):
    round(``noise_fraction`` d) of each image's d values, chosen at random, set to 0 in pixel
    units (black; the view's normalised value of 0; wafer maps: a whole die set to code 0,
    off-wafer, so the two channels of "fail_mask" views stay consistent); "gaussian"
    (Vincent et al., JMLR 2010): x + N(0, ``noise_std``^2) per value, ``noise_std`` in pixel
    units ([0, 1]; wafer maps: in the units of the view, code / 2 or 0/1).

    Defaults: masking noise with fraction 0.25 (the paper chooses the destruction fraction per
    dataset on validation data, among 10 %, 25 % and 40 %; Super-Selfish uses 0.7 on whole
    pixels); noise_std 0.1 (our choice). View recipe "autoencoder": crop 0.5-1 and flip.

    Departures: the paper stacks one-hidden-layer autoencoders with tied weights and a
    cross-entropy on [0, 1] inputs; here the encoder is any conv backbone, the decoder a
    small upsampling ConvNet (Super-Selfish's design) and the loss on natural images the
    squared error (the paper's choice for real-valued inputs).
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        noise: str = "masking",
        noise_fraction: float = 0.25,
        noise_std: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if noise not in NOISE_KINDS:
            raise ValueError(f"denoising_ae: noise must be one of {NOISE_KINDS}, got {noise!r}")
        if not 0.0 <= noise_fraction <= 1.0:
            raise ValueError(
                f"denoising_ae: noise_fraction must be in [0, 1], got {noise_fraction}"
            )
        check_positive("denoising_ae", noise_std=noise_std)
        super().__init__(backbone, feature_size, **kwargs)
        self.noise = noise
        self.noise_fraction = noise_fraction
        self.noise_std = noise_std

    def corrupt(
        self, view: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        fill, scale = view_fill_and_scale(self.views, self.view_style, view.shape[1], view)
        if self.noise == "gaussian":
            return gaussian_noise(view, self.noise_std * scale, generator)[0], None
        corrupted, _ = masking_noise(
            view, self.noise_fraction, fill, per_channel=self.view_style != "wafer",
            generator=generator,
        )  # fmt: skip
        return corrupted, None  # the loss counts every pixel
