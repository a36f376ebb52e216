"""Geometric augmentations on [B, C, H, W] with a different random draw per sample.

Crop, flip and rotation compose into one affine matrix per sample and one ``grid_sample`` call,
so a whole batch is cropped, flipped, rotated and resized in a single pass. ``mode="nearest"``
keeps integer codes exact (wafer maps); out-of-image pixels become 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.views.random import bernoulli, rand, randint, uniform


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def affine_resample(
    x: Tensor,
    size: int | tuple[int, int],
    center: Tensor,
    box: Tensor,
    angle: Tensor | None = None,
    hflip: Tensor | None = None,
    mode: str = "bilinear",
) -> Tensor:
    """Resample a box of each image into ``size`` pixels.

    center: [B, 2] box centre (x, y) in normalised coordinates [-1, 1]; box: [B, 2] box width and
    height in pixels; angle: [B] radians (counter-clockwise); hflip: [B] bool.
    The map from output to input coordinates is, in pixels,
    p_in = c + R(angle) diag(w/2, h/2) F u, with u in [-1, 1]^2 and F = diag(+-1, 1).
    """
    b, _, height, width = x.shape
    out_h, out_w = _size2(size)
    half = box / 2
    cos = torch.ones(b, device=x.device) if angle is None else torch.cos(angle)
    sin = torch.zeros(b, device=x.device) if angle is None else torch.sin(angle)
    flip = torch.ones(b, device=x.device)
    if hflip is not None:
        flip = torch.where(hflip, -1.0, 1.0).to(x.device)
    # rotation acts in pixel space: scale columns by the box half-size, rows by 2/W, 2/H
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = cos * half[:, 0] * flip * (2 / width)
    theta[:, 0, 1] = -sin * half[:, 1] * (2 / width)
    theta[:, 1, 0] = sin * half[:, 0] * flip * (2 / height)
    theta[:, 1, 1] = cos * half[:, 1] * (2 / height)
    theta[:, :, 2] = center
    grid = F.affine_grid(theta, [b, x.shape[1], out_h, out_w], align_corners=False)
    src = x if x.dtype.is_floating_point else x.float()
    return F.grid_sample(src.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)


def sample_crop_boxes(
    x: Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> tuple[Tensor, Tensor]:
    """Random resized crop boxes (Szegedy et al. 2015): area fraction in ``scale``, aspect
    ratio log-uniform in ``ratio``; up to ``attempts`` draws, then the largest centred box with
    a ratio in range. Returns (center [B, 2] normalised, box [B, 2] pixels)."""
    b, _, height, width = x.shape
    area = height * width
    target = area * uniform(b * attempts, scale[0], scale[1], x, generator).view(b, attempts)
    log_r = uniform(b * attempts, math.log(ratio[0]), math.log(ratio[1]), x, generator)
    aspect = torch.exp(log_r).view(b, attempts)
    w = torch.sqrt(target * aspect)
    h = torch.sqrt(target / aspect)
    ok = (w <= width) & (h <= height) & (w > 0) & (h > 0)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1, device=x.device))
    # fallback: whole image clipped to the ratio range (torchvision's rule)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], height
    else:
        fw, fh = width, height
    idx = first.clamp(min=0)
    rows = torch.arange(b, device=x.device)
    w = torch.where(first >= 0, w[rows, idx], torch.full((b,), float(fw), device=x.device))
    h = torch.where(first >= 0, h[rows, idx], torch.full((b,), float(fh), device=x.device))
    x0 = rand(b, x, generator) * (width - w)
    y0 = rand(b, x, generator) * (height - h)
    cx = (x0 + w / 2) / width * 2 - 1
    cy = (y0 + h / 2) / height * 2 - 1
    return torch.stack([cx, cy], 1), torch.stack([w, h], 1)


def random_resized_crop(
    x: Tensor,
    size: int | tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    mode: str = "bilinear",
    hflip_p: float = 0.0,
    rotation_degrees: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample random resized crop, optional horizontal flip and rotation, in one resample.

    x: [B, C, H, W] float. Returns [B, C, size, size] float.
    """
    b = x.shape[0]
    center, box = sample_crop_boxes(x, scale, ratio, generator)
    angle = None
    if rotation_degrees:
        angle = torch.deg2rad(uniform(b, -rotation_degrees, rotation_degrees, x, generator))
    hflip = bernoulli(b, hflip_p, x, generator) if hflip_p > 0 else None
    return affine_resample(x, size, center, box, angle, hflip, mode)


def resize(x: Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Deterministic resize of a float batch (antialiased when shrinking with bilinear)."""
    out = _size2(size)
    if tuple(x.shape[-2:]) == out:
        return x
    if mode == "nearest":
        # "nearest-exact" picks floor((dst + 0.5) * in / out): the same rule as the wafer loader
        return F.interpolate(x, size=out, mode="nearest-exact")
    return F.interpolate(x, size=out, mode=mode, antialias=True, align_corners=False)


def random_flip(x: Tensor, p: float = 0.5, dim: int = -1, generator=None) -> Tensor:
    """Flip each sample along ``dim`` (-1 horizontal, -2 vertical) with probability ``p``."""
    mask = bernoulli(x.shape[0], p, x, generator).view(-1, *([1] * (x.ndim - 1)))
    return torch.where(mask, x.flip(dim), x)


def rot90_by(x: Tensor, k: Tensor) -> Tensor:
    """Rotate sample i by k[i] * 90 degrees counter-clockwise (square images)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rot90 needs square images, got {tuple(x.shape[-2:])}")
    out = x.clone()
    for turns in (1, 2, 3):
        idx = (k % 4 == turns).nonzero().squeeze(1)
        if idx.numel():
            out[idx] = torch.rot90(x[idx], turns, dims=(-2, -1))
    return out


def random_rot90(x: Tensor, generator=None) -> Tensor:
    """Each sample rotated by k * 90 degrees, k uniform in {0, 1, 2, 3}."""
    return rot90_by(x, randint(x.shape[0], 4, x, generator))


def random_rotation(
    x: Tensor, degrees: float, mode: str = "nearest", p: float = 1.0, generator=None
) -> Tensor:
    """Rotate each sample (with probability p) by an angle uniform in [-degrees, degrees];
    corners outside the image become 0."""
    b, _, height, width = x.shape
    angle = torch.deg2rad(uniform(b, -degrees, degrees, x, generator))
    angle = torch.where(bernoulli(b, p, x, generator), angle, torch.zeros_like(angle))
    center = torch.zeros(b, 2, device=x.device)
    box = torch.tensor([[float(width), float(height)]], device=x.device).expand(b, 2)
    return affine_resample(x.float(), (height, width), center, box, angle, None, mode)
