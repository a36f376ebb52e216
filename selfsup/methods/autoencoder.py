"""What the autoencoder methods share: the decoder from the backbone's last feature map, the
reconstruction target and loss of each view style, and the pictures for the run report.

``DecodingMethod`` holds what every method with decoders shares (``encoder`` = the backbone,
``build_decoder``); ``AutoencoderMethod`` is the base of ``denoising_ae`` and ``context_ae``: a
subclass says only how it corrupts a view (``corrupt``) and where the error counts.
``split_brain`` (two encoders, ``DecodingMethod``) uses the helpers below for its pictures.

Targets: natural images are reconstructed as the view's normalised values (squared error,
``losses.reconstruction_mse``). Wafer maps are reconstructed as die codes, a cross-entropy over
the 3 codes per die (``losses.reconstruction_cross_entropy``): the codes are categories
(off-wafer / pass / fail), and a squared error on code / 2 would score a fail die predicted as
"pass" half as wrong as one predicted "off-wafer" and reward blurred 0.75 values between them;
the decoder gives 3 logits per die and the reconstruction is their argmax.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from selfsup.decoders import ConvDecoder, decoder_for
from selfsup.losses.reconstruction import reconstruction_cross_entropy, reconstruction_mse
from selfsup.methods.base import LossOutput, Method, embedding_std
from selfsup.views.wafer import FAIL, encode_codes

NUM_CODES = FAIL + 1  # wafer die codes 0 (off-wafer), 1 (pass), 2 (fail)
DECODER_MIN_WIDTH = 16  # the decoder's widths halve from the backbone's D down to this


# --- views <-> pixels ---------------------------------------------------------------------------


def view_encoding(views: Any) -> str:
    """The wafer encoding of ``views`` ("codes": code / 2, "fail_mask": two 0/1 channels)."""
    return getattr(views, "encoding", "codes")


def wafer_codes(view: Tensor, encoding: str) -> Tensor:
    """Die codes (int64 [B, C, H, W] in {0, 1, 2}) of a wafer view: round(2 x) for "codes"
    views (C channels), fail + on-wafer for "fail_mask" views (2 channels -> 1)."""
    if encoding == "fail_mask":
        return (view[:, 0:1].round() + view[:, 1:2].round()).long().clamp_(0, FAIL)
    return (view * 2).round().long().clamp_(0, FAIL)


def encode_wafer_view(codes: Tensor, encoding: str) -> Tensor:
    """Die codes [B, C, H, W] back to a view as the wafer recipes give it (float32)."""
    x = encode_codes(codes.float(), encoding)
    return x * 0.5 if encoding == "codes" else x


def view_fill_and_scale(
    views: Any, style: str, channels: int, like: Tensor
) -> tuple[Tensor, Tensor]:
    """Per channel [1, C, 1, 1]: the view value of a black pixel (0 in [0, 1] pixel units)
    and the view units per pixel unit (1 / std of the normalisation). Wafer maps and views
    without a normalisation: 0 and 1 (a wafer 0 is off-wafer in both encodings)."""
    mean, std = getattr(views, "mean", None), getattr(views, "std", None)
    if style == "wafer" or mean is None or std is None or len(mean) != channels:
        zeros = like.new_zeros(1, channels, 1, 1)
        return zeros, zeros + 1
    m = like.new_tensor(list(mean)).view(1, -1, 1, 1)
    s = like.new_tensor(list(std)).view(1, -1, 1, 1)
    return -m / s, 1 / s


def displayable(view: Tensor, views: Any, style: str) -> Tensor:
    """A view batch as uint8 images [B, C, H, W] on the CPU, for the run report: natural
    views un-normalised (x std + mean) to 0-255; wafer views as grey levels 0 / 128 / 255 for
    off-wafer / pass / fail (one channel per code channel)."""
    view = view.detach().float()
    if style == "wafer":
        return (wafer_codes(view, view_encoding(views)) * 127.5).round().to(torch.uint8).cpu()
    fill, scale = view_fill_and_scale(views, style, view.shape[1], view)
    pixels = (view - fill) / scale  # back to [0, 1] pixel units
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def pooled(feature_map: Tensor) -> Tensor:
    """Global average of a feature map [B, D, h, w] -> [B, D] (what the backbone pools)."""
    return feature_map.mean(dim=(2, 3))


# --- the base classes ---------------------------------------------------------------------------


class DecodingMethod(Method):
    """A method whose heads are decoders of the backbone's last feature map: ``encoder`` and
    ``embed`` give the backbone's pooled features [B, D] (no head sits between them and the
    loss). The backbone must have a known last feature map (``Backbone.feature_map``:
    registered conv backbones, timm conv nets, a user's ``nn.Sequential`` ending in
    AdaptiveAvgPool2d + Flatten); any other is refused when the method is built."""

    view_recipe = "autoencoder"

    @property
    def encoder(self) -> nn.Sequential:
        """The backbone alone: images -> pooled features [B, D] (the decoder reads its map)."""
        return nn.Sequential(self.backbone)

    def build_decoder(
        self, out_channels: int, *, output_size: int | None = None, in_channels: int | None = None
    ) -> ConvDecoder:
        """``decoders.decoder_for`` on this method's backbone and image size; a backbone
        without a known feature map is refused with the method's name."""
        try:
            return decoder_for(
                self.backbone, self.image_size, out_channels, output_size=output_size,
                in_channels=in_channels, min_width=DECODER_MIN_WIDTH,
            )  # fmt: skip
        except ValueError as err:
            raise ValueError(f"{self.method_name} decodes the last feature map: {err}") from None


