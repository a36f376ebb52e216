"""SwAV: Sinkhorn-Knopp by hand and against a plain implementation, the swapped prediction by
loops, on 2 gloo ranks, against lightly, and the method's prototypes, freeze, queue and views."""

import math

import pytest
import torch
from torch.nn import functional as F

import selfsup
from selfsup.losses import prototype_scores, sinkhorn_knopp, swav_loss
from selfsup.runtime.distributed import local_rows
from tests.ddp_harness import WORLD, assert_ddp_gradients, rank_rows, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, BATCH = 16, 8
SMALL = dict(proj_hidden_dim=16, proj_dim=8, num_prototypes=6, num_local_crops=2)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def build(**kwargs):
    base = dict(backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=SIZE)
    return selfsup.build("swav", **{**base, **SMALL, **kwargs})


def hand_views(seed=0, batch=BATCH):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, s, s, generator=g) for s in (SIZE, SIZE, 8, 8)]


def plain_sinkhorn(scores, epsilon, iterations):
    """Matrix scaling written as in the paper: P = Diag(u) exp(S / eps) Diag(v) with the
    prototype marginal 1/K and the sample marginal 1/B, u and v updated in turn; then every
    sample's code rescaled to sum to 1."""
    kernel = torch.exp(scores.double() / epsilon)  # [B, K]
    kernel = kernel / kernel.sum()
    b, k = kernel.shape
    per_sample = torch.ones(b, dtype=torch.float64)
    for _ in range(iterations):
        per_prototype = (1 / k) / (kernel * per_sample[:, None]).sum(0)
        per_sample = (1 / b) / (kernel * per_prototype[None, :]).sum(1)
    plan = per_sample[:, None] * kernel * per_prototype[None, :]
    return plan / plan.sum(1, keepdim=True)


# --- Sinkhorn-Knopp ------------------------------------------------------------------------------


def test_sinkhorn_balanced_scores_keep_the_softmax():
    # rows and columns already balanced: the scaling changes nothing, so codes = softmax(s / eps)
    a, b, eps = 0.9, 0.2, 0.5
    scores = torch.tensor([[a, b], [b, a]], dtype=torch.float64)
    p = math.exp(a / eps) / (math.exp(a / eps) + math.exp(b / eps))
    expected = torch.tensor([[p, 1 - p], [1 - p, p]], dtype=torch.float64)
    assert torch.allclose(sinkhorn_knopp(scores, eps, 3), expected, atol=1e-12)


def test_sinkhorn_spreads_a_batch_that_prefers_one_prototype():
    # both samples prefer prototype 0; equipartition gives each prototype half the batch
    scores = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(sinkhorn_knopp(scores, 1.0, 1), torch.full((2, 2), 0.5).double())


