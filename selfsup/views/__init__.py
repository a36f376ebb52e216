"""Views: batched augmentations with a different random draw per sample, and per-method recipes.

Ops take float [B, C, H, W] batches on any device (``to_float`` converts raw uint8 batches) and
an optional ``generator`` for reproducibility. ``make_views(name, image_size=..., ...)`` builds
the list-of-views callable a method trains on, from a recipe registered in ``VIEW_RECIPES``.
This package imports nothing from ``selfsup.data``, ``selfsup.methods`` or ``selfsup.train``.
"""

from selfsup.views.ops import (
    STYLES,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_color_jitter,
    color_jitter,
    die_flip_noise,
    gaussian_blur,
    hsv_to_rgb,
    normalize,
    random_affine,
    random_flip,
    random_grayscale,
    random_resized_crop,
    random_rot90,
    random_rotation,
    resize,
    rgb_to_hsv,
    rot90_by,
    solarize,
    to_float,
    to_grayscale,
)
from selfsup.views.paper_recipes import (  # importing it registers the papers' recipes
    FASTSIAM_VIEWS,
    NUM_GLOBAL_CROPS,
)
from selfsup.views.patches import augment_patches, extract_patches  # registers "cpc"
from selfsup.views.recipes import (
    NUM_ROTATIONS,
    VIEW_RECIPES,
    NaturalView,
    RecipeParts,
    ViewRecipe,
    WaferView,
    make_views,
    recipe_defaults,
)
from selfsup.views.wafer import WAFER_ENCODINGS, encode_codes

__all__ = [
    "FASTSIAM_VIEWS",
    "NUM_GLOBAL_CROPS",
    "NUM_ROTATIONS",
    "STYLES",
    "VIEW_RECIPES",
    "WAFER_ENCODINGS",
    "NaturalView",
    "RecipeParts",
    "ViewRecipe",
    "WaferView",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_color_jitter",
    "augment_patches",
    "color_jitter",
    "die_flip_noise",
    "encode_codes",
    "extract_patches",
    "gaussian_blur",
    "hsv_to_rgb",
    "make_views",
    "normalize",
    "random_affine",
    "random_flip",
    "random_grayscale",
    "random_resized_crop",
    "random_rot90",
    "random_rotation",
    "recipe_defaults",
    "resize",
    "rgb_to_hsv",
    "rot90_by",
    "solarize",
    "to_float",
    "to_grayscale",
]
