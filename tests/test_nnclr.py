"""NNCLR (Dwibedi et al. 2021): the nearest-neighbour lookup on a hand case, the loss against
loops, the support set's start and FIFO update, DDP correctness on 2 gloo ranks (gradients and
the support set), lightly's lookup, and a smoke run.

lightly 1.6.0: ``NNMemoryBankModule`` does the same lookup (compared below; it returns the stored
row, unnormalised, where ours returns it L2-normalised, and it searches the whole bank, random
rows included). Its NNCLR example feeds the neighbours to ``NTXentLoss``, SimCLR's 2N-anchor loss
whose denominators also hold neighbour-neighbour and prediction-prediction pairs; that is not the
paper's eq. 2 (neighbours against the batch's predictions only), so the loss values are not
compared.
"""

import math

import pytest
import torch
from ddp_harness import WORLD, assert_ddp_gradients, run_on_ranks
from torch import nn
from torch.nn import functional as F

import selfsup
from selfsup.losses import nearest_neighbours, nnclr_loss
from selfsup.methods import NNCLR

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGE_SIZE, BATCH = 16, 8
SMALL = dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, queue_size=64)


def test_nearest_neighbour_is_the_largest_cosine_not_the_largest_dot_product():
    support = torch.tensor([[10.0, 0.0], [0.6, 0.8], [0.0, -2.0], [-1.0, 0.0]])
    z = torch.tensor([[0.5, 0.8], [3.0, 0.1], [0.1, -5.0], [-1.0, 0.2], [0.0, 1.0]])
    # cosines by hand: [0.5, 0.8] -> 0.53 with row 0, 0.996 with row 1 (the dot product would
    # pick row 0: 5.0 vs 0.94); [0.0, 1.0] -> 0.8 with row 1, 0 with row 0
    expected_rows = [1, 0, 2, 3, 1]
    got = nearest_neighbours(z, support)
    assert torch.allclose(got, F.normalize(support[expected_rows], dim=1))
    assert not got.requires_grad
    with pytest.raises(ValueError, match="non-empty support"):
        nearest_neighbours(z, support[:0])


def nnclr_by_loops(n, p, t):
    """Eq. 2 and the symmetric term, anchor by anchor, as plain floats; their mean."""
    n = [F.normalize(v, dim=0) for v in n]
    p = [F.normalize(v, dim=0) for v in p]
    b = len(n)

    def term(i, rows_are_neighbours):
        if rows_are_neighbours:  # eq. 2: n_i against every p_k
            scores = [float(n[i] @ p[k]) / t for k in range(b)]
        else:  # symmetric: p_i against every n_k
            scores = [float(n[k] @ p[i]) / t for k in range(b)]
        return -math.log(math.exp(scores[i]) / sum(math.exp(s) for s in scores))

    eq2 = sum(term(i, True) for i in range(b)) / b
    symmetric = sum(term(i, False) for i in range(b)) / b
    return (eq2 + symmetric) / 2


def test_loss_matches_loops_and_sends_no_gradient_to_the_neighbours():
    g = torch.Generator().manual_seed(0)
    n = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    p = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    for t in (0.1, 0.5):
        loss = nnclr_loss(n, p, t)
        assert loss.item() == pytest.approx(nnclr_by_loops(n.detach(), p.detach(), t), abs=1e-10)
    loss.backward()
    assert n.grad is None and p.grad.abs().max() > 1e-3
    # the two terms differ: the symmetric one is not eq. 2 again
    row = F.cross_entropy(F.normalize(n, dim=1) @ F.normalize(p, dim=1).T / 0.5, torch.arange(5))
    assert abs(row.item() - loss.item()) > 1e-4
    with pytest.raises(ValueError, match="equal shape"):
        nnclr_loss(n, p[:, :3])


def test_lookup_matches_lightly_nn_memory_bank():
    lightly_bank = pytest.importorskip("lightly.models.modules.nn_memory_bank")
    g = torch.Generator().manual_seed(1)
    support = F.normalize(torch.randn(32, 6, generator=g), dim=1)
    z = torch.randn(10, 6, generator=g) * 3
    module = lightly_bank.NNMemoryBankModule(size=(32, 6))
    module.bank = support.clone()
    theirs = module(z, update=False)
    assert torch.allclose(nearest_neighbours(z, support), F.normalize(theirs, dim=1), atol=1e-6)


# --- the method ---------------------------------------------------------------------------------


def build(**extra) -> NNCLR:
    return selfsup.build(
        "nnclr", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=IMAGE_SIZE,
        **{**SMALL, **extra},
    )  # fmt: skip


def hand_views(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) for _ in range(2)]


def test_paper_defaults_heads_and_bad_arguments():
    defaults = selfsup.list_methods()["nnclr"]
    assert defaults["queue_size"] == 98304 and defaults["temperature"] == 0.1
    assert (defaults["proj_hidden_dim"], defaults["proj_dim"], defaults["pred_hidden_dim"]) == (
        2048, 256, 4096,
    )  # fmt: skip
    method = build()
    linears = [m for m in method.projector if isinstance(m, nn.Linear)]
    norms = [m for m in method.projector if isinstance(m, nn.BatchNorm1d)]
    assert [m.out_features for m in linears] == [16, 16, 8] and len(norms) == 3
    assert [m.out_features for m in method.predictor if isinstance(m, nn.Linear)] == [16, 8]
    assert method.support_set.keys.shape == (64, 8)
    for bad in (dict(temperature=0.0), dict(queue_size=0)):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=f"nnclr: {name} must be > 0"):
            build(**bad)
    with pytest.raises(ValueError, match="nnclr needs 2 views"):
        method.training_loss(hand_views(0)[:1])
    with pytest.raises(ValueError, match="queue_size=4 is smaller"):
        build(queue_size=4).training_loss(hand_views(0))


