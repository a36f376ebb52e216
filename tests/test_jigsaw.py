"""Jigsaw (Noroozi & Favaro 2016): the batched tile op (tiles from their cells, a gap, channel
shifts, per-tile normalisation, wafer codes kept), the permutation set (the paper's greedy
Algorithm 1 by loops), the loss on a hand case, DDP on 2 gloo ranks, a smoke run, 225 px."""

import itertools

import pytest
import torch
from ddp_harness import WORLD, assert_ddp_gradients, run_on_ranks
from torch import nn
from torch.nn import functional as F

import selfsup
from selfsup.methods import Jigsaw
from selfsup.views import make_views
from selfsup.views.jigsaw import (
    JigsawPuzzle,
    cut_tiles,
    default_grid,
    hamming_permutations,
    jigsaw_puzzle,
    normalize_tiles,
    shuffle_tiles,
    tile_size,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(tile_dim=8, hidden_dim=16)


def build(image_size: int = 16, **extra) -> Jigsaw:
    return selfsup.build(
        "jigsaw", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=image_size,
        **{**SMALL, **extra},
    )  # fmt: skip


def positions(batch: int, channels: int, size: int) -> torch.Tensor:
    """Images whose every value encodes (sample, channel, row, column)."""
    return torch.arange(batch * channels * size * size, dtype=torch.float64).view(
        batch, channels, size, size
    )


def top_left(tile: torch.Tensor, size: int) -> tuple[int, int]:
    """(row, column) of a [t, t] crop of ``positions`` images."""
    pixel = int(tile[0, 0]) % (size * size)
    return pixel // size, pixel % size


# --- the tile op ------------------------------------------------------------------------------


def test_tile_sizes_scale_with_the_image_and_refuse_tiny_tiles():
    assert tile_size(225, 3) == 64  # the paper: 64 px tiles in 75 px cells
    assert (tile_size(16, 2), tile_size(32, 2), tile_size(16, 3), tile_size(64, 3)) == (
        7,
        14,
        4,
        18,
    )
    assert (default_grid(16), default_grid(32), default_grid(64), default_grid(225)) == (2, 2, 3, 3)
    with pytest.raises(ValueError, match="jigsaw: tiles would be 3 px .*at least 4 px"):
        tile_size(12, 3)
    with pytest.raises(ValueError, match="jigsaw: grid must be 2 or 3, got 4"):
        tile_size(64, 4)
    with pytest.raises(ValueError, match="tile_fraction must be in"):
        tile_size(64, 2, 1.5)


def test_every_tile_is_a_crop_inside_its_own_cell_at_a_per_sample_offset():
    size, grid, tile = 18, 3, 5  # cells of 6 px: offsets 0 or 1 along each axis
    images = positions(64, 2, size)
    tiles = cut_tiles(images, grid, tile)
    assert tiles.shape == (64, 9, 2, tile, tile)
    offsets = set()
    for b, k, c in itertools.product(range(64), range(9), range(2)):
        y, x = top_left(tiles[b, k, c], size)
        assert torch.equal(tiles[b, k, c], images[b, c, y : y + tile, x : x + tile])
        cell_y, cell_x = k // grid * 6, k % grid * 6
        assert cell_y <= y <= cell_y + 6 - tile and cell_x <= x <= cell_x + 6 - tile, (b, k)
        offsets.add((y - cell_y, x - cell_x))
        if c == 1:  # without channel shifts the channels of a tile are aligned
            assert top_left(tiles[b, k, 0], size) == (y, x)
    assert offsets == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_channel_shifts_move_channels_apart_but_keep_them_in_the_cell():
    size, grid, tile = 20, 2, 6  # cells of 10 px
    images = positions(32, 3, size)
    tiles = cut_tiles(images, grid, tile, channel_shift=2)
    apart = 0
    for b, k in itertools.product(range(32), range(4)):
        corners = {top_left(tiles[b, k, c], size) for c in range(3)}
        for y, x in corners:
            cell_y, cell_x = k // grid * 10, k % grid * 10
            assert cell_y <= y <= cell_y + 10 - tile and cell_x <= x <= cell_x + 10 - tile
        apart += len(corners) > 1
    assert apart > 100  # of 128 tiles, nearly all have misaligned channels


def test_position_k_holds_the_cell_the_permutation_names_and_targets_index_the_set():
    images = positions(16, 1, 16)
    permutations = hamming_permutations(2, 24)
    reference = cut_tiles(images, 2, 7, generator=torch.Generator().manual_seed(3))
    puzzle = jigsaw_puzzle(
        images, 2, permutations=permutations, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(puzzle.orders, permutations[puzzle.targets])
    for b, k in itertools.product(range(16), range(4)):
        assert torch.equal(puzzle.tiles[b, k], reference[b, puzzle.orders[b, k]])
    assert len(set(puzzle.targets.tolist())) > 4  # every sample draws its own permutation
    uniform = jigsaw_puzzle(images, 2)  # PIRL's: any of the 4! orders, no target
    assert uniform.targets is None
    assert torch.equal(uniform.orders.sort(dim=1).values, torch.arange(4).expand(16, 4))


def test_shuffle_and_normalise_by_hand():
    tiles = torch.tensor([[[[[1.0, 3.0]]], [[[5.0, 5.0]]]]])  # [1, 2, 1, 1, 2]
    assert torch.equal(shuffle_tiles(tiles, torch.tensor([[1, 0]]))[0, 0], tiles[0, 1])
    normalised = normalize_tiles(tiles)
    assert torch.allclose(normalised[0, 0].flatten(), torch.tensor([-1.0, 1.0]), atol=1e-5)
    assert torch.equal(normalised[0, 1], torch.zeros(1, 1, 2))  # a flat tile stays finite


def greedy_by_loops(tiles: int, count: int, first: int) -> list[tuple[int, ...]]:
    """Algorithm 1 of the paper, literally: add the permutation with the largest summed
    Hamming distance to the chosen ones (first in lexicographic order on ties)."""
    remaining = list(itertools.permutations(range(tiles)))
    chosen = [remaining.pop(first)]
    while len(chosen) < count:
        sums = [
            sum(sum(a != b for a, b in zip(p, q, strict=True)) for q in chosen) for p in remaining
        ]
        chosen.append(remaining.pop(sums.index(max(sums))))
    return chosen


def test_permutation_set_is_the_papers_greedy_maximal_hamming_set():
    generator = torch.Generator().manual_seed(5)
    first = int(torch.randint(24, (), generator=generator))
    assert hamming_permutations(2, 10, seed=5).tolist() == [
        list(p) for p in greedy_by_loops(4, 10, first)
    ]
    assert hamming_permutations(2, 24).unique(dim=0).shape == (24, 4)  # all of them
    nine = hamming_permutations(3, 100)
    assert nine.shape == (100, 9) and nine.unique(dim=0).shape == (100, 9)
    assert torch.equal(nine.sort(dim=1).values, torch.arange(9).expand(100, 9))
    distances = (nine[:, None] != nine[None]).sum(dim=-1).double()
    assert distances.sum() / (100 * 99) == pytest.approx(8.08, abs=0.05)  # the paper's Table 3
    assert torch.equal(hamming_permutations(3, 100), nine)  # deterministic (and cached)
    with pytest.raises(ValueError, match=r"num_permutations must be an integer in \[2, 24\]"):
        hamming_permutations(2, 30)


def test_wafer_tiles_keep_their_codes():
    method = build(32, in_channels=1, view_style="wafer")
    codes = torch.randint(0, 3, (4, 1, 32, 32), dtype=torch.uint8)
    puzzle = method.puzzle(method.views(codes)[0])
    assert puzzle.tiles.shape == (4, 4, 1, 14, 14)
    assert set(puzzle.tiles.unique().tolist()) <= {0.0, 0.5, 1.0}
    assert torch.isfinite(method(codes))


def test_recipe_one_view_grayscale_no_jitter():
    natural = make_views("jigsaw", image_size=16)
    assert natural.num_views == 1 and natural.params["grayscale_p"] == 0.3
    assert natural.params["jitter_p"] == 0.0
    assert make_views("jigsaw", image_size=16, in_channels=1, style="wafer").num_views == 1


# --- the method -----------------------------------------------------------------------------


def test_defaults_errors_and_heads():
    assert selfsup.list_methods()["jigsaw"]["tile_dim"] == 1024
    method = build()
    assert method.grid == 2 and method.permutations.shape == (24, 4)
    assert method.classifier(torch.randn(2, 4 * 8)).shape == (2, 24)
    assert method.encoder(torch.rand(2, 3, 16, 16)).shape == (2, 8)
    assert build(num_permutations=6).permutations.shape == (6, 4)
    with pytest.raises(ValueError, match="jigsaw: grid must be 2 or 3, got 4"):
        build(grid=4)
    with pytest.raises(ValueError, match="jigsaw: tiles would be 2 px"):
        build(image_size=8, grid=3)
    with pytest.raises(ValueError, match="jigsaw needs 1 view"):
        method.training_loss([torch.rand(2, 3, 16, 16)] * 2)


def fixed_puzzle(method: Jigsaw, targets: torch.Tensor):
    """The method's puzzle without randomness: tiles = whole cells (tile_fraction 1),
    shuffled by the given rows of its permutation set."""

    def puzzle(images):
        tiles = cut_tiles(images, method.grid, images.shape[-1] // method.grid)
        orders = method.permutations[targets]
        return JigsawPuzzle(shuffle_tiles(tiles, orders), orders, targets)

    return puzzle


def test_loss_is_cross_entropy_over_the_tiles_in_shuffled_order_by_hand():
    torch.manual_seed(0)
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # a tile -> its mean
    method = Jigsaw(pool, 1, in_channels=1, image_size=8, tile_fraction=1.0, num_permutations=3)
    method.tile_head = nn.Identity()
    method.classifier = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        method.classifier.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 2]]))
    cells = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # the mean of each 4 x 4 cell
    image = cells.repeat_interleave(4, 0).repeat_interleave(4, 1)[None, None]
    targets = torch.tensor([1])
    method.puzzle = fixed_puzzle(method, targets)
    order = method.permutations[1]
    shuffled = cells.flatten()[order]  # position k shows cell order[k]
    logits = torch.stack([shuffled[0], shuffled[1], 2 * shuffled[3]])
    expected = -torch.log_softmax(logits, dim=0)[1]
    out = method.training_loss([image])
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert float(out.logs["accuracy"]) == float(logits.argmax() == 1)


