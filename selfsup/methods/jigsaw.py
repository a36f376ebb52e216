"""Jigsaw puzzles (Noroozi & Favaro 2016)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.heads import mlp
from selfsup.methods.base import LossOutput, Method, check_positive, embedding_std, register
from selfsup.views.jigsaw import (
    TILE_FRACTION,
    JigsawPuzzle,
    check_grid,
    default_grid,
    default_num_permutations,
    hamming_permutations,
    jigsaw_puzzle,
    tile_size,
)


def puzzle_grid(method: Method, grid: int | None, tile_fraction: float) -> int:
    """The grid a jigsaw-based method cuts its images into: ``grid``, or by default 3 x 3 from
    64 px up and 2 x 2 below; fails at construction if the tiles would be too small."""
    grid = default_grid(method.image_size) if grid is None else check_grid(grid, method.method_name)
    tile_size(method.image_size, grid, tile_fraction, method.method_name)
    return grid


@register("jigsaw")
class Jigsaw(Method):
    """Jigsaw: cut every image into a grid of tiles, shuffle them by a permutation from a fixed
    set and predict which permutation it was.

    Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw
    Puzzles", ECCV 2016. With the image cut into T = grid^2 cells, a tile x_k taken at a random
    offset inside cell k, p = the permutation drawn from the set of P (target y = its index),
    h the shared tile head and c the classifier over the tiles' features in shuffled order:
        L = -log softmax(c([h(f(x_{p_1})), ..., h(f(x_{p_T}))]))_y,   averaged over the batch.
    All tiles of a batch go through the backbone in one pass ([B T, C, t, t]).
    Shapes: views 1 x [B, C, H, W]; tiles [B, T, C, t, t]; f [B T, feature_dim];
    h [B T, tile_dim]; logits [B, P].

    Defaults: a 2 x 2 grid with all 24 permutations (Super-Selfish's default, which fits small
    images: 14 px tiles at 32 px); ``grid=3`` is the paper's (100 permutations by default) and
    ``grid=None`` picks 3 from 64 px up, 2 below. The rest as the paper (sec. 3-4): tiles of
    64/75 of a cell (64 px tiles in 75 px cells of 225 px images: the random gap hides edge
    continuity), every tile normalised to
    zero mean and unit std on its own and its colour channels shifted by up to 2/64 of its side
    (low-level statistics and chromatic aberration), 30 % grayscale images (``jigsaw`` recipe);
    a permutation set with maximal average Hamming distance (Algorithm 1: ``hamming_permutations``,
    seeded by ``permutation_seed``); the context-free network's heads: a shared per-tile fc
    (``tile_head``: Linear-BN-ReLU to ``tile_dim`` 1024, the paper's fc6) and the classifier on
    their concatenation (Linear-BN-ReLU to ``hidden_dim`` 4096, the paper's fc7, then Linear to
    P, fc8). ``encoder`` is backbone + tile_head: an image -> its tile-level embedding.

    Departures: the 2 x 2 default (3 x 3 cells of a 32 px image give 9 px tiles, of a 16 px
    image 4 px); ``num_permutations=None`` takes all 24 orders of a
    2 x 2 grid and 100 for 3 x 3 (the paper's Table 3 compares sets of 100 and 1000:
    ``num_permutations=1000``, built in about ten seconds); BatchNorm in the heads instead of
    dropout; grayscale with p 0.3 as common re-implementations (the paper: "grayscale
    images", no rate). Wafer maps (``view_style="wafer"``): tiles keep their die codes, no
    normalisation or channel shift.
    """

    view_recipe = "jigsaw"
    encoder_head = "tile_head"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        grid: int | None = 2,
        num_permutations: int | None = None,
        permutation_seed: int = 0,
        tile_fraction: float = TILE_FRACTION,
        tile_dim: int = 1024,
        hidden_dim: int = 4096,
        **kwargs: Any,
    ) -> None:
        check_positive("jigsaw", tile_dim=tile_dim, hidden_dim=hidden_dim)
        super().__init__(backbone, feature_size, **kwargs)
        self.grid = puzzle_grid(self, grid, tile_fraction)
        self.tile_fraction = tile_fraction
        count = (
            default_num_permutations(self.grid) if num_permutations is None else num_permutations
        )
        # a buffer: a checkpoint keeps the set its classifier's outputs index
        self.register_buffer(
            "permutations", hamming_permutations(self.grid, count, permutation_seed)
        )
        tile_dim, hidden_dim = self.head_sizes(tile_dim=tile_dim, hidden_dim=hidden_dim).values()
        self.tile_head = nn.Sequential(
            nn.Linear(self.feature_dim, tile_dim, bias=False),
            nn.BatchNorm1d(tile_dim),
            nn.ReLU(inplace=True),
        )
        self.classifier = mlp(self.grid**2 * tile_dim, hidden_dim, count)

    def puzzle(self, images: Tensor) -> JigsawPuzzle:
        """Every image's tiles, shuffled by a permutation drawn from the set (its target)."""
        natural = self.view_style == "natural"
        return jigsaw_puzzle(
            images,
            self.grid,
            permutations=self.permutations,
            tile_fraction=self.tile_fraction,
            normalize=natural,
            channel_jitter=natural,
        )

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 1:
            raise ValueError(f"jigsaw needs 1 view per image (cut into tiles), got {len(views)}")
        puzzle = self.puzzle(views[0])
        batch, count = puzzle.orders.shape
        features = self.backbone(puzzle.tiles.flatten(0, 1))
        tiles = self.tile_head(features).reshape(batch, -1)  # tile features in shuffled order
        logits = self.classifier(tiles).float()
        loss = F.cross_entropy(logits, puzzle.targets)
        accuracy = (logits.detach().argmax(dim=1) == puzzle.targets).float().mean()
        return LossOutput(
            loss, logs={"accuracy": accuracy, "collapse_std": embedding_std(features)}
        )