def test_support_set_starts_with_the_projection_itself_then_searches_written_rows_only():
    torch.manual_seed(0)
    method = build()
    z = torch.randn(BATCH, 8)
    assert method.support() is None
    assert torch.allclose(method.neighbours(z), F.normalize(z, dim=1))
    method.update_support_set(z[:3])
    assert int(method.support_filled) == 3 and int(method.support_set.ptr) == 3
    # an unwritten (random) row equal to z[5] must not be found; the written rows are
    method.support_set.keys[10] = F.normalize(z[5], dim=0)
    found = method.neighbours(z)
    written = F.normalize(z[:3], dim=1)
    assert all(any(torch.allclose(row, w) for w in written) for row in found)
    assert torch.allclose(found[:3], written)
    method.update_support_set(torch.randn(64, 8))
    assert int(method.support_filled) == 64  # capped at the size


def test_first_view_projections_enter_the_support_set_after_the_loss():
    torch.manual_seed(0)
    method = build()
    views = hand_views(0)
    out = method.training_loss(views)
    z1 = method.projector(method.backbone(torch.cat(views)))[:BATCH]
    assert torch.allclose(method.support_set.keys[:BATCH], F.normalize(z1, dim=1), atol=1e-6)
    assert int(method.support_filled) == BATCH
    # the first step's positive was the projection itself
    assert float(out.logs["neighbour_similarity"]) == pytest.approx(1.0, abs=1e-6)
    assert float(out.logs["support_filled"]) == pytest.approx(BATCH / 64)


def test_smoke_training_moves_parameters_and_the_support_set():
    torch.manual_seed(0)
    method = build()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    before = [p.detach().clone() for p in method.backbone.parameters()]
    initial_keys = method.support_set.keys.clone()
    for step in range(3):
        out = method.training_loss(hand_views(step))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert int(method.support_filled) == (step + 1) * BATCH
    after = list(method.backbone.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    moved = (method.support_set.keys != initial_keys).any(dim=1)
    assert moved[: 3 * BATCH].all() and not moved[3 * BATCH :].any()
    assert 0 < float(out.logs["neighbour_similarity"]) <= 1 + 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.training_loss(hand_views(9)).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# --- 2 ranks: the whole training_loss on BatchNorm-free heads ------------------------------------

DIM, PROJ, QUEUE = 6, 5, 16


def nnclr_steps(data, rows):
    """Two training_loss calls of an NNCLR whose backbone flattens [B, 3, 1, 2] "views" to DIM
    and whose heads are fixed Linear layers (BatchNorm statistics would differ per rank), from a
    support set with 6 of 16 rows written: step 1 searches those 6, step 2 the 14 then written,
    and leaves the FIFO wrapped (ptr 6, filled 16)."""
    torch.manual_seed(0)
    method = NNCLR(
        nn.Flatten(), DIM, proj_hidden_dim=8, proj_dim=PROJ, pred_hidden_dim=8,
        queue_size=QUEUE, image_size=4,
    )  # fmt: skip
    method.projector = nn.Linear(DIM, PROJ).double()
    method.predictor = nn.Linear(PROJ, PROJ).double()
    with torch.no_grad():
        method.projector.weight.copy_(data["w_proj"])
        method.predictor.weight.copy_(data["w_pred"])
        method.support_set.keys.copy_(data["support"])
        method.support_set.ptr.fill_(6)
        method.support_filled.fill_(6)
    grads = []
    for step in range(2):
        v1 = data["views1"][step][rows].clone().requires_grad_()
        v2 = data["views2"][step][rows].clone().requires_grad_()
        method.training_loss([v1, v2]).loss.backward()
        grads += [v1.grad, v2.grad]
    return {
        "views": tuple(grads),
        "weights": (method.projector.weight.grad, method.predictor.weight.grad),
        "support": method.support_set.keys.clone(),
        "state": torch.stack([method.support_set.ptr, method.support_filled]),
    }


def test_two_ranks_give_the_one_process_gradients_and_support_set():
    g = torch.Generator().manual_seed(2)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    data = {
        "views1": r(2, BATCH, 3, 1, 2),
        "views2": r(2, BATCH, 3, 1, 2),
        "w_proj": r(PROJ, DIM),
        "w_pred": r(PROJ, PROJ),
        "support": F.normalize(r(QUEUE, PROJ), dim=1).float(),
    }
    results = run_on_ranks(nnclr_steps, data, batch=BATCH)
    assert_ddp_gradients(nnclr_steps, data, results, keys=["views"], batch=BATCH)
    reference = nnclr_steps(data, slice(None))
    for i, name in enumerate(("projector", "predictor")):
        mean = sum(r["weights"][i] for r in results) / WORLD
        assert torch.allclose(mean, reference["weights"][i], atol=1e-10), name
    assert torch.equal(results[0]["support"], results[1]["support"])
    assert torch.allclose(results[0]["support"], reference["support"], atol=1e-6)
    assert reference["state"].tolist() == [6, 16]
    assert all(torch.equal(r["state"], reference["state"]) for r in results)
    assert not torch.equal(reference["support"], data["support"])