def test_smoke_training_moves_the_backbone_and_logs_accuracy():
    torch.manual_seed(0)
    method = build()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    before = [p.detach().clone() for p in method.backbone.parameters()]
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    for _ in range(3):
        out = method.training_loss(method.views(images))
        assert torch.isfinite(out.loss) and 0 <= float(out.logs["accuracy"]) <= 1
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = method.backbone.parameters()
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert method.embed(images).shape == (8, method.feature_dim)  # whole images
    assert torch.isfinite(build(grid=3)(images))  # 4 px tiles still pass convnet_tiny


def test_a_225_px_image_trains_with_the_papers_grid():
    torch.manual_seed(0)
    assert build(225).grid == 2  # the 2 x 2 default at any size
    assert build(225, grid=None).grid == 3  # by image size: the paper's 3 x 3 from 64 px
    method = build(225, grid=3)
    assert method.grid == 3 and method.permutations.shape == (100, 9)
    images = torch.randint(0, 256, (2, 3, 225, 225), dtype=torch.uint8)
    assert method.puzzle(method.views(images)[0]).tiles.shape == (2, 9, 3, 64, 64)
    loss = method(images)
    loss.backward()
    assert torch.isfinite(loss)


# --- 2 ranks ------------------------------------------------------------------------------------

