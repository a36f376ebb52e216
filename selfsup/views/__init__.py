"""Batched augmentations with per-sample randomness, and per-method view recipes."""

from selfsup.views.color import (
    color_jitter,
    gaussian_blur,
    hsv_to_rgb,
    normalize,
    random_grayscale,
    rgb_to_hsv,
    solarize,
    to_grayscale,
)
from selfsup.views.geometric import (
    random_flip,
    random_resized_crop,
    random_rot90,
    random_rotation,
    resize,
    rot90_by,
)
from selfsup.views.recipes import NaturalView, ViewRecipe, WaferView, make_views, to_float
from selfsup.views.wafer import die_flip_noise

__all__ = [
    "NaturalView",
    "ViewRecipe",
    "WaferView",
    "color_jitter",
    "die_flip_noise",
    "gaussian_blur",
    "hsv_to_rgb",
    "make_views",
    "normalize",
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
