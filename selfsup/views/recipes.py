"""View recipes: the list of augmented views a method trains on, for natural images or wafer maps.

``make_views(name, image_size=..., in_channels=..., style=..., **overrides)`` builds a
``ViewRecipe``; calling it on a raw batch returns the training views, ``preprocess`` gives the
deterministic evaluation input. The recipes themselves are registered functions in
``VIEW_RECIPES`` (the papers' ones are in ``selfsup.views.paper_recipes``); a new recipe is one
function ``(style, image_size) -> RecipeParts`` under ``@VIEW_RECIPES.register("name")``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from selfsup.registry import Registry
from selfsup.views.geometric import resize
from selfsup.views.ops import STYLES, check_style, normalize, to_float
from selfsup.views.pipelines import NaturalView, View, WaferView
from selfsup.views.wafer import WAFER_ENCODINGS, check_encoding, encode_codes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_ROTATIONS = 4  # RotNet's labels: 0, 90, 180, 270 degrees (Gidaris et al. 2018)
# recipe names of earlier releases -> their names now
RENAMED_RECIPES = {"multiview": "fastsiam", "rotation": "rotnet"}

Params = dict[str, Any]


@dataclass(frozen=True)
class RecipeParts:
    """What a registered recipe function returns for one style and image size.

    ``defaults``: every parameter ``make_views`` may override, with its default. ``build``:
    (resolved parameters, image_size) -> the view pipelines. ``rotations``: the one base view is
    returned rotated by 0, 90, 180 and 270 degrees (view i has target i). ``refused``: names
    left out on purpose -> why (said when someone sets one).
    """

    defaults: Params
    build: Callable[[Params, int], list[View]]
    rotations: bool = False
    refused: dict[str, str] = field(default_factory=dict)


VIEW_RECIPES: Registry[RecipeParts] = Registry("view recipe")


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Views are data preparation: keep them in float32 even inside an autocast region."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        return contextlib.nullcontext()


def _normalisation(
    name: str, in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Natural images' (mean, std): the given ones, else ImageNet's for RGB and 0.5 otherwise."""
    rgb = in_channels == 3
    default_mean = IMAGENET_MEAN if rgb else (0.5,) * in_channels
    default_std = IMAGENET_STD if rgb else (0.5,) * in_channels
    mean = tuple(float(m) for m in (default_mean if mean is None else mean))
    std = tuple(float(s) for s in (default_std if std is None else std))
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(
            f"view recipe '{name}': mean and std need {in_channels} values for "
            f"in_channels={in_channels}, got {mean} and {std}"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"view recipe '{name}': std must be positive, got {std}")
    return mean, std


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
            self.mean, self.std = _normalisation(name, in_channels, mean, std)
        elif mean is not None or std is not None:
            raise ValueError("mean/std apply to natural images only; wafer views end with code / 2")
        if check_encoding(encoding) != "codes" and (style != "wafer" or in_channels != 1):
            raise ValueError(
                f"encoding '{encoding}' turns 1-channel wafer codes into "
                f"{WAFER_ENCODINGS[encoding]} channels; got style={style!r}, "
                f"in_channels={in_channels}"
            )
        self.encoding = encoding

    @property
    def out_channels(self) -> int:
        """Channels of the views and of ``preprocess``: what the backbone takes in."""
        return self.in_channels * WAFER_ENCODINGS[self.encoding]

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
            x = encode_codes(x, self.encoding)
            return x * 0.5 if self.encoding == "codes" else x
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

    def plain(self, **overrides: Any) -> ViewRecipe:
        """``evaluation_recipe`` of this recipe's model input, the pretraining views left
        behind, then ``overrides``: e.g. FixMatch's weak view of a backbone pretrained on
        re-gridded, freely rotated maps is still only turns and flips."""
        return evaluation_recipe(
            image_size=self.image_size, in_channels=self.in_channels, style=self.style,
            mean=self.mean, std=self.std, encoding=self.encoding, **overrides,
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


# --- building a recipe by name -------------------------------------------------------------------


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def recipe_function(name: str) -> Callable[[str, int], RecipeParts]:
    """The function registered as ``name``; an old or unknown name raises ValueError."""
    if name in RENAMED_RECIPES:
        raise ValueError(f"view recipe '{name}' is now '{RENAMED_RECIPES[name]}'")
    return VIEW_RECIPES.get(name)


def recipe_parts(name: str, style: str, image_size: int) -> RecipeParts:
    """The registered recipe ``name`` for ``style`` and ``image_size`` (errors list the names)."""
    check_style(style)
    return recipe_function(name)(style, image_size)


def _resolve(name: str, style: str, parts: RecipeParts, overrides: Params) -> Params:
    """The recipe's defaults with ``overrides`` applied; an unknown name raises ValueError."""
    params = dict(parts.defaults)
    for key, value in overrides.items():
        if key not in params:
            why = f" ({parts.refused[key]})" if key in parts.refused else ""
            raise ValueError(
                f"view recipe '{name}' ({style}) has no parameter '{key}'{why} "
                f"(known: {', '.join(params)})"
            )
        params[key] = tuple(value) if isinstance(value, list) else value
    return params


def recipe_defaults(name: str, *, image_size: int, style: str = "natural") -> Params:
    """Every parameter of a recipe with its default (what ``make_views`` overrides)."""
    return dict(recipe_parts(name, style, image_size).defaults)


def make_views(
    name: str,
    *,
    image_size: int,
    in_channels: int = 3,
    style: str = "natural",
    **overrides: Any,
) -> ViewRecipe:
    """Build the registered view recipe ``name`` for ``image_size`` square views of
    ``in_channels`` channels.

    Recipes (``VIEW_RECIPES.names()``): simclr (2 views), byol (2 asymmetric views), fastsiam
    (``num_views``, default 4), dino (``num_global_crops`` + ``num_local_crops``, globals
    first), rotnet (4 rotated copies of one base view). Styles: natural, wafer. ``overrides``
    replace parameters by name (see ``recipe_defaults``); parameters that differ between views
    (e.g. BYOL's ``blur_p=(1.0, 0.1)``) take a value for all views or a sequence read in turn.
    """
    _check_positive_int("image_size", image_size)
    _check_positive_int("in_channels", in_channels)
    parts = recipe_parts(name, style, image_size)
    params = _resolve(name, style, parts, overrides)
    try:
        views = parts.build(params, image_size)
    except ValueError as err:
        raise ValueError(f"view recipe '{name}' ({style}): {err}") from None
    return ViewRecipe(
        name,
        views,
        image_size=image_size,
        in_channels=in_channels,
        style=style,
        params=params,
        mean=params.get("mean"),
        std=params.get("std"),
        rotations=parts.rotations,
        encoding=params.get("encoding", "codes"),
    )


def evaluation_recipe(
    *,
    image_size: int,
    in_channels: int,
    style: str,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    encoding: str = "codes",
    **overrides: Any,
) -> ViewRecipe:
    """A backbone's model input (size, channels, style, natural images' normalisation, wafer
    encoding) under simclr's single-pipeline views with their defaults, then ``overrides``:
    its ``preprocess`` is the evaluation transform, its views the plain fine-tuning ones."""
    wafer = style == "wafer"
    input_params: Params = {"encoding": encoding} if wafer else {"mean": mean, "std": std}
    return make_views(
        "simclr", image_size=image_size, in_channels=in_channels, style=style,
        **{**input_params, **overrides},
    )  # fmt: skip


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_ROTATIONS",
    "STYLES",
    "VIEW_RECIPES",
    "NaturalView",
    "RecipeParts",
    "ViewRecipe",
    "WaferView",
    "evaluation_recipe",
    "make_views",
    "recipe_defaults",
    "recipe_function",
    "recipe_parts",
    "to_float",
]
