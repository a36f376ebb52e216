"""Two encoders, one per group of an image's channels, held by the registered "channel_split"
backbone: CMC's L and ab encoders (Tian et al. 2020) and the split-brain autoencoder's two
halves (Zhang et al. 2017) are built here, the same way, so both export and reload alike.

Splits: "lab" (RGB natural images: L against ab of L*a*b*, converted inside the backbone),
"wafer_channels" (1-channel wafer maps in the "fail_mask" encoding: fail dies against on-wafer
dies) and "views" (both encoders on every channel; CMC's two-view split).
"""

from __future__ import annotations

from typing import Any

from selfsup.backbones import BACKBONES, ChannelSplit, build_backbone
from selfsup.registry import keyword_parameters

# the channel groups of each split's two encoders (None: every channel, for both)
SPLIT_GROUPS = {"lab": [[0], [1, 2]], "wafer_channels": [[0], [1]], "views": None}
# channels the views must give the backbone for each split (views: any)
SPLIT_CHANNELS = {"lab": 3, "wafer_channels": 2}


def full_width(method: str, what: str, encoder_width: float, explicit: bool) -> float:
    """1.0: ``what`` (a backbone without a ``width`` keyword, or a user's module) is used at
    full width; an ``encoder_width`` other than 1.0 the caller set (``explicit``) is refused."""
    if explicit and encoder_width != 1.0:
        raise ValueError(
            f"{method}: encoder_width={encoder_width} scales a registered backbone's 'width' "
            f"keyword (convnet_tiny, convnet_small); {what} has none, so each encoder is "
            "used at full width: leave encoder_width out or set it to 1.0"
        )
    return 1.0


def check_view_channels(method: str, split: str, channels: int) -> None:
    """ValueError when the views give ``channels`` channels but ``split`` needs others."""
    needed = SPLIT_CHANNELS.get(split)
    if needed is not None and channels != needed:
        raise ValueError(
            f"{method}: split '{split}' needs views of {needed} channels, but yours give "
            f"{channels}; use the method's own views"
            + (" or split='views'" if method == "cmc" else "")
        )


def two_encoder_backbone(
    method: str,
    name: str,
    split: str,
    *,
    in_channels: int,
    encoder_width: float,
    explicit_width: bool,
    backbone_kwargs: dict[str, Any] | None,
    views: Any,
) -> tuple[ChannelSplit, float]:
    """The registered "channel_split" of two ``name`` trunks for ``split`` on views of
    ``in_channels`` channels, and the encoder width used.

    Each trunk is built with ``backbone_kwargs``, its ``width`` keyword (convnet_*) scaled by
    ``encoder_width`` (the pair then costs about one network at 0.5); backbones without one
    keep their width (``full_width``: 1.0 is returned). Split "lab" converts the views'
    normalised RGB (their ``mean`` / ``std``) to L*a*b* inside the backbone.
    """
    trunk_kwargs = dict(backbone_kwargs or {})
    parameters = keyword_parameters(BACKBONES.get(name))[0] if name in BACKBONES else {}
    if "width" in parameters:
        width = trunk_kwargs.get("width", parameters["width"].default)
        trunk_kwargs["width"] = max(1, round(width * encoder_width))
        used = encoder_width
    else:
        used = full_width(method, f"backbone '{name}'", encoder_width, explicit_width)
    groups = SPLIT_GROUPS[split] or [list(range(in_channels))] * 2
    lab = split == "lab"
    backbone = build_backbone(
        "channel_split", in_channels, trunk=name, groups=groups, trunk_kwargs=trunk_kwargs,
        convert="lab" if lab else None,
        rgb_mean=getattr(views, "mean", None) if lab else None,
        rgb_std=getattr(views, "std", None) if lab else None,
    )  # fmt: skip
    return backbone, used  # type: ignore[return-value]
