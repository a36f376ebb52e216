"""View recipes: the list of augmented views each method trains on, for natural images or
wafer maps. ``make_views(name, image_size=..., in_channels=..., style=...)`` builds one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from selfsup.views import color, geometric
from selfsup.views.wafer import die_flip_noise

STYLES = ("natural", "wafer")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float(images: Tensor, style: str) -> Tensor:
    """uint8 natural images -> float [0, 1]; wafer codes -> float codes {0, 1, 2}; float passes."""
    if images.ndim != 4:
        raise ValueError(f"views expect a batch [B, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype.is_floating_point:
        return images.float()
    if style == "wafer":
        return images.float()
    return images.float() / 255.0


@dataclass
class NaturalView:
    """One view of a natural image: random resized crop + flip, colour jitter, grayscale,
    Gaussian blur, solarize (SimCLR / BYOL / DINO pipelines)."""

    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = geometric.random_resized_crop(
            x,
            self.size,
            self.crop_scale,
            self.crop_ratio,
            "bilinear",
            self.hflip_p,
            generator=generator,
        ).clamp_(0, 1)
        if self.jitter_p > 0:
            x = color.color_jitter(x, *self.jitter, p=self.jitter_p, generator=generator)
        if self.grayscale_p > 0:
            x = color.random_grayscale(x, self.grayscale_p, generator)
        if self.blur_p > 0:
            x = color.gaussian_blur(x, self.blur_sigma, self.blur_p, generator=generator)
        if self.solarize_p > 0:
            x = color.solarize(x, self.solarize_p, generator=generator)
        return x


@dataclass
class WaferView:
    """One view of a wafer map (codes 0/1/2): die-flip noise, rot90, flips, optional free
    rotation and crop, nearest resampling only; never colour or blur."""

    size: int
    rot90: bool = True
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    die_flip_p: float = 0.03
    free_rotation_degrees: float = 0.0
    crop_scale: tuple[float, float] | None = None

    def __call__(self, codes: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = die_flip_noise(codes, self.die_flip_p, generator)
        if self.rot90:
            x = geometric.random_rot90(x, generator)
        if self.vflip_p > 0:
            x = geometric.random_flip(x, self.vflip_p, -2, generator)
        if self.crop_scale is not None:
            return geometric.random_resized_crop(
                x,
                self.size,
                self.crop_scale,
                (3 / 4, 4 / 3),
                "nearest",
                self.hflip_p,
                self.free_rotation_degrees,
                generator,
            )
        if self.hflip_p > 0:
            x = geometric.random_flip(x, self.hflip_p, -1, generator)
        if self.free_rotation_degrees:
            x = geometric.random_rotation(x, self.free_rotation_degrees, "nearest", 1.0, generator)
        return geometric.resize(x, self.size, "nearest")


class ViewRecipe:
    """Callable: raw batch -> list of training views (float, on the batch's device).

    ``preprocess`` is the deterministic evaluation transform (resize + the same scaling).
    Natural style ends with per-channel normalisation; wafer style ends with code / 2, so
    values are {0, 0.5, 1} and zero padding means off-wafer. With ``rotations=True`` (RotNet)
    the single base view is returned rotated by 0, 90, 180 and 270 degrees; view i has target i.
    """

    def __init__(
        self,
        name: str,
        views: list[NaturalView | WaferView],
        *,
        image_size: int,
        in_channels: int,
        style: str,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        rotations: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.name = name
        self.views = views
        self.image_size = image_size
        self.in_channels = in_channels
        self.style = style
        self.rotations = rotations
        self.generator = generator
        if style == "natural":
            self.mean = tuple(mean or (IMAGENET_MEAN if in_channels == 3 else (0.5,) * in_channels))
            self.std = tuple(std or (IMAGENET_STD if in_channels == 3 else (0.5,) * in_channels))
            if len(self.mean) != in_channels or len(self.std) != in_channels:
                raise ValueError(
                    f"mean/std need {in_channels} values for in_channels={in_channels}, "
                    f"got {self.mean} and {self.std}"
                )
        else:
            self.mean, self.std = None, None

    def _finish(self, x: Tensor) -> Tensor:
        if self.style == "wafer":
            return x / 2
        return color.normalize(x, self.mean, self.std)

    def _check(self, images: Tensor) -> Tensor:
        x = to_float(images, self.style)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"views '{self.name}' expect {self.in_channels} channel(s), got images of shape "
                f"{tuple(images.shape)}"
            )
        return x

    def __call__(self, images: Tensor) -> list[Tensor]:
        x = self._check(images)
        out = [self._finish(view(x, self.generator)) for view in self.views]
        if self.rotations:
            base = out[0]
            turns = torch.ones(base.shape[0], dtype=torch.long, device=base.device)
            return [base] + [geometric.rot90_by(base, turns * k) for k in (1, 2, 3)]
        return out

    def single_view(self, images: Tensor) -> Tensor:
        """One augmented view per image (the recipe's first pipeline), e.g. for fine-tuning."""
        return self._finish(self.views[0](self._check(images), self.generator))

    def preprocess(self, images: Tensor) -> Tensor:
        x = self._check(images)
        mode = "nearest" if self.style == "wafer" else "bilinear"
        return self._finish(geometric.resize(x, self.image_size, mode))

    def __repr__(self) -> str:
        lines = [f"ViewRecipe({self.name!r}, style={self.style!r}, image_size={self.image_size}"]
        lines += [f"  {v}" for v in self.views]
        return "\n".join(lines) + (", rotations=True)" if self.rotations else ")")


# --- the recipes ----------------------------------------------------------------------------------

_RECIPE_KEYS = {"num_views", "num_global_crops", "num_local_crops", "local_size", "mean", "std"}


def _natural(name: str, size: int, o: dict[str, Any]) -> tuple[list, bool]:
    blur = 0.5 if size >= 96 else 0.0  # SimCLR drops blur on CIFAR-size images
    if name == "simclr":
        return [NaturalView(size, blur_p=blur) for _ in range(2)], False
    if name in ("multiview", "fastsiam"):
        n = o.get("num_views", 4)
        return [NaturalView(size, blur_p=blur) for _ in range(n)], False
    byol_jitter = (0.4, 0.4, 0.2, 0.1)
    if name == "byol":  # Grill et al. 2020, Table 6: asymmetric blur and solarize
        return [
            NaturalView(size, jitter=byol_jitter, blur_p=1.0, solarize_p=0.0),
            NaturalView(size, jitter=byol_jitter, blur_p=0.1, solarize_p=0.2),
        ], False
    if name == "dino":  # Caron et al. 2021: 2 global crops (0.4-1) + local crops (0.05-0.4)
        local = o.get("local_size") or max(8, round(size * 96 / 224))
        globals_ = [
            NaturalView(size, (0.4, 1.0), jitter=byol_jitter, blur_p=1.0),
            NaturalView(size, (0.4, 1.0), jitter=byol_jitter, blur_p=0.1, solarize_p=0.2),
        ][: o.get("num_global_crops", 2)]
        locals_ = [
            NaturalView(local, (0.05, 0.4), jitter=byol_jitter, blur_p=0.5)
            for _ in range(o.get("num_local_crops", 6))
        ]
        return globals_ + locals_, False
    if name == "rotation":  # Gidaris et al. 2018: the rotation is the label, keep colours
        return [NaturalView(size, (0.5, 1.0), jitter_p=0.0, grayscale_p=0.0)], True
    raise KeyError(name)


def _wafer(name: str, size: int, o: dict[str, Any]) -> tuple[list, bool]:
    if name in ("simclr", "byol"):
        return [WaferView(size) for _ in range(2)], False
    if name in ("multiview", "fastsiam"):
        return [WaferView(size) for _ in range(o.get("num_views", 4))], False
    if name == "dino":
        local = o.get("local_size") or max(8, round(size * 96 / 224))
        globals_ = [
            WaferView(size, crop_scale=(0.6, 1.0)) for _ in range(o.get("num_global_crops", 2))
        ]
        locals_ = [
            WaferView(local, crop_scale=(0.25, 0.6)) for _ in range(o.get("num_local_crops", 6))
        ]
        return globals_ + locals_, False
    if name == "rotation":
        return [WaferView(size, rot90=False)], True
    raise KeyError(name)


RECIPES = ("simclr", "byol", "multiview", "fastsiam", "dino", "rotation")


def make_views(
    name: str, *, image_size: int, in_channels: int = 3, style: str = "natural", **overrides: Any
) -> ViewRecipe:
    """Build a view recipe.

    Recipe-level overrides: ``num_views`` (multiview/fastsiam), ``num_global_crops``,
    ``num_local_crops``, ``local_size`` (dino), ``mean``, ``std`` (natural). Any other override
    sets that field on every view (e.g. ``crop_scale=(0.2, 1)``, ``die_flip_p=0.05``,
    ``free_rotation_degrees=15``); a name no view has is an error.
    """
    if style not in STYLES:
        raise ValueError(f"unknown view style '{style}' (known: {', '.join(STYLES)})")
    if name not in RECIPES:
        raise ValueError(f"unknown view recipe '{name}' (known: {', '.join(RECIPES)})")
    recipe_level = {k: v for k, v in overrides.items() if k in _RECIPE_KEYS}
    per_view = {k: v for k, v in overrides.items() if k not in _RECIPE_KEYS}
    build = _natural if style == "natural" else _wafer
    views, rotations = build(name, image_size, recipe_level)
    for key, value in per_view.items():
        if not all(key in {f.name for f in dataclasses.fields(v)} for v in views):
            fields = sorted({f.name for v in views for f in dataclasses.fields(v)} | _RECIPE_KEYS)
            raise ValueError(
                f"view recipe '{name}' ({style}) has no parameter '{key}' "
                f"(known: {', '.join(fields)})"
            )
        views = [dataclasses.replace(v, **{key: value}) for v in views]
    return ViewRecipe(
        name,
        views,
        image_size=image_size,
        in_channels=in_channels,
        style=style,
        mean=recipe_level.get("mean"),
        std=recipe_level.get("std"),
        rotations=rotations,
    )