class AutoencoderMethod(DecodingMethod):
    """Corrupt the view, encode it with the backbone, decode the last feature map
    (``decoders.ConvDecoder``) back to the view's size, score the reconstruction of the clean
    view where the subclass says (``corrupt`` returns the region, None: every pixel).

    Shapes: views 1 x [B, C, H, W]; feature map [B, D, h, w]; reconstruction [B, C, H, W]
    (wafer maps: [B, 3 C, H, W] code logits).
    """

    # the inpainting methods show the prediction inside the erased region only
    paste_reconstruction = False

    def __init__(
        self, backbone: str | nn.Module = "resnet18", feature_size: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(backbone, feature_size, **kwargs)
        out = (
            NUM_CODES * self.in_channels
            if self.view_style == "wafer"
            else self.backbone.in_channels
        )
        self.decoder = self.build_decoder(out)

    def corrupt(
        self, view: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(corrupted view, region where the reconstruction error counts or None: all)."""
        raise NotImplementedError

    def reconstruct(self, corrupted: Tensor) -> Tensor:
        """The decoder's output for a corrupted view: values [B, C, H, W] (wafer: logits)."""
        return self.decoder(self.backbone.feature_map(corrupted), tuple(corrupted.shape[-2:]))

    def reconstruction_loss(self, output: Tensor, view: Tensor, region: Tensor | None) -> Tensor:
        """Squared error on the view (natural) or cross-entropy over die codes (wafer)."""
        if self.view_style != "wafer":
            return reconstruction_mse(output, view, region)
        codes = wafer_codes(view, view_encoding(self.views))
        logits = output.unflatten(1, (NUM_CODES, codes.shape[1]))  # [B, 3, C, H, W]
        return reconstruction_cross_entropy(logits, codes, region)

    def reconstructed_view(self, output: Tensor) -> Tensor:
        """The decoder's output as a view: itself, or the argmax die codes re-encoded."""
        if self.view_style != "wafer":
            return output.float()
        codes = output.unflatten(1, (NUM_CODES, -1)).argmax(dim=1)
        return encode_wafer_view(codes, view_encoding(self.views))

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 1:
            raise ValueError(f"{self.method_name} needs 1 view per image, got {len(views)}")
        view = views[0]
        corrupted, region = self.corrupt(view)
        feature_map = self.backbone.feature_map(corrupted)
        output = self.decoder(feature_map, tuple(view.shape[-2:]))
        loss = self.reconstruction_loss(output, view, region)
        return LossOutput(loss, logs={"collapse_std": embedding_std(pooled(feature_map))})

    @torch.no_grad()
    def reconstruction_examples(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Pictures for the run report, each a uint8 batch [B, C, H, W] on the CPU:
        "inputs" (the images as the model sees them: ``views.preprocess``), "corrupted" (what
        the backbone got) and "reconstructions" (the decoder's output; context_ae pastes it
        into the erased region only). Eval mode; the corruption draws from ``generator``
        (default: seeded with 0, so the same images give the same pictures)."""
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            x = self.views.preprocess(images) if hasattr(self.views, "preprocess") else images
            x = x.float().to(device)
            generator = generator if generator is not None else torch.Generator().manual_seed(0)
            corrupted, region = self.corrupt(x, generator)
            shown = self.reconstructed_view(self.reconstruct(corrupted))
            if self.paste_reconstruction and region is not None:
                shown = torch.where(region.bool(), shown, x)
            return {
                name: displayable(batch, self.views, self.view_style)
                for name, batch in (
                    ("inputs", x),
                    ("corrupted", corrupted),
                    ("reconstructions", shown),
                )
            }
        finally:
            self.train(was_training)
