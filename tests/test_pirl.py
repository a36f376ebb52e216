"""PIRL (Misra & van der Maaten 2020): eq. 5 on a hand case (the tiles' and the image's NCE
against the memory bank, one normaliser Z), the bank update, lambda's role, DDP on 2 gloo ranks
(gradients, bank, Z), a smoke run, the data defaults and a 225 px step."""

import math

import pytest
import torch
from ddp_harness import WORLD, assert_ddp_gradients, run_on_ranks
from torch import nn
from torch.nn import functional as F

import selfsup
from selfsup.methods import PIRL
from selfsup.views import make_views
from selfsup.views.jigsaw import JigsawPuzzle, cut_tiles, shuffle_tiles

pytestmark = pytest.mark.usefixtures("one_thread")
N, K, T = 12, 5, 0.5  # bank rows, negatives, temperature of the hand cases


def small_pirl(**extra) -> PIRL:
    """A BatchNorm-free PIRL: 2 x 2 average pooling as the backbone (4 features of any image
    or tile), 8 px 1-channel images cut into their four 4 px cells."""
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
    return PIRL(
        pool, 4, in_channels=1, image_size=8, tile_fraction=1.0, proj_dim=3, num_samples=N,
        num_negatives=K, temperature=T, **extra,
    )  # fmt: skip


def fixed_puzzle(orders: torch.Tensor):
    """The jigsaw transform without randomness: whole cells shuffled by ``orders``."""

    def puzzle(images):
        return JigsawPuzzle(shuffle_tiles(cut_tiles(images, 2, 4), orders), orders, None)

    return puzzle


def nce_by_hand(pos, negs, log_z):
    """Wu et al.'s binary NCE, literally: h = P / (P + K/n) with P = exp(s) / Z."""
    noise = K / N
    p, pn = (pos - log_z).exp(), (negs - log_z).exp()
    return -((p / (p + noise)).log() + (noise / (pn + noise)).log().sum(dim=1)).mean()


def test_loss_is_eq_5_by_hand_and_the_bank_moves_towards_the_image_features():
    torch.manual_seed(0)
    method = small_pirl()
    image, base = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    orders = torch.tensor([[3, 2, 1, 0], [1, 0, 3, 2], [0, 2, 3, 1]])
    indices = torch.tensor([4, 0, 9])
    method.puzzle = fixed_puzzle(orders)
    method.bank.written.fill_(True)  # rows as written by earlier steps
    rows, seed = method.bank.rows.clone(), int(method.bank.seed)

    with torch.no_grad():
        f = method.projector(F.avg_pool2d(image, 4).flatten(1))
        cells = [base[:, :, r : r + 4, c : c + 4] for r in (0, 4) for c in (0, 4)]
        tiles = [torch.stack([cells[k][b] for k in orders[b]]) for b in range(3)]
        per_tile = method.tile_projector(
            F.avg_pool2d(torch.stack(tiles).flatten(0, 1), 2).flatten(1)
        )
        g = method.jigsaw_projector(per_tile.reshape(3, -1))

        def logits(x, draw):
            negatives = torch.randint(
                0, N, (K,), generator=torch.Generator().manual_seed(seed + draw)
            )
            x = F.normalize(x, dim=1)
            return (x * rows[indices]).sum(1) / T, x @ rows[negatives].T / T

        g_pos, g_neg = logits(g, 0)  # the tiles' term comes first and fixes Z
        f_pos, f_neg = logits(f, 1)
        everything = torch.cat([g_pos[:, None], g_neg], dim=1)
        log_z = math.log(N * everything.exp().mean().item())
        expected = 0.5 * nce_by_hand(g_pos, g_neg, log_z) + 0.5 * nce_by_hand(f_pos, f_neg, log_z)

    out = method.training_loss([image, base], indices=indices)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert float(method.contrast.log_z) == pytest.approx(log_z, rel=1e-5)
    moved = F.normalize(0.5 * rows[indices] + 0.5 * F.normalize(f, dim=1), dim=1)
    assert torch.allclose(method.bank.rows[indices], moved, atol=1e-6)
    others = torch.ones(N, dtype=torch.bool).index_fill_(0, indices, False)
    assert torch.equal(method.bank.rows[others], rows[others])


def test_lambda_weighs_the_two_terms():
    torch.manual_seed(0)
    only_tiles = small_pirl(jigsaw_weight=1.0)
    only_tiles.puzzle = fixed_puzzle(torch.tensor([[1, 0, 3, 2]] * 4))
    images = torch.randn(4, 1, 8, 8)
    only_tiles.training_loss([images, images], indices=torch.arange(4)).loss.backward()
    assert not only_tiles.projector.weight.grad.any()  # f only feeds the bank
    assert only_tiles.tile_projector.weight.grad.abs().sum() > 0


