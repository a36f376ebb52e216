"""Geometric view ops on [B, C, H, W] batches, with a different random draw per sample.

Crop, flips, 90-degree turns and free rotation compose into ONE affine matrix per sample, so a
batch is cropped, flipped, rotated and resized by a single ``grid_sample`` (zero padding,
``align_corners=False``). ``mode="nearest"`` copies source pixels, so integer codes (wafer maps)
stay exact; integer inputs keep their dtype in that mode.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.views.sampling import bernoulli, check_probability, check_range, rand, randint, uniform

MODES = ("bilinear", "nearest")


def size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` as (height, width); an int means a square."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


def _working_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """Sampling grid [B, height, width, 2] of the affine maps ``theta`` [B, 2, 3].

    The same numbers as ``F.affine_grid(theta, (B, C, height, width), align_corners=False)``:
    output pixel (i, j) has normalised centre u = ((2j + 1) / width - 1, (2i + 1) / height - 1)
    and samples the input at theta @ (u, 1). Built as a sum of a column term and a row term,
    which is many times faster on CPU than the batched matmul of ``F.affine_grid``.
    """
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    column = theta[:, :, 0, None, None] * xs.view(1, 1, 1, width)  # [B, 2, 1, W]
    row = torch.addcmul(
        theta[:, :, 2, None, None], theta[:, :, 1, None, None], ys.view(1, 1, height, 1)
    )  # [B, 2, H, 1]
    # planar [B, 2, H, W] then a channels-last view: writing (x, y) pairs directly is ~10x slower
    return (column + row).permute(0, 2, 3, 1)


def warp(x: Tensor, theta: Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resample each sample of ``x`` [B, C, H, W] through its affine map ``theta`` [B, 2, 3]
    (output -> input, normalised coordinates) into ``size``; outside the image is 0.

    Float inputs keep their dtype; integer inputs keep it with ``mode="nearest"`` and become
    float32 (same value scale) with ``"bilinear"``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
    out_h, out_w = size_pair(size)
    work = _working_dtype(x)
    grid = affine_grid(theta.to(work), out_h, out_w)
    out = F.grid_sample(x.to(work), grid, mode=mode, padding_mode="zeros", align_corners=False)
    if x.dtype.is_floating_point or mode == "nearest":
        return out.to(x.dtype)
    return out


def sample_crop_boxes(
    x: Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> tuple[Tensor, Tensor]:
    """Random-resized-crop boxes (Szegedy et al., "Going deeper with convolutions", 2015).

    Per sample, up to ``attempts`` draws of an area fraction uniform in ``scale`` and an aspect
    ratio (width / height) log-uniform in ``ratio``; the first box that fits wins. When none
    fits, the first draw's box is shrunk to the largest box of its ratio that fits. The box is
    placed uniformly (continuous position) inside the image.
    Returns (centre [B, 2], size [B, 2]) in pixels as (x, y) and (w, h); the centre is an
    offset from the image centre.
    """
    check_range(scale, "crop scale", minimum=0.0)
    check_range(ratio, "crop ratio")
    if ratio[0] <= 0 or scale[1] <= 0:
        raise ValueError(f"crop scale and ratio must be positive, got {scale} and {ratio}")
    b, _, height, width = x.shape
    area = float(height * width)
    target = area * uniform(b * attempts, scale[0], scale[1], x, generator).view(b, attempts)
    log_ratio = uniform(b * attempts, math.log(ratio[0]), math.log(ratio[1]), x, generator)
    aspect = torch.exp(log_ratio).view(b, attempts)
    w = torch.sqrt(target * aspect)
    h = torch.sqrt(target / aspect)
    # a box of exactly the image's size must count as fitting despite sqrt rounding
    fits = (w <= width * (1 + 1e-6)) & (h <= height * (1 + 1e-6))
    first = torch.where(
        fits.any(1), fits.int().argmax(1), torch.zeros_like(fits[:, 0], dtype=torch.long)
    )
    rows = torch.arange(b, device=x.device)
    w, h = w[rows, first], h[rows, first]
    shrink = torch.clamp(torch.minimum(width / w, height / h), max=1.0)
    w = (w * shrink).clamp(max=width)
    h = (h * shrink).clamp(max=height)
    x0 = rand(b, x, generator) * (width - w)
    y0 = rand(b, x, generator) * (height - h)
    centre = torch.stack([x0 + w / 2 - width / 2, y0 + h / 2 - height / 2], 1)
    return centre, torch.stack([w, h], 1)


def _flip_signs(p: float, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """[B] of +1, or -1 (a flip) with probability ``p``, per sample of ``x``."""
    ones = torch.ones(x.shape[0], device=x.device)
    return torch.where(bernoulli(x.shape[0], p, x, generator), -ones, ones) if p else ones


def _quarter_turns(
    rot90: bool, x: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """(cos, sin) [B] of a random multiple of 90 degrees per sample; no turn if not ``rot90``."""
    b = x.shape[0]
    if not rot90:
        return torch.ones(b, device=x.device), torch.zeros(b, device=x.device)
    k = randint(b, 4, x, generator)
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=x.device)[k]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=x.device)[k]
    return cos, sin


def _rotation(
    degrees: float, p: float, x: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """(cos, sin) [B] of an angle uniform in [-degrees, degrees], applied with probability p."""
    b = x.shape[0]
    zeros = torch.zeros(b, device=x.device)
    if not degrees:
        return torch.ones(b, device=x.device), zeros
    angle = torch.deg2rad(uniform(b, -degrees, degrees, x, generator))
    if p < 1:
        angle = torch.where(bernoulli(b, p, x, generator), angle, zeros)
    return torch.cos(angle), torch.sin(angle)


def _affine_theta(
    centre: Tensor,
    box: Tensor,
    signs: tuple[Tensor, Tensor],
    turn: tuple[Tensor, Tensor],
    rotation: tuple[Tensor, Tensor],
    input_size: tuple[int, int],
) -> Tensor:
    """[B, 2, 3] sampling matrices: R(a) diag(w/2, h/2) T^k D and the centre c, rows scaled to
    normalised input units by diag(2/W, 2/H) (see ``random_affine``)."""
    (sx, sy), (c90, s90), (cos, sin) = signs, turn, rotation
    width, height = input_size
    half_w, half_h = box[:, 0] / 2, box[:, 1] / 2
    a00, a01 = half_w * c90 * sx, -half_w * s90 * sy
    a10, a11 = half_h * s90 * sx, half_h * c90 * sy
    row0 = torch.stack([cos * a00 - sin * a10, cos * a01 - sin * a11, centre[:, 0]], 1)
    row1 = torch.stack([sin * a00 + cos * a10, sin * a01 + cos * a11, centre[:, 1]], 1)
    return torch.stack([row0 * (2 / width), row1 * (2 / height)], 1)


def random_affine(
    x: Tensor,
    size: int | tuple[int, int],
    *,
    crop_scale: tuple[float, float] | None = None,
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip_p: float = 0.0,
    vflip_p: float = 0.0,
    rot90: bool = False,
    rotation_degrees: float = 0.0,
    rotation_p: float = 1.0,
    mode: str = "bilinear",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Crop (``crop_scale`` None: the whole image), flips, a random multiple of 90 degrees and a
    rotation uniform in [-rotation_degrees, rotation_degrees], per sample, in one resample.

    With box centre c and size (w, h) in pixels, rotation R(a), 90-degree turn T^k and flips
    D = diag(+-1, +-1), output coordinates u in [-1, 1]^2 sample the input pixel
        p = c + R(a) diag(w/2, h/2) T^k D u,
    converted to normalised input coordinates by diag(2/W, 2/H). The turn acts in normalised
    coordinates, so on non-square images it is a turn followed by a stretch to ``size``.
    x: [B, C, H, W]. Returns [B, C, *size].
    """
    for name, p in (("hflip_p", hflip_p), ("vflip_p", vflip_p), ("rotation_p", rotation_p)):
        check_probability(p, name)
    b, _, height, width = x.shape
    if crop_scale is None:
        centre = torch.zeros(b, 2, device=x.device)
        box = torch.tensor([[float(width), float(height)]], device=x.device).expand(b, 2)
    else:
        centre, box = sample_crop_boxes(x, crop_scale, crop_ratio, generator)
    # the draws keep this order (crop, flips, turn, angle): a seeded view stays the same view
    signs = _flip_signs(hflip_p, x, generator), _flip_signs(vflip_p, x, generator)
    turn = _quarter_turns(rot90, x, generator)
    rotation = _rotation(rotation_degrees, rotation_p, x, generator)
    theta = _affine_theta(centre, box, signs, turn, rotation, (width, height))
    return warp(x, theta.to(_working_dtype(x)), size, mode)


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
    """Per-sample random resized crop (area fraction in ``scale``, aspect ratio log-uniform in
    ``ratio``), optional horizontal flip and rotation, resized to ``size``, in one resample.

    x: [B, C, H, W]. Returns [B, C, *size]; see ``random_affine`` for the maths.
    """
    return random_affine(
        x,
        size,
        crop_scale=scale,
        crop_ratio=ratio,
        hflip_p=hflip_p,
        rotation_degrees=rotation_degrees,
        mode=mode,
        generator=generator,
    )


