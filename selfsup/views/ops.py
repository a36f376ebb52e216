"""Every view op in one namespace, plus the first and last steps of a pipeline.

``to_float`` turns a raw batch into the float input of the ops; ``normalize`` is the last step
of natural-image views. The ops themselves live in ``geometric``, ``color`` and ``wafer``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from selfsup.views.color import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_color_jitter,
    color_jitter,
    gaussian_blur,
    hsv_to_rgb,
    random_grayscale,
    rgb_to_hsv,
    solarize,
    to_grayscale,
)
from selfsup.views.geometric import (
    random_affine,
    random_flip,
    random_resized_crop,
    random_rot90,
    random_rotation,
    resize,
    rot90_by,
)
from selfsup.views.wafer import die_flip_noise

STYLES = ("natural", "wafer")
# the smallest jigsaw tile or CPC patch cut from an image: below it a piece is mostly the zero
# padding of a backbone's first 3x3 convolutions
MIN_PIECE_SIZE = 4


def check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"unknown view style '{style}' (known: {', '.join(STYLES)})")
    return style


def to_float(images: Tensor, style: str = "natural") -> Tensor:
    """A raw batch [B, C, H, W] as float32.

    natural: uint8 -> [0, 1] (/255); float input passes through (assumed in [0, 1]).
    wafer: die codes {0 off-wafer, 1 pass, 2 fail} (any dtype) -> the same codes as float; the
    scaling to {0, 0.5, 1} happens at the end of a wafer pipeline.
    """
    check_style(style)
    if images.ndim != 4:
        raise ValueError(f"views expect a batch [B, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype.is_floating_point:
        return images.float()
    if style == "wafer":
        return images.float()
    return images.float().div_(255.0)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean[c]) / std[c] per channel. x: [B, C, H, W]; mean, std: C values."""
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(
            f"normalize: mean and std need {x.shape[1]} values (one per channel), "
            f"got {tuple(mean)} and {tuple(std)}"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"normalize: std must be positive, got {tuple(std)}")
    m = x.new_tensor(list(mean)).view(1, -1, 1, 1)
    s = x.new_tensor(list(std)).view(1, -1, 1, 1)
    return (x - m) / s


__all__ = [
    "STYLES",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_color_jitter",
    "check_style",
    "color_jitter",
    "die_flip_noise",
    "gaussian_blur",
    "hsv_to_rgb",
    "normalize",
    "random_affine",
    "random_flip",
    "random_grayscale",
    "random_resized_crop",
    "random_rot90",
    "random_rotation",
    "resize",
    "rgb_to_hsv",
    "rot90_by",
    "solarize",
    "to_float",
    "to_grayscale",
]