def test_sinkhorn_marginals_and_a_plain_implementation():
    scores = F.normalize(randn(6, 4), dim=1)  # cosine-like scores, B=6, K=4
    codes = sinkhorn_knopp(scores, 0.05, 3)
    assert codes.dtype == torch.float64 and not codes.requires_grad
    assert torch.allclose(codes.sum(1), torch.ones(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(codes, plain_sinkhorn(scores, 0.05, 3), atol=1e-10)
    converged = sinkhorn_knopp(scores, 0.5, 500)  # each prototype gets B / K = 1.5 samples
    assert torch.allclose(converged.sum(0), torch.full((4,), 1.5).double(), atol=1e-8)
    assert torch.allclose(converged, plain_sinkhorn(scores, 0.5, 500), atol=1e-10)


def test_sinkhorn_is_stable_and_float32_under_autocast():
    # not cosines: exp(11 / 0.05) overflows float32 unless the maximum is subtracted first
    scores = 10 + F.normalize(randn(5, 3), dim=1).float()
    codes = sinkhorn_knopp(scores, 0.05, 3)
    assert torch.isfinite(codes).all()
    assert torch.allclose(codes, plain_sinkhorn(scores, 0.05, 3).float(), atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sinkhorn_knopp(scores.bfloat16(), 0.05, 3).dtype == torch.float32
        z = torch.randn(4, 8)
        assert prototype_scores(z, torch.randn(6, 8)).dtype == torch.float32
    with pytest.raises(ValueError, match="epsilon > 0"):
        sinkhorn_knopp(scores, 0.0, 3)


# --- the swapped prediction ----------------------------------------------------------------------


def swav_by_loops(scores, codes, temperature):
    """eq. 1-2 with Python floats: crops predict the codes of every other assignment crop."""
    total = 0.0
    for i, q in enumerate(codes):
        terms = []
        for v, s in enumerate(scores):
            if v == i:
                continue
            per_sample = []
            for b in range(len(s)):
                row = [x / temperature for x in s[b]]
                log_norm = math.log(sum(math.exp(x) for x in row))
                per_sample.append(-sum(q[b][k] * (row[k] - log_norm) for k in range(len(row))))
            terms.append(sum(per_sample) / len(per_sample))
        total += sum(terms) / len(terms)
    return total / len(codes)


def test_swav_loss_value_by_loops():
    scores = [randn(3, 4, seed=s) for s in range(4)]  # 2 global + 2 local crops
    codes = [torch.softmax(randn(3, 4, seed=10 + i), dim=1) for i in range(2)]
    expected = swav_by_loops([s.tolist() for s in scores], [c.tolist() for c in codes], 0.1)
    assert swav_loss(scores, codes, 0.1).item() == pytest.approx(expected, abs=1e-10)
    # hand case: 2 crops, one sample, one-hot code on prototype 0, equal scores: log 2
    flat = [torch.zeros(1, 2, dtype=torch.float64)] * 2
    one_hot = [torch.tensor([[1.0, 0.0]], dtype=torch.float64)] * 2
    assert swav_loss(flat, one_hot, 0.1).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="at least 2 crops"):
        swav_loss(scores[:1], codes[:1])


def test_codes_carry_no_gradient():
    scores = [randn(4, 3, seed=s).requires_grad_() for s in range(3)]
    codes = [sinkhorn_knopp(s, 0.05, 3) for s in scores[:2]]
    swav_loss(scores, codes).backward()
    # the gradient is the plain cross-entropy one: (softmax(s/t) - q) / (t * B * (V - 1) * G)
    for v, s in enumerate(scores):
        expected = torch.zeros_like(s)
        for i, q in enumerate(codes):
            if i != v:
                expected += (torch.softmax(s.detach() / 0.1, 1) - q) / (0.1 * 4 * 2 * 2)
        assert torch.allclose(s.grad, expected, atol=1e-10)


# --- 2 gloo ranks -----------------------------------------------------------------------------


def ddp_data():
    torch.manual_seed(0)
    method = build(queue_length=16, epoch_queue_starts=0)
    method.eval()  # BatchNorm on running statistics: a sample's features need no other sample
    return {
        "scores": F.normalize(randn(4, BATCH, 5), dim=-1),  # V=4 crops, B=8, K=5
        "queue": F.normalize(randn(2, 6, 5, seed=1), dim=-1),  # queue scores, 3 rows per rank
        "views": hand_views(),
        "state": method.state_dict(),
        "queue_features": F.normalize(randn(2, 16, 8, seed=2), dim=-1).float(),
    }


def swav_on_rows(data, rows):
    """Loss-level codes and gradients, then one step of the method with a full queue."""
    out = {}
    for name, queue in (("plain", None), ("queue", data["queue"])):
        scores = [s[rows].clone().requires_grad_() for s in data["scores"]]
        codes = []
        for i, s in enumerate(scores[:2]):
            inputs = s.detach()
            if queue is not None:
                inputs = torch.cat([queue[i][local_rows(6)], inputs])  # the rank's share
            codes.append(sinkhorn_knopp(inputs, 0.05, 3)[-len(s) :])
        swav_loss(scores, codes).backward()
        out[f"{name}_grads"] = tuple(s.grad for s in scores)
        out[f"{name}_codes"] = torch.stack(codes)

    torch.manual_seed(0)
    method = build(queue_length=16, epoch_queue_starts=0)
    method.load_state_dict(data["state"])
    method.eval()
    for queue, features in zip(method.queues, data["queue_features"], strict=True):
        queue.keys.copy_(features)
    method.queue_filled.fill_(16)
    method.training_loss([v[rows] for v in data["views"]]).loss.backward()
    out["prototype_grad"] = method.prototypes.weight.grad
    out["projector_grad"] = method.projector[0].weight.grad
    out["queue_keys"] = torch.stack([q.keys for q in method.queues])
    out["queue_ptr"] = method.queues[0].ptr.clone()
    return out


def test_two_ranks_match_one_process():
    data = ddp_data()
    results = run_on_ranks(swav_on_rows, data, batch=BATCH)
    assert_ddp_gradients(
        swav_on_rows, data, results, keys=["plain_grads", "queue_grads"], batch=BATCH
    )
    reference = swav_on_rows(data, slice(None))
    for rank, result in enumerate(results):
        rows = rank_rows(rank, BATCH)
        for name in ("plain_codes", "queue_codes"):  # codes of the global batch, rank's rows
            assert torch.allclose(result[name], reference[name][:, rows], atol=1e-12), name
        assert torch.equal(result["queue_keys"], results[0]["queue_keys"])
        assert torch.allclose(result["queue_keys"], reference["queue_keys"], atol=1e-6)
        assert int(result["queue_ptr"]) == int(reference["queue_ptr"]) == BATCH
    assert not torch.allclose(reference["plain_codes"], reference["queue_codes"], atol=1e-3)
    for name in ("prototype_grad", "projector_grad"):  # what DDP's average gives
        mean = sum(r[name] for r in results) / WORLD
        assert torch.allclose(mean, reference[name], atol=1e-6), name
        assert reference[name].abs().max() > 1e-4


# --- lightly ------------------------------------------------------------------------------------


def test_matches_lightly_values_and_gradients():
    """lightly 1.6's SwaVLoss on the same scores. Conventions that differ: lightly takes the
    high- and low-resolution crops (and queue scores) as separate lists and returns shape [1];
    its rows are normalised to 1 instead of 1/K (the next column step removes the factor);
    its sinkhorn is per process unless ``sinkhorn_gather_distributed=True`` (ours always uses
    the global batch); its queue scores go after the batch and its prototypes Linear has a
    bias (the official one has none); it does not shift the scores by their maximum."""
    lightly_swav = pytest.importorskip("lightly.loss.swav_loss")
    for with_queue in (False, True):
        ours = [randn(6, 5, seed=s).mul(0.3).requires_grad_() for s in range(4)]
        theirs = [s.detach().clone().requires_grad_() for s in ours]
        queue = [randn(10, 5, seed=20 + i).mul(0.3) for i in range(2)] if with_queue else None
        codes = []
        for i, s in enumerate(ours[:2]):
            inputs = s.detach() if queue is None else torch.cat([queue[i], s.detach()])
            codes.append(sinkhorn_knopp(inputs, 0.05, 3)[-6:])
        loss = swav_loss(ours, codes, 0.1)
        reference = lightly_swav.SwaVLoss(temperature=0.1)(theirs[:2], theirs[2:], queue)
        assert loss.item() == pytest.approx(reference.item(), abs=1e-10)
        loss.backward()
        reference.sum().backward()
        for a, b in zip(ours, theirs, strict=True):
            assert torch.allclose(a.grad, b.grad, atol=1e-10)
    scores = randn(6, 5)
    assert torch.allclose(sinkhorn_knopp(scores, 0.05, 3), lightly_swav.sinkhorn(scores, 3, 0.05))


# --- the method ---------------------------------------------------------------------------------


def test_prototypes_renormalised_frozen_in_epoch_zero_then_moving_and_queue_kept():
    torch.manual_seed(0)
    method = build(queue_length=16, epoch_queue_starts=1, freeze_prototypes_epochs=1)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    backbone_before = [p.detach().clone() for p in method.backbone.parameters()]
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0)
    step = 0
    for epoch in range(3):
        method.on_train_epoch_start(epoch)
        for _ in range(2):
            out = method.training_loss(hand_views(seed=step))
            step += 1
            assert torch.isfinite(out.loss)
            weight = method.prototypes.weight.detach().clone()
            assert torch.allclose(weight.norm(dim=1), torch.ones(6), atol=1e-6)  # renormalised
            optimizer.zero_grad()
            out.loss.backward()
            assert method.prototypes.weight.grad is not None
            method.before_optimizer_step()
            frozen = epoch == 0
            assert (method.prototypes.weight.grad is None) == frozen
            assert out.logs["prototypes_frozen"] == float(frozen)
            optimizer.step()
            moved = not torch.equal(method.prototypes.weight, weight)
            assert moved != frozen, (epoch, "prototypes moved" if moved else "did not move")
        # the queue fills from epoch 1: 2 steps of 8 rows fill its 16
        assert int(method.queue_filled) == (0, 16, 16)[epoch]
    assert out.logs["queue_filled"] == 1.0
    after = list(method.backbone.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(backbone_before, after, strict=True))
    state = method.state_dict()
    assert {"queue_filled", "queues.0.keys", "queues.1.keys", "queues.0.ptr"} <= set(state)
    fresh = build(queue_length=16, epoch_queue_starts=1)
    fresh.load_state_dict(state)
    assert int(fresh.queue_filled) == 16
    assert torch.equal(fresh.queues[1].keys, method.queues[1].keys)


def test_full_queue_joins_sinkhorn_only_and_stores_normalised_features():
    torch.manual_seed(0)
    method = build(queue_length=16, epoch_queue_starts=0)
    queued = F.normalize(torch.randn(2, 16, 8), dim=-1)
    for queue, features in zip(method.queues, queued, strict=True):
        queue.keys.copy_(features)
    method.queue_filled.fill_(16)
    scores = [torch.randn(BATCH, 6) for _ in range(2)]
    z = [torch.randn(BATCH, 8) * 3 for _ in range(2)]
    codes = method.codes(scores, z)
    weight = method.prototypes.weight
    for i in range(2):
        expected = sinkhorn_knopp(torch.cat([queued[i] @ weight.T, scores[i]]), 0.05, 3)[-BATCH:]
        assert torch.allclose(codes[i], expected, atol=1e-6)
        assert torch.allclose(method.queues[i].keys[:BATCH], F.normalize(z[i], dim=-1))
        assert torch.equal(method.queues[i].keys[BATCH:], queued[i][BATCH:])
    assert not torch.allclose(codes[0], sinkhorn_knopp(scores[0], 0.05, 3), atol=1e-3)


def test_multi_crop_views_follow_the_paper_and_the_image_size():
    assert selfsup.list_methods()["swav"]["num_prototypes"] == 3000
    for size, local in ((32, 14), (64, 27), (225, 96)):
        method = build(image_size=size)
        params = method.views.params
        assert params["global_crop_scale"] == (0.14, 1.0)
        assert params["local_crop_scale"] == (0.05, 0.14)
        assert (params["brightness"], params["hue"], params["global_solarize_p"]) == (0.8, 0.2, 0)
        assert params["global_blur_p"] == params["local_blur_p"] == (0.5 if size >= 96 else 0.0)
        images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
        views = method.views(images)
        assert [v.shape[-1] for v in views] == [size, size, local, local]
    torch.manual_seed(0)
    loss = method(torch.randint(0, 256, (2, 3, 225, 225), dtype=torch.uint8))
    assert torch.isfinite(loss)
    loss.backward()
    assert method.projector[0].weight.grad.abs().sum() > 0

    own = build(views={"global_crop_scale": (0.3, 1.0)}, local_crop_size=6)
    assert own.views.params["global_crop_scale"] == (0.3, 1.0)
    assert own.views.params["local_crop_scale"] == (0.05, 0.14)
    assert [v.shape[-1] for v in own.views(images[:, :, :16, :16])] == [16, 16, 6, 6]
    again = selfsup.build("swav", **own.hyperparameters())
    assert again.views.params == own.views.params
    wafer = build(in_channels=1, view_style="wafer")
    assert wafer.views.params["global_crop_scale"] == (0.6, 1.0)  # the dino recipe's wafer crops


@pytest.mark.parametrize(
    "name, value",
    [
        ("num_prototypes", 0),
        ("temperature", 0.0),
        ("sinkhorn_epsilon", -1.0),
        ("sinkhorn_iterations", 0),
        ("queue_length", -1),
        ("epoch_queue_starts", -1),
        ("freeze_prototypes_epochs", -1),
        ("num_local_crops", -1),
    ],
)
def test_bad_arguments_are_named(name, value):
    with pytest.raises(ValueError, match=f"swav: {name}"):
        build(**{name: value})


def test_queue_shorter_than_the_batch_and_wrong_view_count_are_refused():
    method = build(queue_length=4, epoch_queue_starts=0)
    with pytest.raises(ValueError, match="queue_length=4 is smaller than the global batch"):
        method.training_loss(hand_views())
    with pytest.raises(ValueError, match="swav needs 2 global"):
        build().training_loss(hand_views()[:3])


@pytest.mark.slow
def test_trainer_freezes_prototypes_in_epoch_zero_and_fills_the_queue_after():
    """The real training path (Lightning): the hooks arrive where SwAV needs them."""
    import lightning as L

    from selfsup.data import ImageDataset
    from selfsup.methods import SwAV
    from selfsup.train.module import PretrainModule
    from selfsup.train.trainer import BatchDataModule

    class Snapshots(SwAV):
        def on_train_epoch_start(self, epoch: int) -> None:
            super().on_train_epoch_start(epoch)
            self.snapshots.append((self.prototypes.weight.detach().clone(), int(self.queue_filled)))

    torch.manual_seed(0)
    method = Snapshots("convnet_tiny", image_size=SIZE, backbone_kwargs={"width": 4},
                       queue_length=16, epoch_queue_starts=1, **SMALL)  # fmt: skip
    method.snapshots = []
    images = torch.randint(0, 256, (16, 3, SIZE, SIZE), dtype=torch.uint8)
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(
        PretrainModule(method, lr=0.05, total_steps=6),
        datamodule=BatchDataModule(ImageDataset(images, None), BATCH, seed=0, num_workers=0),
    )
    (start, _), (after_epoch_0, filled_1), (after_epoch_1, filled_2) = method.snapshots
    # frozen through epoch 0 (2 optimizer steps; renormalising a unit row moves only the last bit)
    assert torch.allclose(start, after_epoch_0, atol=1e-6, rtol=0)
    assert (after_epoch_1 - after_epoch_0).abs().max() > 1e-3
    assert filled_1 == 0 and filled_2 == 16 and int(method.queue_filled) == 16
