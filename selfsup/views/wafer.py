"""Wafer maps: die codes 0 (off-wafer), 1 (pass), 2 (fail); the noise that keeps them in that
set, and the model-input encodings (the one table of them: ``WAFER_ENCODINGS``)."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.views.sampling import bernoulli, check_probability, check_range, rand, uniform

OFF_WAFER, PASS, FAIL = 0, 1, 2
# model-input encoding -> channels per code channel. "codes": the codes themselves (1 channel);
# "fail_mask": (fail die, on-wafer die) as 0/1, WaPIRL's input (Kahng & Kim, IEEE T-SM 2021)
WAFER_ENCODINGS: dict[str, int] = {"codes": 1, "fail_mask": 2}


def check_encoding(encoding: str, label: str = "encoding") -> str:
    """``encoding`` if it names a wafer encoding, else ValueError (``label`` names the argument)."""
    if encoding not in WAFER_ENCODINGS:
        raise ValueError(f"{label} must be one of {sorted(WAFER_ENCODINGS)}, got '{encoding}'")
    return encoding


def encode_codes(codes: Tensor, encoding: str) -> Tensor:
    """Die codes [..., 1, H, W] -> model input [..., WAFER_ENCODINGS[encoding], H, W], same dtype.

    "codes": unchanged. "fail_mask": channel 0 = 1 where a die failed, channel 1 = 1 on the wafer;
    the mask tells a pass die from the background without an intermediate grey level.
    """
    if check_encoding(encoding) == "fail_mask":
        return torch.cat([codes == FAIL, codes > OFF_WAFER], dim=-3).to(codes.dtype)
    return codes


def die_flip_noise(
    codes: Tensor, p: float = 0.03, generator: torch.Generator | None = None
) -> Tensor:
    """Swap pass <-> fail (1 <-> 2, i.e. c -> 3 - c) on each on-wafer die independently with
    probability ``p``; off-wafer positions (0) never change.

    Models the test-to-test noise of die-level results (a few per cent of dies). Each die of
    each sample draws on its own. codes: [B, C, H, W] in {0, 1, 2}, any dtype (kept).
    """
    check_probability(p, "die-flip p")
    if p == 0:
        return codes
    flip = (codes > OFF_WAFER) & (rand(tuple(codes.shape), codes, generator) < p)
    # arithmetic rather than torch.where, which is slow on CPU for full-size masks
    if codes.dtype.is_floating_point:
        return codes + flip.to(codes.dtype) * ((PASS + FAIL) - 2 * codes)
    return codes ^ (flip.to(codes.dtype) * (PASS ^ FAIL))


def _coarse_index(size: int, cells: Tensor) -> Tensor:
    """[B, size] source positions of nearest-neighbour resampling to ``cells`` [B] cells and
    back: output pixel d falls in cell floor((d + 0.5) cells / size), whose centre is sampled."""
    dst = torch.arange(size, device=cells.device, dtype=torch.float64) + 0.5
    n = cells.to(torch.float64)[:, None]
    cell = torch.floor(dst[None, :] * n / size)
    return torch.floor((cell + 0.5) * size / n).long().clamp_(0, size - 1)


def random_regrid(
    codes: Tensor,
    p: float = 0.5,
    scale: tuple[float, float] = (0.5, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Re-grid each map, with probability ``p``, to fewer dies per wafer.

    A chosen map is nearest-sampled onto a coarser grid of round(s H) x round(s W) dies,
    s ~ U(scale), and back to H x W: the same wafer as a product with larger dies. WM-811K
    mixes products from a few hundred to several thousand dies per wafer, and the die count
    correlates with the class (Edge-Ring maps are large), so this view keeps a model from
    keying on die density alone. Only a gather: the output holds the input's values.
    codes: [B, C, H, W] any dtype; returns the same shape and dtype.
    """
    check_probability(p, "regrid p")
    check_range(tuple(scale), "regrid scale", minimum=0.0)
    if p == 0 or scale[0] >= 1:
        return codes
    b, c, h, w = codes.shape
    chosen = bernoulli(b, p, codes, generator)
    s = uniform(b, scale[0], min(scale[1], 1.0), codes, generator)
    s = torch.where(chosen, s, torch.ones_like(s))
    rows = _coarse_index(h, (s * h).round().clamp_(1, h))
    cols = _coarse_index(w, (s * w).round().clamp_(1, w))
    out = codes.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))