def random_rotation(
    x: Tensor,
    degrees: float,
    mode: str = "nearest",
    p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Rotate each sample, with probability ``p``, by an angle uniform in [-degrees, degrees]
    about the image centre; corners from outside the image are 0. Same size out."""
    return random_affine(
        x,
        tuple(x.shape[-2:]),
        rotation_degrees=degrees,
        rotation_p=p,
        mode=mode,
        generator=generator,
    )


def resize(x: Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Deterministic resize (evaluation): bilinear with antialiasing, or nearest.

    "nearest" takes source index floor((dst + 0.5) * in / out), the rule of the wafer loader
    (``selfsup.data.wafers.nearest_index``), and keeps the dtype; "bilinear" returns float.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
    out = size_pair(size)
    if tuple(x.shape[-2:]) == out:
        return x if mode == "nearest" or x.dtype.is_floating_point else x.float()
    if mode == "nearest":
        if x.dtype.is_floating_point or x.dtype == torch.uint8:
            return F.interpolate(x, size=out, mode="nearest-exact")
        return F.interpolate(x.float(), size=out, mode="nearest-exact").to(x.dtype)
    src = x if x.dtype.is_floating_point else x.float()
    return F.interpolate(src, size=out, mode="bilinear", antialias=True, align_corners=False)


def random_flip(
    x: Tensor, p: float = 0.5, dim: int = -1, generator: torch.Generator | None = None
) -> Tensor:
    """Flip each sample along ``dim`` (-1 or 3: horizontal, -2 or 2: vertical) with
    probability ``p``. Any dtype."""
    check_probability(p)
    if dim not in (-1, -2, 2, 3):
        raise ValueError(f"random_flip: dim must be -1 (horizontal) or -2 (vertical), got {dim}")
    mask = bernoulli(x.shape[0], p, x, generator).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(dim), x)


def _check_square(x: Tensor, op: str) -> None:
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{op} needs square images, got H x W = {x.shape[-2]} x {x.shape[-1]}")


def rot90_by(x: Tensor, k: Tensor) -> Tensor:
    """Rotate sample i by k[i] * 90 degrees, as ``torch.rot90(x[i], k[i], dims=(-2, -1))``.

    x: [B, C, S, S] (square), any dtype; k: [B] integers. One ``torch.rot90`` per distinct turn.
    """
    _check_square(x, "rot90")
    k = torch.as_tensor(k, device=x.device).long().remainder(4)
    if k.shape != (x.shape[0],):
        raise ValueError(f"rot90_by: k must have shape [{x.shape[0]}], got {tuple(k.shape)}")
    out = x.clone()
    for turns in (1, 2, 3):
        idx = (k == turns).nonzero().squeeze(1)
        if idx.numel():
            out.index_copy_(0, idx, torch.rot90(x.index_select(0, idx), turns, dims=(-2, -1)))
    return out


def random_rot90(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Rotate each sample by k * 90 degrees, k uniform in {0, 1, 2, 3} (square images)."""
    _check_square(x, "random_rot90")
    return rot90_by(x, randint(x.shape[0], 4, x, generator))
