"""The papers' view recipes, one registered function each: ``(style, image_size) -> RecipeParts``.

A recipe is named after the method whose paper defines its augmentations; a method that reuses
another's names it as its ``view_recipe`` (SimSiam, DCL, SupCon use ``simclr``, Barlow Twins
and MoCo v3 ``byol``). Every parameter in a recipe's ``defaults`` can be overridden by name in
``make_views``. Wafer maps (style "wafer") get the same number of views, made of wafer
operations only (90-degree turns, flips, die noise; no colour, blur or solarize).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from selfsup.views.pipelines import NaturalView, View, WaferView
from selfsup.views.recipes import VIEW_RECIPES, Params, RecipeParts

NUM_GLOBAL_CROPS = 2  # DINO: the teacher sees the 2 global crops (Caron et al. 2021, sec. 3)
FASTSIAM_VIEWS = 4  # FastSiam: K + 1 = 4 views (Pototzky et al. 2022)
NATURAL_VIEW_KEYS = tuple(f.name for f in dataclasses.fields(NaturalView) if f.name != "size")
WAFER_VIEW_KEYS = tuple(f.name for f in dataclasses.fields(WaferView) if f.name != "size")
_DINO_COUNTS: Params = {
    "num_global_crops": NUM_GLOBAL_CROPS,
    "num_local_crops": 6,
    "local_size": None,
}
_ROTATION_LABEL = "its rotation is the label, so the base view is never rotated"
_ROTATION_KEYS = ("rot90", "free_rotation_degrees", "rotation_degrees")


# --- shared pieces ------------------------------------------------------------------------------


def _pick(value: Any, i: int) -> Any:
    """A per-view parameter: one value for every view, or a sequence read in turn (cycling)."""
    return value[i % len(value)] if isinstance(value, (list, tuple)) else value


def _without(params: Params, *keys: str) -> Params:
    return {k: v for k, v in params.items() if k not in keys}


def _count(params: Params, key: str, minimum: int) -> int:
    """A number of views from the parameters, checked: an integer >= ``minimum``."""
    value = params[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _natural_views(p: Params, size: int, count: int, per_view: Sequence[str] = ()) -> list[View]:
    shared = {k: p[k] for k in NATURAL_VIEW_KEYS if k in p and k not in per_view}
    varying = [{k: _pick(p[k], i) for k in per_view} for i in range(count)]
    return [NaturalView(size, **shared, **v) for v in varying]


def _wafer_views(p: Params, size: int, count: int, **fixed: Any) -> list[View]:
    shared = {**{k: p[k] for k in WAFER_VIEW_KEYS if k in p}, **fixed}
    return [WaferView(size, **shared) for _ in range(count)]


def _simclr_defaults(image_size: int) -> Params:
    """SimCLR (Chen et al. 2020, appendix A): crop 0.08-1 and flip, colour jitter
    (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, blur p 0.5 only from 96 px (the CIFAR
    recipe drops blur); then mean/std normalisation (None: ImageNet's for RGB, 0.5 else)."""
    defaults = {f.name: f.default for f in dataclasses.fields(NaturalView) if f.name != "size"}
    defaults["blur_p"] = 0.5 if image_size >= 96 else 0.0
    return {**defaults, "mean": None, "std": None}


def _wafer_defaults() -> Params:
    """Every wafer recipe's base: random 90-degree turn, flips, 3 % die-flip noise; no crop,
    free rotation or re-gridding unless asked (crop and rotation cut dies off the wafer's edge);
    the model input encoding ``codes`` (1 channel, code / 2) or ``fail_mask`` (2 channels)."""
    fields = {f.name: f.default for f in dataclasses.fields(WaferView) if f.name != "size"}
    return {**fields, "encoding": "codes"}


def _dino_local_size(p: Params, image_size: int) -> int:
    """DINO's local crops are 96 px for 224 px globals; at least 8 px."""
    local = p["local_size"]
    if local is None:
        return max(8, round(image_size * 96 / 224))
    if not isinstance(local, int) or isinstance(local, bool) or local < 1:
        raise ValueError(f"local_size must be a positive integer, got {local!r}")
    return local


# --- the recipes ----------------------------------------------------------------------------------


@VIEW_RECIPES.register("simclr")
def simclr(style: str, image_size: int) -> RecipeParts:
    """SimCLR (Chen et al. 2020): 2 views of one pipeline (defaults: ``_simclr_defaults``)."""
    if style == "wafer":
        return RecipeParts(_wafer_defaults(), lambda p, s: _wafer_views(p, s, 2))
    return RecipeParts(_simclr_defaults(image_size), lambda p, s: _natural_views(p, s, 2))


@VIEW_RECIPES.register("mocov1")
def mocov1(style: str, image_size: int) -> RecipeParts:
    """MoCo v1 (He et al. 2020, sec. 4; InstDisc's augmentation): crop 0.2-1 and flip, colour
    jitter (0.4, 0.4, 0.4, 0.4) on every view, grayscale p 0.2, no blur. MoCo's code turns
    grayscale before the jitter, here after it (SimCLR's order): the same views except that
    a hue shift and the clamping then act on the colours before they become grey. Wafer maps:
    as simclr."""
    if style == "wafer":
        return simclr(style, image_size)
    defaults = {
        **_simclr_defaults(image_size),
        "crop_scale": (0.2, 1.0),
        "hue": 0.4,
        "jitter_p": 1.0,
        "blur_p": 0.0,
    }
    return RecipeParts(defaults, lambda p, s: _natural_views(p, s, 2))


@VIEW_RECIPES.register("instdisc")
def instdisc(style: str, image_size: int) -> RecipeParts:
    """Instance discrimination (Wu et al. 2018, the official lemniscate code): MoCo v1's
    pipeline (MoCo follows it), ``num_views`` (1) view per image. Wafer maps: as simclr."""
    views = _wafer_views if style == "wafer" else _natural_views
    defaults = {**mocov1(style, image_size).defaults, "num_views": 1}
    return RecipeParts(defaults, lambda p, s: views(p, s, _count(p, "num_views", 1)))


@VIEW_RECIPES.register("mocov2")
def mocov2(style: str, image_size: int) -> RecipeParts:
    """MoCo v2 (Chen et al. 2020, the official ``main_moco.py --aug-plus``): SimCLR's views with
    crops of 0.2-1 (not 0.08-1). Wafer maps: as simclr."""
    if style == "wafer":
        return simclr(style, image_size)
    defaults = {**_simclr_defaults(image_size), "crop_scale": (0.2, 1.0)}
    return RecipeParts(defaults, lambda p, s: _natural_views(p, s, 2))


@VIEW_RECIPES.register("byol")
def byol(style: str, image_size: int) -> RecipeParts:
    """BYOL (Grill et al. 2020, Table 6): SimCLR's with saturation 0.2; view 1 always blurred,
    never solarized; view 2 blurred with p 0.1, solarized with p 0.2. Wafer maps: as simclr
    (their views have no colour operations to make asymmetric)."""
    if style == "wafer":
        return simclr(style, image_size)
    defaults = {
        **_simclr_defaults(image_size),
        "saturation": 0.2,
        "blur_p": (1.0, 0.1),
        "solarize_p": (0.0, 0.2),
    }
    return RecipeParts(
        defaults, lambda p, s: _natural_views(p, s, 2, per_view=("blur_p", "solarize_p"))
    )


@VIEW_RECIPES.register("fastsiam")
def fastsiam(style: str, image_size: int) -> RecipeParts:
    """FastSiam (Pototzky et al. 2022): ``num_views`` (4) views of SimCLR's pipeline."""
    views = _wafer_views if style == "wafer" else _natural_views
    defaults = {**simclr(style, image_size).defaults, "num_views": FASTSIAM_VIEWS}
    return RecipeParts(defaults, lambda p, s: views(p, s, _count(p, "num_views", 1)))


def _dino_natural(image_size: int) -> RecipeParts:
    defaults = {
        **_without(_simclr_defaults(image_size), "crop_scale", "blur_p", "solarize_p"),
        "saturation": 0.2,
        **_DINO_COUNTS,
        "global_crop_scale": (0.4, 1.0),
        "local_crop_scale": (0.05, 0.4),
        "global_blur_p": (1.0, 0.1),
        "global_solarize_p": (0.0, 0.2),
        "local_blur_p": 0.5,
    }

    def build(p: Params, size: int) -> list[View]:
        globals_ = {
            **p,
            "crop_scale": p["global_crop_scale"],
            "blur_p": p["global_blur_p"],
            "solarize_p": p["global_solarize_p"],
        }
        locals_ = {**p, "crop_scale": p["local_crop_scale"], "blur_p": p["local_blur_p"]}
        global_count = _count(p, "num_global_crops", 1)
        return _natural_views(
            globals_, size, global_count, per_view=("blur_p", "solarize_p")
        ) + _natural_views(locals_, _dino_local_size(p, size), _count(p, "num_local_crops", 0))

    return RecipeParts(defaults, build)


def _dino_wafer() -> RecipeParts:
    defaults = {
        **_without(_wafer_defaults(), "crop_scale"),
        **_DINO_COUNTS,
        "global_crop_scale": (0.6, 1.0),
        "local_crop_scale": (0.25, 0.6),
    }

    def build(p: Params, size: int) -> list[View]:
        global_count = _count(p, "num_global_crops", 1)
        local_count = _count(p, "num_local_crops", 0)
        return _wafer_views(p, size, global_count, crop_scale=p["global_crop_scale"]) + (
            _wafer_views(
                p, _dino_local_size(p, size), local_count, crop_scale=p["local_crop_scale"]
            )
        )

    return RecipeParts(defaults, build)


@VIEW_RECIPES.register("dino")
def dino(style: str, image_size: int) -> RecipeParts:
    """DINO (Caron et al. 2021): BYOL's colours; ``NUM_GLOBAL_CROPS`` global crops of scale
    0.4-1 (blur 1.0 / 0.1, solarize 0 / 0.2) and 6 local crops of scale 0.05-0.4 at 96/224 of
    the size (blur 0.5), globals first. Wafer maps: crops of 0.6-1 and 0.25-0.6."""
    return _dino_wafer() if style == "wafer" else _dino_natural(image_size)


@VIEW_RECIPES.register("cmc")
def cmc(style: str, image_size: int) -> RecipeParts:
    """CMC (Tian et al. 2020, their code's ImageNet transform): ``num_views`` (1) random resized
    crops of scale 0.08-1 with flips and no colour operations (the method splits each view's
    channels, L from ab: a colour jitter would change what one channel says about the other).
    Wafer maps: the wafer operations, as simclr."""
    views = _wafer_views if style == "wafer" else _natural_views
    defaults = {**simclr(style, image_size).defaults, "num_views": 1}
    if style == "natural":
        defaults.update(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    return RecipeParts(defaults, lambda p, s: views(p, s, _count(p, "num_views", 1)))


@VIEW_RECIPES.register("rotnet")
def rotnet(style: str, image_size: int) -> RecipeParts:
    """RotNet (Gidaris et al. 2018): the rotation is the label, so one base view (crop 0.5-1 and
    flip, colours kept; wafer maps: flips and die noise) is returned in its 4 rotations."""
    refused = dict.fromkeys(_ROTATION_KEYS, _ROTATION_LABEL)
    if style == "wafer":
        defaults = _without(_wafer_defaults(), *_ROTATION_KEYS)
        return RecipeParts(
            defaults,
            lambda p, s: _wafer_views(p, s, 1, rot90=False, free_rotation_degrees=0.0),
            rotations=True,
            refused=refused,
        )
    defaults = {
        **_without(_simclr_defaults(image_size), *_ROTATION_KEYS),
        "crop_scale": (0.5, 1.0),
        "jitter_p": 0.0,
        "grayscale_p": 0.0,
        "blur_p": 0.0,
    }
    return RecipeParts(
        defaults, lambda p, s: _natural_views(p, s, 1), rotations=True, refused=refused
    )


def _one_view(style: str, image_size: int, **natural: Any) -> RecipeParts:
    """One view per image (the method cuts it into tiles or patches): the wafer base, or
    SimCLR's natural pipeline with ``natural`` parameters on top."""
    if style == "wafer":
        return RecipeParts(_wafer_defaults(), lambda p, s: _wafer_views(p, s, 1))
    defaults = {**_simclr_defaults(image_size), **natural}
    return RecipeParts(defaults, lambda p, s: _natural_views(p, s, 1))


@VIEW_RECIPES.register("jigsaw")
def jigsaw(style: str, image_size: int) -> RecipeParts:
    """Jigsaw (Noroozi & Favaro 2016): one view per image that the method cuts into its puzzle
    (``selfsup.views.jigsaw``). Crop 0.6-1 and flip; against chromatic aberration grayscale
    with p 0.3, no colour jitter (the method normalises every tile on its own and shifts its
    colour channels). Wafer maps: turns, flips and die noise."""
    return _one_view(
        style, image_size, crop_scale=(0.6, 1.0), jitter_p=0.0, grayscale_p=0.3, blur_p=0.0
    )


@VIEW_RECIPES.register("cpc")
def cpc(style: str, image_size: int) -> RecipeParts:
    """CPC (van den Oord et al. 2018; Henaff et al. 2020): one view per image, from which the
    method cuts its grid of patches and augments every patch on its own
    (``views.patches.augment_patches``). The view: CPC's resize-to-300 / random 256 crop (about
    0.73 of the area) as a random resized crop of 0.7-1 with a flip, no colour, blur or
    solarize (colour dropping is per patch). Wafer maps: the wafer base (90-degree turns,
    flips, die noise)."""
    return _one_view(
        style, image_size, crop_scale=(0.7, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0
    )


@VIEW_RECIPES.register("mae")
def mae(style: str, image_size: int) -> RecipeParts:
    """MAE (He et al. 2022, appendix A.1): one view per image, a random resized crop of 0.2-1
    and a flip, no colour, grayscale or blur (masking is the augmentation that matters).
    Wafer maps: the wafer base (90-degree turns, flips, die noise)."""
    return _one_view(
        style, image_size, crop_scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0
    )


@VIEW_RECIPES.register("pirl")
def pirl(style: str, image_size: int) -> RecipeParts:
    """PIRL (Misra & van der Maaten 2020; the official VISSL config): 2 views of one image, the
    image I (crop ``crop_scale`` 0.08-1) and the base of its jigsaw transform I^t (crop
    ``jigsaw_crop_scale`` 0.6-1, cut into tiles by the method), both with SimCLR's flip, colour
    jitter and grayscale, no blur. Wafer maps: as simclr."""
    if style == "wafer":
        return simclr(style, image_size)
    defaults = {**_simclr_defaults(image_size), "blur_p": 0.0, "jigsaw_crop_scale": (0.6, 1.0)}

    def build(p: Params, size: int) -> list[View]:
        transformed = {**p, "crop_scale": p["jigsaw_crop_scale"]}
        return _natural_views(p, size, 1) + _natural_views(transformed, size, 1)

    return RecipeParts(defaults, build)


@VIEW_RECIPES.register("autoencoder")
def autoencoder(style: str, image_size: int) -> RecipeParts:
    """The autoencoders (denoising_ae, context_ae, split_brain): one lightly augmented view per
    image, which the method corrupts (noise, erased blocks) or splits (L / ab) and reconstructs:
    crop 0.5-1 and flip, no colour, blur or solarize (the view is the target, and split-brain
    predicts colour from lightness). Wafer maps: the wafer base (turns, flips, die noise)."""
    return _one_view(
        style, image_size, crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0
    )


@VIEW_RECIPES.register("bigan")
def bigan(style: str, image_size: int) -> RecipeParts:
    """BiGAN (Donahue et al. 2017, their code's ImageNet input): one view per image, a random
    square crop of (64/72)^2 = 0.79 of the area (their random 64 px crop of a 72 px image), no
    flip, colour, blur or solarize: the generator learns the data as the encoder sees it.
    Wafer maps: the wafer base (90-degree turns, flips, die noise)."""
    area = (64 / 72) ** 2
    return _one_view(
        style, image_size, crop_scale=(area, area), crop_ratio=(1.0, 1.0), hflip_p=0.0,
        jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
    )  # fmt: skip
