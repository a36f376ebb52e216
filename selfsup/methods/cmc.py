"""CMC (Tian, Krishnan & Isola 2020): two encoders, one per view of an image's channels,
contrasted against each other's memory bank."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.backbones import ChannelSplit
from selfsup.methods.base import (
    _ARGUMENTS,
    _EXPLICIT,
    LossOutput,
    Method,
    check_positive,
    embedding_std,
    register,
)
from selfsup.methods.memory_bank import (
    BankContrast,
    MemoryBank,
    check_bank_arguments,
    require_indices,
)
from selfsup.methods.split_encoders import (
    check_view_channels,
    full_width,
    two_encoder_backbone,
)

SPLITS = ("auto", "lab", "wafer_channels", "views")


class ViewProjector(nn.Module):
    """One Linear per view's encoder: the composite's features [B, D1 + D2] -> [B, 2 * out_dim],
    each block by its own layer (``project`` keeps the blocks apart for the loss)."""

    def __init__(self, in_dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.in_dims = list(in_dims)
        self.layers = nn.ModuleList(nn.Linear(d, out_dim) for d in self.in_dims)

    def project(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [layer(f) for layer, f in zip(self.layers, features, strict=True)]

    def forward(self, features: Tensor) -> Tensor:
        return torch.cat(self.project(features.split(self.in_dims, dim=1)), dim=1)


def resolve_split(split: str, in_channels: int, view_style: str, backbone: Any) -> str:
    """The split CMC trains with: ``split`` itself, or for "auto" lab (RGB natural images),
    wafer_channels (1-channel wafer maps) or views (anything else, and a user's own module).
    A split the data or backbone cannot give is refused with the reason."""
    if split not in SPLITS:
        raise ValueError(f"cmc: split must be one of {SPLITS}, got {split!r}")
    custom = isinstance(backbone, nn.Module)
    if split == "auto":
        if custom:
            return "views"
        if view_style == "wafer" and in_channels == 1:
            return "wafer_channels"
        return "lab" if view_style == "natural" and in_channels == 3 else "views"
    if custom and split != "views":
        raise ValueError(
            f"cmc: split '{split}' needs one encoder per channel group (L: 1 channel, ab: 2; "
            f"wafer maps: 1 and 1), which your module '{type(backbone).__name__}' (one "
            "network for the whole image) is not; use split='views' (two copies of your module "
            "on two augmented views, the default for your own module) or a registered backbone"
        )
    if split == "lab" and (view_style != "natural" or in_channels != 3):
        raise ValueError(
            f"cmc: split 'lab' needs RGB images (in_channels=3, view_style='natural'), got "
            f"in_channels={in_channels}, view_style={view_style!r}; use split='views'"
        )
    if split == "wafer_channels" and (view_style != "wafer" or in_channels != 1):
        raise ValueError(
            f"cmc: split 'wafer_channels' needs 1-channel wafer maps (in_channels=1, "
            f"view_style='wafer'), got in_channels={in_channels}, view_style={view_style!r}"
        )
    return split


@register("cmc")
class CMC(Method):
    """CMC: one encoder per view of an image, each view's feature contrasted with the other
    view's memory bank.

    Tian, Krishnan & Isola, "Contrastive Multiview Coding", ECCV 2020, sec. 3.2-3.3. With
    z1_i, z2_i the L2-normalised 128-d projections of image i's two views (each view through its
    own encoder f_1, f_2 and linear head) and M1, M2 the memory banks of the views' features,
        L = L^{V1,V2} + L^{V2,V1}                                                 (eq. 4)
    where L^{V1,V2} scores z1_i against M2 (positive M2[i], K noise rows drawn uniformly) with
    the binary NCE of Wu et al. (``nce_loss``, Z fixed at the first batch; their code's
    default) or, ``nce_kind="softmax"``, the cross-entropy over the 1 + K logits of
    temperature t (eq. 2, ``softmax_nce_loss``), via ``BankContrast`` (one normaliser per
    direction). After the loss each bank moves towards its own view:
        M_v[i] <- normalise(m M_v[i] + (1 - m) z_v_i)      (m = ``bank_momentum``).
    Shapes: views 1 x [B, C, H, W] (2 for split "views"); features [B, D1], [B, D2];
    z1, z2 [B, proj_dim]; banks [num_samples, proj_dim] float32 buffers.

    The views (``split``, resolved when the method is built and recorded as resolved):
    "lab": L against ab of the same crop (RGB natural images; the backbone converts the
    normalised RGB to L*a*b*, ``views.color.rgb_to_lab``, scaled to [-1, 1] as their code);
    "wafer_channels" (1-channel wafer maps): the fail-die channel against the on-wafer channel
    of the "fail_mask" encoding; "views": two augmented views of the same image, one per
    encoder (grey images, and a user's own module: two copies of it, as the L/ab split needs a
    1- and a 2-channel network); "auto" picks lab, wafer_channels or views from the data.
    ``backbone`` is a ``ChannelSplit`` over the two encoders: it takes the whole preprocessed
    image and returns [B, D1 + D2] (both views' features, what the paper evaluates), so kNN,
    probes, ``embed`` and the exported backbone (a registered "channel_split", reloadable by
    ``load_backbone``) use both. ``encoder`` = backbone + ``ViewProjector``: [B, 2 proj_dim].

    Defaults (paper and the official code): encoder_width 0.5 (each encoder at half the named
    backbone's width, so the pair costs about one network), 128-d linear heads, K = 4096,
    t = 0.07, m = 0.5, binary NCE, random resized crops 0.08-1 and flips before the split, no
    colour operations (recipe "cmc"); SGD lr 0.03, weight decay 1e-4. Needs each sample's
    dataset position (``indices``) and ``num_samples`` (``selfsup pretrain`` sets it).

    Departures: the width is halved only on backbones with a ``width`` keyword (convnet_*);
    ResNets, timm models and user modules keep their full width (encoder_width 1.0 is then
    recorded). The K negatives are drawn once per step for the whole global batch
    (``BankContrast``; the paper draws K per sample). A user's module is deep-copied, so both
    encoders start from the same weights. The paper's other view pairs (depth, flow, more
    than two views) are not here.
    """

    view_recipe = "cmc"
    batch_fields = ("indices",)
    optimizer_defaults = {"lr": 0.03, "weight_decay": 1e-4}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        split: str = "auto",
        encoder_width: float = 0.5,
        proj_dim: int = 128,
        num_samples: int | None = None,
        num_negatives: int = 4096,
        temperature: float = 0.07,
        bank_momentum: float = 0.5,
        nce_kind: str = "nce",
        **kwargs: Any,
    ) -> None:
        num_samples = check_bank_arguments(
            "cmc", num_samples, num_negatives=num_negatives, temperature=temperature,
            bank_momentum=bank_momentum, nce_kind=nce_kind,
        )  # fmt: skip
        check_positive("cmc", encoder_width=encoder_width)
        super().__init__(backbone, feature_size, **kwargs)
        self.split = resolve_split(split, self.in_channels, self.view_style, backbone)
        self._check_view_channels()
        record = self.__dict__[_ARGUMENTS]
        if isinstance(backbone, nn.Module):
            self.encoder_width = self._own_width("your module", encoder_width, record)
            one = self.backbone
            self.backbone = ChannelSplit(
                [one, copy.deepcopy(one)], [list(range(one.in_channels))] * 2, one.in_channels,
                name=f"channel_split({one.name})",
            )  # fmt: skip
        else:
            self.backbone = self._composite(backbone, record, encoder_width)
        record.update(split=self.split, encoder_width=self.encoder_width)
        self.view_feature_dims = [trunk.feature_dim for trunk in self.backbone.trunk]
        self.feature_dim = self.backbone.feature_dim
        (proj_dim,) = self.head_sizes(proj_dim=proj_dim).values()
        self.num_samples = num_samples
        self.bank_momentum = bank_momentum
        self.projector = ViewProjector(self.view_feature_dims, proj_dim)
        self.bank_1 = MemoryBank(num_samples, proj_dim)
        self.bank_2 = MemoryBank(num_samples, proj_dim)
        # one NCE normaliser Z per direction, as their code (Z_l, Z_ab)
        self.contrast_1 = BankContrast(num_samples, num_negatives, temperature, kind=nce_kind)
        self.contrast_2 = BankContrast(num_samples, num_negatives, temperature, kind=nce_kind)

    @classmethod
    def view_overrides(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        split = resolve_split(
            arguments["split"], arguments["in_channels"], arguments["view_style"],
            arguments["backbone"],
        )  # fmt: skip
        overrides: dict[str, Any] = {"num_views": 2 if split == "views" else 1}
        if split == "wafer_channels":
            overrides["encoding"] = "fail_mask"
        return overrides

    @classmethod
    def data_defaults(cls, num_images: int, global_batch: int) -> dict[str, Any]:
        return {"num_samples": num_images}

    def _check_view_channels(self) -> None:
        check_view_channels("cmc", self.split, self.backbone.in_channels)

    def _own_width(self, what: str, encoder_width: float, record: dict[str, Any]) -> float:
        """1.0 for a backbone without a width keyword; an explicit other width is refused."""
        return full_width("cmc", what, encoder_width, "encoder_width" in record[_EXPLICIT])

    def _composite(self, name: str, record: dict[str, Any], encoder_width: float) -> ChannelSplit:
        """The registered "channel_split" of two ``name`` trunks (at ``encoder_width``)."""
        backbone, self.encoder_width = two_encoder_backbone(
            "cmc", name, self.split, in_channels=self.backbone.in_channels,
            encoder_width=encoder_width, explicit_width="encoder_width" in record[_EXPLICIT],
            backbone_kwargs=record.get("backbone_kwargs"), views=self.views,
        )  # fmt: skip
        return backbone

    def _seal_hyperparameters(self, arguments: dict[str, Any]) -> None:
        super()._seal_hyperparameters(arguments)
        if isinstance(arguments.get("backbone"), nn.Module):  # the size of your module, once
            self._hyperparameters["feature_size"] = self.view_feature_dims[0]

    def training_loss(self, views: list[Tensor], *, indices: Tensor | None = None) -> LossOutput:
        wanted = 2 if self.split == "views" else 1
        if len(views) != wanted:
            raise ValueError(
                f"cmc with split '{self.split}' needs {wanted} view(s) per image, got {len(views)}"
            )
        indices = require_indices("cmc", indices, self.num_samples, views[0].shape[0])
        indices = indices.to(views[0].device)
        features = self.backbone.split_forward(views[0] if wanted == 1 else views)
        z1, z2 = (F.normalize(z.float(), dim=1) for z in self.projector.project(features))
        self.bank_1.fill_unwritten(indices, z1)
        self.bank_2.fill_unwritten(indices, z2)
        loss_1, logs_1 = self.contrast_1(z1, self.bank_2, indices)  # view 1 against bank 2
        loss_2, logs_2 = self.contrast_2(z2, self.bank_1, indices)
        self.bank_1.update(indices, z1, self.bank_momentum)
        self.bank_2.update(indices, z2, self.bank_momentum)
        logs: dict[str, Any] = {
            "collapse_std": embedding_std(z1),
            "bank_written": self.bank_1.written_fraction(),
        }
        for view, loss, part in ((1, loss_1, logs_1), (2, loss_2, logs_2)):
            logs[f"loss_view{view}"] = loss.detach()
            logs.update({f"{key}_view{view}": value for key, value in part.items()})
        return LossOutput(loss_1 + loss_2, logs=logs)
