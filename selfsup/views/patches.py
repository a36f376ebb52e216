"""A grid of overlapping patches cut from a batch and per-patch augmentation (CPC v2).

CPC (van den Oord et al. 2018; Henaff et al. 2020) encodes every patch of a grid of patches
that overlap by half: a ``grid_size`` x ``grid_size`` grid of patches of ``2 * stride`` pixels
every ``stride = size // (grid_size + 1)`` pixels, so the grid spans the image (CPC's 7x7 grid
of 64 px patches every 32 px of a 256 px image; 8 px every 4 px at 32 px). The patches of a
batch come out of one ``unfold`` (no loop over samples); ``augment_patches`` then draws every
patch's flips and colour dropping on its own, as CPC v2's patch-based augmentation. The
"cpc" recipe (the view the patches are cut from) is in ``selfsup.views.paper_recipes``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.views.geometric import random_flip
from selfsup.views.ops import MIN_PIECE_SIZE
from selfsup.views.sampling import bernoulli, check_probability, randint

MIN_PATCH_SIZE = MIN_PIECE_SIZE


def patch_geometry(size: int, grid_size: int) -> tuple[int, int]:
    """(patch, stride) in pixels of a ``grid_size`` grid of half-overlapping patches across
    ``size`` pixels: stride = size // (grid_size + 1), patch = 2 * stride (the grid spans
    ``stride * (grid_size + 1)`` <= size pixels). ValueError when the patch would be smaller
    than ``MIN_PATCH_SIZE``."""
    if not isinstance(grid_size, int) or isinstance(grid_size, bool) or grid_size < 2:
        raise ValueError(f"grid_size must be an integer >= 2, got {grid_size!r}")
    stride = size // (grid_size + 1)
    if 2 * stride < MIN_PATCH_SIZE:
        raise ValueError(
            f"a {grid_size}x{grid_size} grid of half-overlapping patches on {size} px images "
            f"gives {2 * stride} px patches, below the {MIN_PATCH_SIZE} px minimum: use a "
            f"smaller grid_size or images of at least {MIN_PATCH_SIZE // 2 * (grid_size + 1)} px"
        )
    return 2 * stride, stride


def extract_patches(images: Tensor, grid_size: int) -> Tensor:
    """The ``grid_size`` x ``grid_size`` grid of half-overlapping patches of every image.

    images [B, C, H, W] -> [B, G, G, C, ph, pw], with (ph, sh) = ``patch_geometry(H, G)`` and
    (pw, sw) likewise for W: out[b, i, j] = images[b, :, top + i sh : top + i sh + ph,
    left + j sw : left + j sw + pw], the grid centred (top, left: half the pixels it leaves).
    One ``unfold`` per axis over the whole batch; the result is a view of ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"extract_patches needs [B, C, H, W], got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    (ph, sh), (pw, sw) = patch_geometry(height, grid_size), patch_geometry(width, grid_size)
    top, left = (height - sh * (grid_size + 1)) // 2, (width - sw * (grid_size + 1)) // 2
    grid = images[..., top : top + sh * (grid_size + 1), left : left + sw * (grid_size + 1)]
    windows = grid.unfold(2, ph, sh).unfold(3, pw, sw)  # [B, C, G, G, ph, pw]
    return windows.permute(0, 2, 3, 1, 4, 5)


def drop_colors(x: Tensor, p: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """CPC v2's colour dropping: each sample, with probability ``p``, keeps one random channel
    of its 3 and sets the other two to 0 (the dataset mean, on normalised views): Henaff et al.
    2020 randomly drop two of the three colour channels of each patch. Input that is not
    3-channel is returned unchanged. x: [N, 3, H, W] -> same shape."""
    check_probability(p, "color_drop_p")
    if x.shape[1] != 3 or p <= 0:
        return x
    kept = torch.nn.functional.one_hot(randint(x.shape[0], 3, x, generator), 3).to(x.dtype)
    dropping = bernoulli(x.shape[0], p, x, generator)[:, None]
    scale = torch.where(dropping, kept, torch.ones_like(kept))
    return x * scale[:, :, None, None]


def augment_patches(
    patches: Tensor,
    style: str,
    *,
    flip_p: float = 0.5,
    color_drop_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-patch augmentation (CPC v2's patch-based augmentation), each patch drawn on its own.

    natural: horizontal flip with ``flip_p``, then colour dropping with ``color_drop_p``
    (3-channel patches only). wafer: horizontal and vertical flips with ``flip_p`` each (a wafer
    map has no upright), never colour ops, so die values stay in {0, 0.5, 1}.
    patches: [N, C, p, p] (N = B * G * G) -> same shape.
    """
    check_probability(flip_p, "flip_p")
    out = random_flip(patches, flip_p, dim=-1, generator=generator)
    if style == "wafer":
        return random_flip(out, flip_p, dim=-2, generator=generator)
    return drop_colors(out, color_drop_p, generator)


__all__ = [
    "MIN_PATCH_SIZE",
    "augment_patches",
    "drop_colors",
    "extract_patches",
    "patch_geometry",
]
