"""View pipelines: the chain of ops that makes ONE view of a batch, natural or wafer.

A recipe (``selfsup.views.recipes``) is a list of these plus the final scaling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from selfsup.views.color import color_jitter, gaussian_blur, random_grayscale, solarize
from selfsup.views.geometric import random_affine
from selfsup.views.sampling import check_probability, check_range
from selfsup.views.wafer import die_flip_noise, random_regrid


def _check_view_fields(view: Any) -> None:
    """Validate the probabilities and ranges of a view pipeline; errors name the field."""
    for f in dataclasses.fields(view):
        value = getattr(view, f.name)
        if f.name.endswith("_p"):
            check_probability(value, f.name)
        elif f.name in ("crop_scale", "crop_ratio", "blur_sigma", "regrid_scale") and (
            value is not None
        ):
            if len(value) != 2:
                raise ValueError(f"{f.name} must be a (low, high) pair, got {value}")
            check_range(tuple(value), f.name, minimum=0.0)
    if view.size < 1:
        raise ValueError(f"view size must be positive, got {view.size}")


@dataclass(frozen=True)
class NaturalView:
    """One view of a natural image, in SimCLR's order: random resized crop with horizontal
    flip (and optional rotation), colour jitter, grayscale, Gaussian blur, solarize.

    Input and output are float [B, C, H, W] in [0, 1]; output [B, C, size, size].
    """

    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    rotation_degrees: float = 0.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def __post_init__(self) -> None:
        _check_view_fields(self)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = random_affine(
            x,
            self.size,
            crop_scale=self.crop_scale,
            crop_ratio=self.crop_ratio,
            hflip_p=self.hflip_p,
            rotation_degrees=self.rotation_degrees,
            mode="bilinear",
            generator=generator,
        ).clamp_(0, 1)
        if self.jitter_p > 0:
            x = color_jitter(
                x,
                self.brightness,
                self.contrast,
                self.saturation,
                self.hue,
                p=self.jitter_p,
                generator=generator,
            )
        if self.grayscale_p > 0:
            x = random_grayscale(x, self.grayscale_p, generator)
        if self.blur_p > 0:
            x = gaussian_blur(x, self.blur_sigma, self.blur_p, generator=generator)
        if self.solarize_p > 0:
            x = solarize(x, self.solarize_p, generator=generator)
        return x


@dataclass(frozen=True)
class WaferView:
    """One view of a wafer map (die codes 0 off-wafer, 1 pass, 2 fail): die-flip noise, then
    optional re-gridding to fewer dies (``regrid_p``, ``regrid_scale``: see ``random_regrid``),
    a random multiple of 90 degrees, flips, optional free rotation and crop, and the resize to
    ``size``, all in one nearest-neighbour resample. Never colour, blur or solarize.

    Input and output are float codes [B, C, H, W] in {0, 1, 2}; zero padding is off-wafer.
    """

    size: int
    rot90: bool = True
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    die_flip_p: float = 0.03
    free_rotation_degrees: float = 0.0
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    regrid_p: float = 0.0
    regrid_scale: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        _check_view_fields(self)

    def __call__(self, codes: Tensor, generator: torch.Generator | None = None) -> Tensor:
        codes = die_flip_noise(codes, self.die_flip_p, generator)
        codes = random_regrid(codes, self.regrid_p, self.regrid_scale, generator)
        return random_affine(
            codes,
            self.size,
            crop_scale=self.crop_scale,
            crop_ratio=self.crop_ratio,
            hflip_p=self.hflip_p,
            vflip_p=self.vflip_p,
            rot90=self.rot90,
            rotation_degrees=self.free_rotation_degrees,
            mode="nearest",
            generator=generator,
        )


View = NaturalView | WaferView
