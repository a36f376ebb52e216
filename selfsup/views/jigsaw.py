"""Jigsaw puzzles (Noroozi & Favaro 2016), batched: tiles cut from a grid of cells, shuffled.

```
puzzle = jigsaw_puzzle(views, 3, permutations=hamming_permutations(3, 100))
puzzle.tiles      # [B, 9, C, t, t]: position k holds the tile of cell puzzle.orders[b, k]
puzzle.targets    # [B]: the row of ``permutations`` each sample was shuffled by
```
Every sample draws its own tile offsets, channel shifts and permutation; the tiles are cut with
one advanced-indexing gather (no loop over samples). The geometry scales with the image: cells
are 1/grid of its side and tiles ``tile_fraction`` of a cell (the paper: 64 px tiles in 75 px
cells of a 225 px image), so a random gap separates neighbouring tiles at any size. Tiles keep
their values exactly (no resampling): wafer codes stay codes.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.views.ops import MIN_PIECE_SIZE
from selfsup.views.sampling import rand, randint

JIGSAW_GRIDS = (2, 3)
# the paper's 64 px tiles in 75 px cells: the random gap between tiles hides edge continuity
TILE_FRACTION = 64 / 75
MIN_TILE_SIZE = MIN_PIECE_SIZE
# images from this size up are cut 3 x 3 (the paper's grid); smaller ones 2 x 2
GRID_3_FROM = 64
# the paper shifts the colour channels of a tile by up to 2 px of its 64 (chromatic aberration)
CHANNEL_SHIFT_FRACTION = 2 / 64


def check_grid(grid: int, name: str = "jigsaw") -> int:
    if grid not in JIGSAW_GRIDS or isinstance(grid, bool):
        raise ValueError(f"{name}: grid must be 2 or 3, got {grid!r}")
    return grid


def default_grid(image_size: int) -> int:
    """The paper's 3 x 3 grid from ``GRID_3_FROM`` px up; 2 x 2 below, where 3 x 3 would cut
    tiles of a few pixels (16 px images: 4 px tiles, 2 x 2: 7 px)."""
    return 3 if image_size >= GRID_3_FROM else 2


def check_tile_fraction(tile_fraction: float, name: str = "jigsaw") -> float:
    if not 0.0 < tile_fraction <= 1.0:
        raise ValueError(f"{name}: tile_fraction must be in (0, 1], got {tile_fraction}")
    return float(tile_fraction)


def tile_size(
    image_size: int, grid: int, tile_fraction: float = TILE_FRACTION, name: str = "jigsaw"
) -> int:
    """The side of a tile: ``tile_fraction`` of a cell (``image_size // grid``), at least
    ``MIN_TILE_SIZE`` px (a ValueError naming the fix otherwise)."""
    cell = image_size // check_grid(grid, name)
    tile = min(cell, round(cell * check_tile_fraction(tile_fraction, name)))
    if tile < MIN_TILE_SIZE:
        raise ValueError(
            f"{name}: tiles would be {tile} px (images of {image_size} px, grid {grid}: cells "
            f"of {cell} px, tile_fraction {tile_fraction:.3g}); a tile needs at least "
            f"{MIN_TILE_SIZE} px: use larger images, a smaller grid or a larger tile_fraction"
        )
    return tile


def default_num_permutations(grid: int) -> int:
    """All 24 orders of a 2 x 2 grid; 100 of the 9! of a 3 x 3 grid (one of the paper's sets)."""
    return 24 if check_grid(grid) == 2 else 100


def hamming_permutations(grid: int, count: int, seed: int = 0) -> Tensor:
    """``count`` permutations of the grid's tiles with a maximal Hamming distance between them.

    Noroozi & Favaro 2016, Algorithm 1 (greedy): start from a permutation drawn at random
    (``seed``), then repeatedly add the remaining permutation whose summed Hamming distance to
    the chosen ones is largest (ties: the first in lexicographic order). Deterministic given
    (grid, count, seed) and cached per process: 100 of 9! take about a second, 1000 about ten.
    Returns int64 [count, grid * grid]; row p sends cell p[k] to position k.
    """
    tiles = check_grid(grid) ** 2
    total = math.factorial(tiles)
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= total:
        raise ValueError(
            f"jigsaw: num_permutations must be an integer in [2, {total}] for grid {grid}, "
            f"got {count!r}"
        )
    return _greedy_permutations(tiles, count, int(seed)).clone()


@functools.lru_cache(maxsize=8)
def _greedy_permutations(tiles: int, count: int, seed: int) -> Tensor:
    with torch.device("cpu"):  # plain data, also when a method is built on the meta device
        return _greedy_search(tiles, count, seed)


def _greedy_search(tiles: int, count: int, seed: int) -> Tensor:
    candidates = torch.tensor(list(itertools.permutations(range(tiles))), dtype=torch.int8)
    columns = candidates.T.contiguous()  # [tiles, n!]: the distance sums over contiguous rows
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(len(candidates), (), generator=generator))]
    summed = torch.zeros(len(candidates), dtype=torch.int32)
    for _ in range(count - 1):  # over the set being built, each step vectorised over all n!
        last = chosen[-1]
        summed += (columns != columns[:, last : last + 1]).sum(dim=0, dtype=torch.int32)
        summed[last] = -(2**30)  # chosen: never again
        chosen.append(int(summed.argmax()))
    return candidates[chosen].long()


