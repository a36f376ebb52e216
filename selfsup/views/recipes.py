"""View recipes: the list of augmented views a method trains on, for natural images or wafer maps.

``make_views(name, image_size=..., in_channels=..., style=..., **overrides)`` builds a
``ViewRecipe``; calling it on a raw batch returns the training views, ``preprocess`` gives the
deterministic evaluation input. Defaults are the papers' (see each recipe below); every
parameter can be overridden by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from selfsup.views.geometric import resize
from selfsup.views.ops import STYLES, check_style, normalize, to_float
from selfsup.views.pipelines import NaturalView, View, WaferView

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RECIPES = ("simclr", "byol", "multiview", "fastsiam", "dino", "rotation")
NUM_ROTATIONS = 4


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Views are data preparation: keep them in float32 even inside an autocast region."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        return contextlib.nullcontext()


class ViewRecipe:
    """Callable: raw batch [B, C, H, W] (uint8 or float) -> list of training views (float32,
    on the batch's device), each sample with its own random draws.

    Natural style ends with per-channel normalisation (``mean``, ``std``); wafer style ends with
    code / 2, so views hold only {0, 0.5, 1} and zero padding means off-wafer, or, with
    ``encoding="fail_mask"``, with two 0/1 channels (fail die, on-wafer die; Kahng & Kim 2021):
    the views and the noise work on the codes, the encoding comes last (``out_channels`` = 2). With
    ``rotations=True`` (RotNet) the one base view is returned rotated by 0, 90, 180 and 270
    degrees (``torch.rot90`` direction): view i has target i.
    Set ``generator`` (or pass one to the call) for reproducible views.
    """

    def __init__(
        self,
        name: str,
        views: Sequence[View],
        *,
        image_size: int,
        in_channels: int,
        style: str,
        params: dict[str, Any] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        rotations: bool = False,
        generator: torch.Generator | None = None,
        encoding: str = "codes",
    ) -> None:
        self.name = name
        self.views = list(views)
        self.image_size = image_size
        self.in_channels = in_channels
        self.style = check_style(style)
        self.params = dict(params or {})
        self.rotations = rotations
        self.generator = generator
        if not self.views:
            raise ValueError(f"view recipe '{name}' has no views")
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        if style == "natural":
            default_mean = IMAGENET_MEAN if in_channels == 3 else (0.5,) * in_channels
            default_std = IMAGENET_STD if in_channels == 3 else (0.5,) * in_channels
            self.mean = tuple(float(m) for m in (mean if mean is not None else default_mean))
            self.std = tuple(float(s) for s in (std if std is not None else default_std))
            if len(self.mean) != in_channels or len(self.std) != in_channels:
                raise ValueError(
                    f"view recipe '{name}': mean and std need {in_channels} values for "
                    f"in_channels={in_channels}, got {self.mean} and {self.std}"
                )
            if any(s <= 0 for s in self.std):
                raise ValueError(f"view recipe '{name}': std must be positive, got {self.std}")
        elif mean is not None or std is not None:
            raise ValueError("mean/std apply to natural images only; wafer views end with code / 2")
        if encoding not in WAFER_ENCODINGS:
            raise ValueError(f"encoding must be one of {WAFER_ENCODINGS}, got '{encoding}'")
        if encoding == "fail_mask" and (style != "wafer" or in_channels != 1):
            raise ValueError(
                "encoding 'fail_mask' turns 1-channel wafer codes into (fail, on-wafer) channels; "
                f"got style={style!r}, in_channels={in_channels}"
            )
        self.encoding = encoding

    @property
    def out_channels(self) -> int:
        """Channels of the views and of ``preprocess``: what the backbone takes in."""
        return 2 if self.encoding == "fail_mask" else self.in_channels

    @property
    def num_views(self) -> int:
        return NUM_ROTATIONS if self.rotations else len(self.views)

    def _input(self, images: Tensor) -> Tensor:
        x = to_float(images, self.style)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"views '{self.name}' expect {self.in_channels} channel(s), got images of shape "
                f"{tuple(images.shape)}"
            )
        if self.style == "wafer" and images.numel():
            low, high = torch.aminmax(images)
            fractional = images.dtype.is_floating_point and bool((images != images.round()).any())
            if low < 0 or high > 2 or fractional:
                raise ValueError(
                    f"wafer views '{self.name}' expect die codes in {{0, 1, 2}}, got values in "
                    f"[{low.item():g}, {high.item():g}]"
                    + (", not all integers (already scaled to 0/0.5/1?)" if fractional else "")
                )
        return x

    def _finish(self, x: Tensor) -> Tensor:
        if self.style == "wafer":
            if self.encoding == "fail_mask":  # WaPIRL's input: fail die, on-wafer die
                return torch.cat([x == 2, x > 0], dim=1).to(x.dtype)
            return x * 0.5
        return normalize(x, self.mean, self.std)  # type: ignore[arg-type]

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        generator = generator if generator is not None else self.generator
        with _no_autocast(images.device):
            x = self._input(images)
            views = [self._finish(view(x, generator)) for view in self.views]
        if self.rotations:
            base = views[0]
            return [base] + [torch.rot90(base, k, dims=(-2, -1)) for k in range(1, NUM_ROTATIONS)]
        return views

    def single_view(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One augmented view per image (the recipe's first pipeline), e.g. for fine-tuning."""
        generator = generator if generator is not None else self.generator
        with _no_autocast(images.device):
            return self._finish(self.views[0](self._input(images), generator))

    def with_params(self, **overrides: Any) -> ViewRecipe:
        """The same recipe rebuilt with some parameters replaced (names as ``recipe_defaults``),
        e.g. ``recipe.with_params(die_flip_p=0.0)`` for a lighter fine-tuning view. Unknown
        names raise ``ValueError`` naming the parameter."""
        return make_views(
            self.name, image_size=self.image_size, in_channels=self.in_channels,
            style=self.style, **{**self.params, **overrides},
        )  # fmt: skip

    def preprocess(self, images: Tensor) -> Tensor:
        """Deterministic evaluation input: to float, resize to ``image_size`` (bilinear with
        antialiasing for natural images, nearest for wafer maps), then the views' final
        scaling. [B, C, H, W] -> [B, C, image_size, image_size] float32."""
        with _no_autocast(images.device):
            x = self._input(images)
            mode = "nearest" if self.style == "wafer" else "bilinear"
            return self._finish(resize(x, self.image_size, mode))

    def __repr__(self) -> str:
        head = (
            f"ViewRecipe({self.name!r}, style={self.style!r}, image_size={self.image_size}, "
            f"in_channels={self.in_channels}, num_views={self.num_views}"
        )
        params = dict(self.params)
        if self.style == "natural":
            params.update(mean=self.mean, std=self.std)
        body = "".join(f",\n    {k}={_short(v)}" for k, v in params.items())
        return head + body + ("\n)" if body else ")")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


# --- the recipes ------------------------------------------------------------------------------
# A recipe is a defaults function, image_size -> every overridable parameter, and a build
# function, (resolved parameters, image_size) -> the view pipelines.

Params = dict[str, Any]
Defaults = Callable[[int], Params]
Build = Callable[[Params, int], list[View]]
NATURAL_VIEW_KEYS = tuple(f.name for f in dataclasses.fields(NaturalView) if f.name != "size")
WAFER_VIEW_KEYS = tuple(f.name for f in dataclasses.fields(WaferView) if f.name != "size")
WAFER_ENCODINGS = ("codes", "fail_mask")
_DINO_COUNTS: Params = {"num_global_crops": 2, "num_local_crops": 6, "local_size": None}
_ROTATION_LABEL_KEYS = ("rot90", "free_rotation_degrees", "rotation_degrees")


def _pick(value: Any, i: int) -> Any:
    """A per-view parameter: one value for every view, or a sequence read in turn (cycling)."""
    return value[i % len(value)] if isinstance(value, (list, tuple)) else value


def _without(params: Params, *keys: str) -> Params:
    return {k: v for k, v in params.items() if k not in keys}


def _dino_local_size(p: Params, image_size: int) -> int:
    """DINO's local crops are 96 px for 224 px globals; at least 8 px."""
    local = p["local_size"]
    return int(local) if local is not None else max(8, round(image_size * 96 / 224))


# natural images


def _natural_views(p: Params, size: int, count: int, per_view: Sequence[str] = ()) -> list[View]:
    shared = {k: p[k] for k in NATURAL_VIEW_KEYS if k in p and k not in per_view}
    varying = [{k: _pick(p[k], i) for k in per_view} for i in range(count)]
    return [NaturalView(size, **shared, **v) for v in varying]


def _simclr_defaults(image_size: int) -> Params:
    """SimCLR (Chen et al. 2020, appendix A): crop 0.08-1 and flip, colour jitter
    (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, blur p 0.5 only from 96 px (the CIFAR
    recipe drops blur); then mean/std normalisation (None: ImageNet's for RGB, 0.5 else)."""
    defaults = {f.name: f.default for f in dataclasses.fields(NaturalView) if f.name != "size"}
    defaults["blur_p"] = 0.5 if image_size >= 96 else 0.0
    return {**defaults, "mean": None, "std": None}


def _multiview_defaults(image_size: int) -> Params:
    return {**_simclr_defaults(image_size), "num_views": 4}


def _byol_defaults(image_size: int) -> Params:
    """BYOL (Grill et al. 2020, Table 6): saturation 0.2; view 1 always blurred, never
    solarized; view 2 blurred with p 0.1, solarized with p 0.2."""
    return {
        **_simclr_defaults(image_size),
        "saturation": 0.2,
        "blur_p": (1.0, 0.1),
        "solarize_p": (0.0, 0.2),
    }


def _dino_defaults(image_size: int) -> Params:
    """DINO (Caron et al. 2021): BYOL's colours; 2 global crops of scale 0.4-1 (blur 1.0 / 0.1,
    solarize 0 / 0.2) and 6 local crops of scale 0.05-0.4 at 96/224 of the size (blur 0.5)."""
    return {
        **_without(_simclr_defaults(image_size), "crop_scale", "blur_p", "solarize_p"),
        "saturation": 0.2,
        **_DINO_COUNTS,
        "global_crop_scale": (0.4, 1.0),
        "local_crop_scale": (0.05, 0.4),
        "global_blur_p": (1.0, 0.1),
        "global_solarize_p": (0.0, 0.2),
        "local_blur_p": 0.5,
    }


def _dino_build(p: Params, image_size: int) -> list[View]:
    globals_ = {
        **p,
        "crop_scale": p["global_crop_scale"],
        "blur_p": p["global_blur_p"],
        "solarize_p": p["global_solarize_p"],
    }
    locals_ = {**p, "crop_scale": p["local_crop_scale"], "blur_p": p["local_blur_p"]}
    return _natural_views(
        globals_, image_size, p["num_global_crops"], per_view=("blur_p", "solarize_p")
    ) + _natural_views(locals_, _dino_local_size(p, image_size), p["num_local_crops"])


def _rotation_defaults(image_size: int) -> Params:
    """RotNet (Gidaris et al. 2018): the rotation is the label; one crop (0.5-1) and flip,
    colours kept."""
    base = _without(_simclr_defaults(image_size), "rotation_degrees")
    return {**base, "crop_scale": (0.5, 1.0), "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}


# wafer maps


def _wafer_views(p: Params, size: int, count: int, **fixed: Any) -> list[View]:
    shared = {**{k: p[k] for k in WAFER_VIEW_KEYS if k in p}, **fixed}
    return [WaferView(size, **shared) for _ in range(count)]


def _wafer_defaults(image_size: int) -> Params:
    """Every wafer recipe's base: random 90-degree turn, flips, 3 % die-flip noise; no crop,
    free rotation or re-gridding unless asked (crop and rotation cut dies off the wafer's edge);
    the model input encoding ``codes`` (1 channel, code / 2) or ``fail_mask`` (2 channels)."""
    fields = {f.name: f.default for f in dataclasses.fields(WaferView) if f.name != "size"}
    return {**fields, "encoding": "codes"}


def _wafer_multiview_defaults(image_size: int) -> Params:
    return {**_wafer_defaults(image_size), "num_views": 4}


def _wafer_dino_defaults(image_size: int) -> Params:
    return {
        **_without(_wafer_defaults(image_size), "crop_scale"),
        **_DINO_COUNTS,
        "global_crop_scale": (0.6, 1.0),
        "local_crop_scale": (0.25, 0.6),
    }


def _wafer_dino_build(p: Params, image_size: int) -> list[View]:
    local = _dino_local_size(p, image_size)
    return _wafer_views(
        p, image_size, p["num_global_crops"], crop_scale=p["global_crop_scale"]
    ) + _wafer_views(p, local, p["num_local_crops"], crop_scale=p["local_crop_scale"])


def _wafer_rotation_defaults(image_size: int) -> Params:
    return _without(_wafer_defaults(image_size), *_ROTATION_LABEL_KEYS)


_RECIPE_TABLE: dict[tuple[str, str], tuple[Defaults, Build]] = {
    ("natural", "simclr"): (_simclr_defaults, lambda p, s: _natural_views(p, s, 2)),
    ("natural", "byol"): (
        _byol_defaults,
        lambda p, s: _natural_views(p, s, 2, per_view=("blur_p", "solarize_p")),
    ),
    ("natural", "multiview"): (
        _multiview_defaults,
        lambda p, s: _natural_views(p, s, p["num_views"]),
    ),
    ("natural", "dino"): (_dino_defaults, _dino_build),
    ("natural", "rotation"): (_rotation_defaults, lambda p, s: _natural_views(p, s, 1)),
    ("wafer", "simclr"): (_wafer_defaults, lambda p, s: _wafer_views(p, s, 2)),
    ("wafer", "byol"): (_wafer_defaults, lambda p, s: _wafer_views(p, s, 2)),
    ("wafer", "multiview"): (
        _wafer_multiview_defaults,
        lambda p, s: _wafer_views(p, s, p["num_views"]),
    ),
    ("wafer", "dino"): (_wafer_dino_defaults, _wafer_dino_build),
    ("wafer", "rotation"): (
        _wafer_rotation_defaults,
        lambda p, s: _wafer_views(p, s, 1, rot90=False, free_rotation_degrees=0.0),
    ),
}
_ALIASES = {"fastsiam": "multiview"}  # FastSiam (Pototzky et al. 2022): 4 views


def _lookup(name: str, style: str) -> tuple[Defaults, Build]:
    check_style(style)
    if name not in RECIPES:
        raise ValueError(f"unknown view recipe '{name}' (known: {', '.join(RECIPES)})")
    return _RECIPE_TABLE[(style, _ALIASES.get(name, name))]


_COUNT_KEYS = {"num_views": 1, "num_global_crops": 1, "num_local_crops": 0}


def _check_counts(name: str, params: Params) -> None:
    for key, minimum in _COUNT_KEYS.items():
        if key in params and (not isinstance(params[key], int) or params[key] < minimum):
            raise ValueError(
                f"view recipe '{name}': {key} must be an integer >= {minimum}, got {params[key]!r}"
            )
    local = params.get("local_size")
    if local is not None and (not isinstance(local, int) or local < 1):
        raise ValueError(
            f"view recipe '{name}': local_size must be a positive integer, got {local!r}"
        )


def recipe_defaults(name: str, *, image_size: int, style: str = "natural") -> Params:
    """Every parameter of a recipe with its default (what ``make_views`` overrides)."""
    defaults, _ = _lookup(name, style)
    return defaults(image_size)


def make_views(
    name: str,
    *,
    image_size: int,
    in_channels: int = 3,
    style: str = "natural",
    **overrides: Any,
) -> ViewRecipe:
    """Build the named view recipe for ``image_size`` square views of ``in_channels`` channels.

    Recipes: simclr (2 views), byol (2 asymmetric views), multiview / fastsiam (``num_views``,
    default 4), dino (``num_global_crops`` + ``num_local_crops``, globals first), rotation
    (4 rotated copies of one base view). Styles: natural, wafer. ``overrides`` replace
    parameters by name (see ``recipe_defaults``); parameters that differ between views (e.g.
    BYOL's ``blur_p=(1.0, 0.1)``) take a value for all views or a sequence read in turn.
    """
    defaults, build = _lookup(name, style)
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    params = defaults(image_size)
    for key, value in overrides.items():
        if key not in params:
            why = ""
            if name == "rotation" and key in _ROTATION_LABEL_KEYS:
                why = " (its rotation is the label, so the base view is never rotated)"
            raise ValueError(
                f"view recipe '{name}' ({style}) has no parameter '{key}'{why} "
                f"(known: {', '.join(params)})"
            )
        params[key] = tuple(value) if isinstance(value, list) else value
    _check_counts(name, params)
    return ViewRecipe(
        name,
        build(params, image_size),
        image_size=image_size,
        in_channels=in_channels,
        style=style,
        params=params,
        mean=params.get("mean"),
        std=params.get("std"),
        rotations=name == "rotation",
        encoding=params.get("encoding", "codes"),
    )


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RECIPES",
    "STYLES",
    "NaturalView",
    "ViewRecipe",
    "WaferView",
    "make_views",
    "recipe_defaults",
    "to_float",
]