def test_defaults_errors_and_data_defaults():
    defaults = selfsup.list_methods()["pirl"]
    assert (defaults["proj_dim"], defaults["num_negatives"], defaults["temperature"]) == (
        128,
        32000,
        0.07,
    )
    assert (defaults["bank_momentum"], defaults["jigsaw_weight"], defaults["nce_kind"]) == (
        0.5,
        0.5,
        "nce",
    )
    assert PIRL.data_defaults(1000, 64) == {"num_samples": 1000, "num_negatives": 1000}
    assert PIRL.data_defaults(10**6, 64)["num_negatives"] == 32000
    assert PIRL.batch_fields == ("indices",)
    method = small_pirl()
    with pytest.raises(ValueError, match=r"pirl keeps one memory-bank row .*indices=idx"):
        method(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="pirl: jigsaw_weight must be in"):
        small_pirl(jigsaw_weight=1.5)
    with pytest.raises(ValueError, match="pirl needs num_samples"):
        PIRL("convnet_tiny", image_size=16)
    with pytest.raises(ValueError, match="pirl: tiles would be 2 px"):
        PIRL("convnet_tiny", image_size=8, grid=3, num_samples=4)
    views = make_views("pirl", image_size=16)
    assert views.num_views == 2 and views.params["jigsaw_crop_scale"] == (0.6, 1.0)


def build(image_size: int = 16, **extra) -> PIRL:
    return selfsup.build(
        "pirl", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=image_size,
        proj_dim=8, num_samples=32, num_negatives=16, **extra,
    )  # fmt: skip


def test_smoke_training_moves_parameters_and_the_bank():
    torch.manual_seed(0)
    method = build()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    before = [p.detach().clone() for p in method.backbone.parameters()]
    bank = method.bank.rows.clone()
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    for _ in range(3):
        out = method.training_loss(method.views(images), indices=torch.arange(8))
        assert torch.isfinite(out.loss) and {"log_z", "jigsaw_positive_is_top"} <= set(out.logs)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = method.backbone.parameters()
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert not torch.equal(method.bank.rows[:8], bank[:8])
    assert torch.equal(method.bank.rows[8:], bank[8:])
    assert method.embed(images).shape == (8, method.feature_dim)  # whole images
    softmax = build(nce_kind="softmax")
    assert torch.isfinite(softmax(images, indices=torch.arange(8)))


def test_a_225_px_image_trains_with_a_3_by_3_puzzle():
    torch.manual_seed(0)
    method = build(225)
    assert method.grid == 3
    images = torch.randint(0, 256, (2, 3, 225, 225), dtype=torch.uint8)
    views = method.views(images)
    assert method.puzzle(views[1]).tiles.shape == (2, 9, 3, 64, 64)
    loss = method(images, indices=torch.tensor([3, 30]))
    loss.backward()
    assert torch.isfinite(loss)


# --- 2 ranks ------------------------------------------------------------------------------------

BATCH = 8


def pirl_step(data, rows):
    """One training_loss of the BatchNorm-free PIRL: every rank seeds alike (the trainer does),
    so the bank, its noise sampler and the heads start the same."""
    torch.manual_seed(0)
    method = small_pirl()
    method.puzzle = fixed_puzzle(data["orders"][rows])
    image = data["image"][rows].clone().requires_grad_()
    base = data["base"][rows].clone().requires_grad_()
    method.training_loss([image, base], indices=data["indices"][rows]).loss.backward()
    return {
        "views": (image.grad, base.grad),
        "weights": (method.projector.weight.grad, method.jigsaw_projector.weight.grad),
        "bank": method.bank.rows.clone(),
        "log_z": method.contrast.log_z.clone(),
    }


def test_two_ranks_give_the_one_process_gradients_bank_and_normaliser():
    g = torch.Generator().manual_seed(2)
    data = {
        "image": torch.randn(BATCH, 1, 8, 8, generator=g),
        "base": torch.randn(BATCH, 1, 8, 8, generator=g),
        "orders": torch.rand(BATCH, 4, generator=g).argsort(dim=1),
        "indices": torch.randperm(N, generator=g)[:BATCH],
    }
    results = run_on_ranks(pirl_step, data)
    assert_ddp_gradients(pirl_step, data, results, keys=["views"])
    reference = pirl_step(data, slice(None))
    for i, name in enumerate(("projector", "jigsaw_projector")):
        mean = sum(r["weights"][i] for r in results) / WORLD
        assert torch.allclose(mean, reference["weights"][i], atol=1e-6), name
    assert torch.equal(results[0]["bank"], results[1]["bank"])
    assert torch.allclose(results[0]["bank"], reference["bank"], atol=1e-6)
    for r in results:
        assert torch.allclose(r["log_z"], reference["log_z"], atol=1e-6)