def cut_tiles(
    images: Tensor,
    grid: int,
    tile: int,
    *,
    channel_shift: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One ``tile`` px square per grid cell at a random offset inside the cell, per sample.

    images [B, C, H, W] -> tiles [B, grid * grid, C, tile, tile] in row-major cell order.
    ``channel_shift`` > 0 moves each channel of each tile by its own offset in
    [-channel_shift, channel_shift] px along both axes, kept inside the cell (the paper's
    colour-channel jitter against chromatic aberration).
    """
    batch, channels, height, width = images.shape
    cell_h, cell_w = height // grid, width // grid
    if tile > min(cell_h, cell_w) or tile < 1:
        raise ValueError(
            f"jigsaw: tiles of {tile} px do not fit cells of {cell_h} x {cell_w} px "
            f"(images {height} x {width}, grid {grid})"
        )
    count = grid * grid
    cells = torch.arange(count, device=images.device)
    cell_top = (cells // grid * cell_h).expand(batch, count)
    cell_left = (cells % grid * cell_w).expand(batch, count)
    top = cell_top + randint(batch * count, cell_h - tile + 1, images, generator).view(batch, -1)
    left = cell_left + randint(batch * count, cell_w - tile + 1, images, generator).view(batch, -1)
    top, left = top[..., None].expand(-1, -1, channels), left[..., None].expand(-1, -1, channels)
    if channel_shift > 0:
        span = 2 * channel_shift + 1
        shape = (batch, count, channels)
        dy = randint(math.prod(shape), span, images, generator).view(shape) - channel_shift
        dx = randint(math.prod(shape), span, images, generator).view(shape) - channel_shift
        low_top, low_left = cell_top[..., None], cell_left[..., None]
        top = torch.clamp(top + dy, min=low_top, max=low_top + cell_h - tile)
        left = torch.clamp(left + dx, min=low_left, max=low_left + cell_w - tile)
    steps = torch.arange(tile, device=images.device)
    rows = (top[..., None] + steps)[..., :, None]  # [B, T, C, t, 1]
    cols = (left[..., None] + steps)[..., None, :]  # [B, T, C, 1, t]
    b = torch.arange(batch, device=images.device).view(-1, 1, 1, 1, 1)
    c = torch.arange(channels, device=images.device).view(1, 1, -1, 1, 1)
    return images[b, c, rows, cols]


def shuffle_tiles(tiles: Tensor, orders: Tensor) -> Tensor:
    """tiles [B, T, ...] reordered per sample: position k gets tile ``orders[b, k]``."""
    return tiles[torch.arange(len(tiles), device=tiles.device)[:, None], orders]


def normalize_tiles(tiles: Tensor, eps: float = 1e-5) -> Tensor:
    """Every tile [..., C, t, t] to zero mean and unit standard deviation on its own (the
    paper's guard against matching neighbours by their low-level statistics)."""
    dims = (-3, -2, -1)
    mean = tiles.mean(dim=dims, keepdim=True)
    var = tiles.var(dim=dims, unbiased=False, keepdim=True)
    return (tiles - mean) * torch.rsqrt(var + eps)


@dataclass(frozen=True)
class JigsawPuzzle:
    """Shuffled tiles [B, T, C, t, t], their orders [B, T] (position k holds cell
    ``orders[b, k]``) and targets [B] (the permutation's row in the set; None when the
    permutations were drawn uniformly)."""

    tiles: Tensor
    orders: Tensor
    targets: Tensor | None


def jigsaw_puzzle(
    images: Tensor,
    grid: int,
    *,
    permutations: Tensor | None = None,
    tile_fraction: float = TILE_FRACTION,
    normalize: bool = False,
    channel_jitter: bool = False,
    generator: torch.Generator | None = None,
) -> JigsawPuzzle:
    """Cut ``images`` [B, C, H, W] into a grid x grid puzzle per sample and shuffle it.

    ``permutations`` [P, T]: each sample draws a row (its target); None: each sample draws a
    permutation uniformly from all T! (PIRL). ``normalize``: every tile standardised on its
    own; ``channel_jitter``: the colour channels of every tile shifted independently by up to
    ``CHANNEL_SHIFT_FRACTION`` of the tile (2 px of 64; none below 16 px tiles). The two are the
    paper's guards for natural images; wafer maps use neither.
    """
    if images.ndim != 4:
        raise ValueError(f"jigsaw: expected images [B, C, H, W], got {tuple(images.shape)}")
    tile = tile_size(min(images.shape[-2:]), grid, tile_fraction)
    shift = round(tile * CHANNEL_SHIFT_FRACTION) if channel_jitter else 0
    tiles = cut_tiles(images, grid, tile, channel_shift=shift, generator=generator)
    batch, count = tiles.shape[:2]
    if permutations is None:
        targets = None
        orders = rand((batch, count), images, generator).argsort(dim=1)
    else:
        if permutations.ndim != 2 or permutations.shape[1] != count:
            raise ValueError(
                f"jigsaw: permutations must be [P, {count}] for grid {grid}, got "
                f"{tuple(permutations.shape)}"
            )
        targets = randint(batch, len(permutations), images, generator)
        orders = permutations.to(images.device)[targets]
    tiles = shuffle_tiles(tiles, orders)
    return JigsawPuzzle(normalize_tiles(tiles) if normalize else tiles, orders, targets)


__all__ = [
    "JIGSAW_GRIDS",
    "MIN_TILE_SIZE",
    "TILE_FRACTION",
    "JigsawPuzzle",
    "check_grid",
    "cut_tiles",
    "default_grid",
    "default_num_permutations",
    "hamming_permutations",
    "jigsaw_puzzle",
    "normalize_tiles",
    "shuffle_tiles",
    "tile_size",
]
