"""Split-brain autoencoder (Zhang, Isola & Efros 2017): two halves, each predicting the other's
channels."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.backbones import ChannelSplit
from selfsup.losses.reconstruction import reconstruction_cross_entropy
from selfsup.methods.autoencoder import (
    DecodingMethod,
    displayable,
    encode_wafer_view,
    pooled,
)
from selfsup.methods.base import (
    _ARGUMENTS,
    _EXPLICIT,
    LossOutput,
    check_positive,
    embedding_std,
    register,
)
from selfsup.methods.split_encoders import check_view_channels, two_encoder_backbone
from selfsup.views.color import LAB_RANGES, lab_to_rgb

SPLITS = ("auto", "lab", "wafer_channels")
# what half i predicts (from its own channel group), for the logs
TASKS = {
    "lab": ("ab_from_l", "l_from_ab"),
    "wafer_channels": ("wafer_from_fails", "fails_from_wafer"),
}
# prediction_stride=None: the colour halves predict at 1/4 of the image (Zhang et al. 2016's
# colorization resolution, 56 x 56 at 224 px; keeps 399 logits per position affordable), the
# binary wafer halves die by die
STRIDES = {"lab": 4, "wafer_channels": 1}


def resolve_split(split: str, in_channels: int, view_style: str, backbone: Any) -> str:
    """The split split_brain trains with: "lab" (RGB natural images) or "wafer_channels"
    (1-channel wafer maps); "auto" picks one from the data. Data or a backbone without two
    channel groups is refused with the reason and what works instead."""
    if split not in SPLITS:
        raise ValueError(f"split_brain: split must be one of {SPLITS}, got {split!r}")
    if isinstance(backbone, nn.Module):
        raise ValueError(
            f"split_brain needs one encoder per channel group (L: 1 channel, ab: 2; wafer maps: "
            f"1 and 1), which your module '{type(backbone).__name__}' (one network for the "
            "whole image) is not; use a registered backbone name (each half is built from "
            "it), or denoising_ae / context_ae, which train your module"
        )
    lab = view_style == "natural" and in_channels == 3
    wafer = view_style == "wafer" and in_channels == 1
    if split == "auto":
        if lab or wafer:
            return "lab" if lab else "wafer_channels"
        kind = "grey (1-channel)" if in_channels == 1 else f"{in_channels}-channel"
        raise ValueError(
            f"split_brain predicts one group of an image's channels from another (ab from L "
            f"and L from ab of RGB images; wafer maps: the wafer from its fail dies and back), "
            f"and {kind} {view_style} images have no such split; use "
            "denoising_ae or context_ae, which reconstruct any image"
        )
    if split == "lab" and not lab:
        raise ValueError(
            f"split_brain: split 'lab' needs RGB images (in_channels=3, view_style='natural'), "
            f"got in_channels={in_channels}, view_style={view_style!r}"
        )
    if split == "wafer_channels" and not wafer:
        raise ValueError(
            f"split_brain: split 'wafer_channels' needs 1-channel wafer maps (in_channels=1, "
            f"view_style='wafer'), got in_channels={in_channels}, view_style={view_style!r}"
        )
    return split


# --- quantisation -------------------------------------------------------------------------------


def ab_grid(grid_size: float) -> tuple[int, int]:
    """(cells along a, cells along b) of a grid of ``grid_size`` over ``LAB_RANGES``."""
    (a_low, a_high), (b_low, b_high) = LAB_RANGES[1], LAB_RANGES[2]
    return math.ceil((a_high - a_low) / grid_size), math.ceil((b_high - b_low) / grid_size)


def quantise_ab(ab: Tensor, grid_size: float) -> Tensor:
    """The grid cell of each (a, b): [B, 2, H, W] -> int64 [B, H, W], index i_a n_b + i_b."""
    n_a, n_b = ab_grid(grid_size)
    low = ab.new_tensor([LAB_RANGES[1][0], LAB_RANGES[2][0]]).view(1, 2, 1, 1)
    cells = ((ab - low) / grid_size).floor().long()
    i_a = cells[:, 0].clamp(0, n_a - 1)
    return i_a * n_b + cells[:, 1].clamp(0, n_b - 1)


def ab_bin_centres(grid_size: float, like: Tensor) -> Tensor:
    """The (a, b) centre of every ab cell, [n_a n_b, 2], in ``quantise_ab`` order."""
    n_a, n_b = ab_grid(grid_size)
    a = LAB_RANGES[1][0] + (torch.arange(n_a, device=like.device) + 0.5) * grid_size
    b = LAB_RANGES[2][0] + (torch.arange(n_b, device=like.device) + 0.5) * grid_size
    return torch.stack(torch.meshgrid(a, b, indexing="ij"), dim=-1).reshape(-1, 2).float()


def quantise_lightness(lightness: Tensor, num_bins: int) -> Tensor:
    """L in [0, 100] -> int64 bins of equal width: floor(L num_bins / 100), in [0, num_bins)."""
    top = LAB_RANGES[0][1]
    return (lightness * (num_bins / top)).floor().long().clamp(0, num_bins - 1)


def lightness_centres(num_bins: int, like: Tensor) -> Tensor:
    """The L at the centre of every lightness bin, [num_bins]."""
    width = LAB_RANGES[0][1] / num_bins
    return (torch.arange(num_bins, device=like.device) + 0.5).float() * width


def expected_value(logits: Tensor, centres: Tensor) -> Tensor:
    """sum_q softmax(logits)_q centre_q per position: logits [B, Q, h, w], centres [Q] or
    [Q, k] -> [B, k, h, w] (k = 1 for [Q])."""
    probabilities = logits.float().softmax(dim=1)
    centres = centres.view(centres.shape[0], -1)
    return torch.einsum("bqhw,qk->bkhw", probabilities, centres)


@register("split_brain")
class SplitBrain(DecodingMethod):
    """Split-brain autoencoder: two disjoint halves of the network, each predicting the channels
    the other one sees.

    Zhang, Isola & Efros, "Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel
    Prediction", CVPR 2017, sec. 3: the image X splits into X1 and X2 (L and ab of L*a*b*),
    F1 predicts X2 from X1 and F2 predicts X1 from X2, each as a classification over
    quantised values at every position,
        L = sum_p l(F1(X1), Q(X2)) + l(F2(X2), Q(X1)),   l: cross-entropy over the bins,
    (the paper reports classification better than regression). Here F_i = trunk i of a
    ``channel_split`` backbone (``methods.split_encoders``, shared with CMC) followed by a
    ``decoders.ConvDecoder`` on its last feature map; the cross-entropy is averaged over the
    positions of the decoder's output (``prediction_stride``) and the samples
    (``losses.reconstruction_cross_entropy``), the two halves' losses summed.
    Shapes: views 1 x [B, 3, H, W]; feature maps [B, D_i, h, w]; logits [B, Q_i, H/s, W/s].

    Splits (``split``, resolved when built and recorded): "lab" for RGB natural images (the
    backbone converts the normalised RGB to L*a*b*); the L half predicts ab bins, the ab half
    L bins. "wafer_channels" for 1-channel wafer maps (views in the "fail_mask" encoding, as
    CMC): the fail-die half predicts the on-wafer mask and the on-wafer half the fail dies,
    2 classes each, die by die. Grey images have no second group of channels and are refused
    (use denoising_ae or context_ae); so is a user's module, one network for the whole image.

    Targets: the view's L*a*b* averaged over each output cell (``prediction_stride`` x
    ``prediction_stride`` pixels), then binned: ab on a grid of ``ab_grid_size`` (10, the
    paper's grid) over the sRGB range of a and b (``LAB_RANGES``: 19 x 21 = 399 bins; the
    paper keeps the 313 of them in gamut, the rest are never a target here and the classifier
    learns to leave them), L in ``lightness_bins`` (100) bins of equal width. No soft-encoding
    or class rebalancing (the colorization paper's, Zhang et al. 2016): hard bins, plain
    cross-entropy. Wafer cells: the mask averaged over the cell, rounded.

    Defaults: ``encoder_width`` 0.5 (each half at half the named backbone's width, the paper
    splits AlexNet's filters in two; backbones without a ``width`` keyword keep theirs and
    record 1.0), ``prediction_stride`` 4 for "lab" and 1 for wafer maps. ``backbone``, ``embed``
    and ``encoder`` give both halves' pooled features [B, D1 + D2] (what the paper evaluates);
    the exported backbone is a registered "channel_split", reloadable by ``load_backbone``.
    View recipe "autoencoder" (crop 0.5-1 and flip, no colour operations).
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        split: str = "auto",
        encoder_width: float = 0.5,
        ab_grid_size: float = 10.0,
        lightness_bins: int = 100,
        prediction_stride: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_positive("split_brain", encoder_width=encoder_width, ab_grid_size=ab_grid_size)
        for name, value in (
            ("lightness_bins", lightness_bins),
            ("prediction_stride", prediction_stride),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"split_brain: {name} must be an integer >= 1, got {value!r}")
        if lightness_bins < 2:
            raise ValueError(f"split_brain: lightness_bins must be >= 2, got {lightness_bins}")
        super().__init__(backbone, feature_size, **kwargs)
        self.split = resolve_split(split, self.in_channels, self.view_style, backbone)
        check_view_channels("split_brain", self.split, self.backbone.in_channels)
        record = self.__dict__[_ARGUMENTS]
        composite, self.encoder_width = two_encoder_backbone(
            "split_brain", backbone, self.split, in_channels=self.backbone.in_channels,
            encoder_width=encoder_width, explicit_width="encoder_width" in record[_EXPLICIT],
            backbone_kwargs=record.get("backbone_kwargs"), views=self.views,
        )  # fmt: skip
        self.backbone: ChannelSplit = composite
        self.prediction_stride = prediction_stride or STRIDES[self.split]
        record.update(
            split=self.split, encoder_width=self.encoder_width,
            prediction_stride=self.prediction_stride,
        )  # fmt: skip
        self.feature_dim = self.backbone.feature_dim
        self.half_dims = [trunk.feature_dim for trunk in self.backbone.trunk]
        self.ab_grid_size = float(ab_grid_size)
        self.lightness_bins = lightness_bins
        if self.split == "lab":
            n_a, n_b = ab_grid(self.ab_grid_size)
            classes = [n_a * n_b, lightness_bins]  # the L half predicts ab, the ab half L
        else:
            classes = [2, 2]
        output_size = math.ceil(self.image_size / self.prediction_stride)
        self.decoders = nn.ModuleList(
            self.build_decoder(k, output_size=output_size, in_channels=d)
            for k, d in zip(classes, self.half_dims, strict=True)
        )

    @classmethod
    def view_overrides(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        split = resolve_split(
            arguments["split"], arguments["in_channels"], arguments["view_style"],
            arguments["backbone"],
        )  # fmt: skip
        return {"encoding": "fail_mask"} if split == "wafer_channels" else {}

    # -- targets and predictions -------------------------------------------------------------

    def output_size(self, view: Tensor) -> tuple[int, int]:
        """The positions the halves predict: the view's size / ``prediction_stride``."""
        h, w = view.shape[-2:]
        return math.ceil(h / self.prediction_stride), math.ceil(w / self.prediction_stride)

    def channels(self, view: Tensor) -> Tensor:
        """What the split separates: L*a*b* (L in [0, 100]) or the two wafer masks, float32."""
        x = self.backbone.model_input(view).float()
        if self.split != "lab":
            return x
        low = x.new_tensor([r[0] for r in LAB_RANGES]).view(1, 3, 1, 1)
        high = x.new_tensor([r[1] for r in LAB_RANGES]).view(1, 3, 1, 1)
        return (x + 1) / 2 * (high - low) + low  # undo the backbone's scaling to [-1, 1]

    @torch.no_grad()
    def targets(self, view: Tensor) -> list[Tensor]:
        """Each half's classes [B, h, w] (int64): the other half's channels, averaged over
        the output cells and quantised."""
        cells = F.interpolate(self.channels(view), size=self.output_size(view), mode="area")
        if self.split == "lab":
            ab = quantise_ab(cells[:, 1:], self.ab_grid_size)
            return [ab, quantise_lightness(cells[:, 0], self.lightness_bins)]
        masks = cells.round().long()  # (fail, on-wafer): each half predicts the other's
        return [masks[:, 1], masks[:, 0]]

    def decode(self, feature_map: Tensor, size: tuple[int, int]) -> list[Tensor]:
        """Each half's logits [B, Q_i, h, w] from the backbone's feature map [B, D1 + D2, ...]."""
        maps = feature_map.split(self.half_dims, dim=1)
        return [decoder(m, size) for decoder, m in zip(self.decoders, maps, strict=True)]

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 1:
            raise ValueError(f"split_brain needs 1 view per image, got {len(views)}")
        view = views[0]
        feature_map = self.backbone.feature_map(view)
        logits = self.decode(feature_map, self.output_size(view))
        losses = [
            reconstruction_cross_entropy(scores, target)
            for scores, target in zip(logits, self.targets(view), strict=True)
        ]
        logs: dict[str, Any] = {"collapse_std": embedding_std(pooled(feature_map))}
        for task, loss in zip(TASKS[self.split], losses, strict=True):
            logs[f"loss_{task}"] = loss.detach()
        return LossOutput(losses[0] + losses[1], logs=logs)

    # -- pictures --------------------------------------------------------------------------------

    @torch.no_grad()
    def reconstruction_examples(self, images: Tensor) -> dict[str, Tensor]:
        """Pictures for the run report, uint8 batches [B, C, H, W] on the CPU: "inputs" (as the
        model sees them), "corrupted" and "corrupted_2" (what each half sees), "reconstructions"
        and "reconstructions_2" (each half's prediction put together with the channels it was
        given). RGB: the L half's input shown grey, the ab half's at L = 50; its predictions
        are the softmax-weighted bin centres (upsampled to the image), so "reconstructions" is
        the image recoloured from L, "reconstructions_2" relit from ab. Wafer maps (grey
        levels 0 / 128 / 255 = off-wafer / pass / fail): the fail dies alone, the wafer alone,
        the predicted wafer with the true fails, the predicted fails on the true wafer."""
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            view = self.views.preprocess(images).float().to(device)
            size = tuple(view.shape[-2:])
            logits = self.decode(self.backbone.feature_map(view), self.output_size(view))
            channels = self.channels(view)
            if self.split == "lab":
                pictures = self._lab_pictures(channels, logits, size)
            else:
                pictures = self._wafer_pictures(channels, logits, size)
            return {"inputs": displayable(view, self.views, self.view_style), **pictures}
        finally:
            self.train(was_training)

    def _lab_pictures(
        self, lab: Tensor, logits: list[Tensor], size: tuple[int, int]
    ) -> dict[str, Tensor]:
        ab = expected_value(logits[0], ab_bin_centres(self.ab_grid_size, lab))
        lightness = expected_value(logits[1], lightness_centres(self.lightness_bins, lab))
        ab, lightness = (F.interpolate(p, size=size, mode="bilinear") for p in (ab, lightness))
        grey, mid = torch.zeros_like(lab[:, 1:]), torch.full_like(lab[:, :1], 50.0)
        shown = {
            "corrupted": (lab[:, :1], grey),
            "corrupted_2": (mid, lab[:, 1:]),
            "reconstructions": (lab[:, :1], ab),
            "reconstructions_2": (lightness, lab[:, 1:]),
        }
        return {
            name: (lab_to_rgb(torch.cat(parts, 1)) * 255).round().to(torch.uint8).cpu()
            for name, parts in shown.items()
        }

    def _wafer_pictures(
        self, masks: Tensor, logits: list[Tensor], size: tuple[int, int]
    ) -> dict[str, Tensor]:
        fails, wafer = masks[:, :1].round().long(), masks[:, 1:].round().long()
        predicted = [F.interpolate(s.float(), size=size).argmax(1, keepdim=True) for s in logits]
        codes = {
            "corrupted": 2 * fails,
            "corrupted_2": wafer,
            "reconstructions": torch.maximum(predicted[0], fails) + fails,
            "reconstructions_2": wafer + predicted[1] * wafer,
        }
        return {
            name: displayable(encode_wafer_view(c, "codes"), None, "wafer")
            for name, c in codes.items()
        }