BATCH = 8


def jigsaw_step(data, rows):
    """One training_loss of a BatchNorm-free Jigsaw (pooling backbone, Linear heads) on 8 px
    1-channel images cut into their 4 cells, shuffled by the given permutations."""
    torch.manual_seed(0)
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
    method = Jigsaw(pool, 4, in_channels=1, image_size=8, tile_fraction=1.0, tile_dim=3)
    method.tile_head = nn.Linear(4, 3).double()
    method.classifier = nn.Linear(12, 24).double()
    method.puzzle = fixed_puzzle(method, data["targets"][rows])
    images = data["images"][rows].clone().requires_grad_()
    method.training_loss([images]).loss.backward()
    return {"images": images.grad, "classifier": method.classifier.weight.grad}


def test_two_ranks_give_the_one_process_gradients():
    g = torch.Generator().manual_seed(1)
    data = {
        "images": torch.randn(BATCH, 1, 8, 8, generator=g, dtype=torch.float64),
        "targets": torch.randint(0, 24, (BATCH,), generator=g),
    }
    results = run_on_ranks(jigsaw_step, data)
    assert_ddp_gradients(jigsaw_step, data, results, keys=["images"])
    reference = jigsaw_step(data, slice(None))
    mean = sum(r["classifier"] for r in results) / WORLD
    assert torch.allclose(mean, reference["classifier"], atol=1e-6)


def test_cross_entropy_matches_the_classifier_output():
    torch.manual_seed(0)
    method = build()
    images = torch.randn(4, 3, 16, 16)
    targets = torch.tensor([0, 5, 23, 7])
    method.puzzle = fixed_puzzle(method, targets)
    tiles = method.puzzle(images).tiles
    logits = method.classifier(method.tile_head(method.backbone(tiles.flatten(0, 1))).view(4, -1))
    assert method.training_loss([images]).loss.item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), abs=1e-5
    )
