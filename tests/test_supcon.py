"""SupCon (Khosla et al. 2020): the loss against eq. 2 written out with loops, its NT-Xent
special cases, DDP correctness on 2 gloo ranks, and the method trained with labels.

lightly 1.6.0 has no supervised contrastive loss (``lightly.loss`` holds no SupConLoss), so
there is no lightly comparison here.
"""

import math

import pytest
import torch
from ddp_harness import assert_ddp_gradients, run_on_ranks
from torch.nn import functional as F

import selfsup
from selfsup.losses import nt_xent_loss, supcon_loss

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGE_SIZE, BATCH = 16, 8
SMALL = dict(proj_hidden_dim=16, proj_dim=8)


def supcon_by_loops(z1, z2, labels, t):
    """Eq. 2 view by view: anchors i over the 2N views, positives = the other view of the same
    image, plus every other view of the same class when i is labelled; mean over anchors."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        others = [a for a in range(2 * n) if a != i]
        same_image = {p for p in others if p % n == i % n}
        same_class = {p for p in others if labels[i % n] >= 0 and labels[p % n] == labels[i % n]}
        positives = sorted(same_image | same_class)
        denominator = sum(math.exp(float(z[i] @ z[a]) / t) for a in others)
        logs = [math.log(math.exp(float(z[i] @ z[p]) / t) / denominator) for p in positives]
        total += -sum(logs) / len(positives)
    return total / (2 * n)


def test_closed_form_when_every_view_is_the_same_vector():
    # 4 identical views: every logit is 1/t, so each anchor's softmax is 1/3 on its 3 others:
    # labelled alike (3 positives) or unlabelled (1 positive), the loss is log 3.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    for labels in ([0, 0], [-1, -1], [0, -1]):
        got = supcon_loss(z, z.clone(), torch.tensor(labels), temperature=0.5)
        assert got.item() == pytest.approx(math.log(3), abs=1e-12)


def test_matches_eq2_by_loops_with_classes_and_unlabelled_samples():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, -1, 1, -1])
    for t in (0.1, 0.5):
        expected = supcon_by_loops(z1, z2, labels, t)
        assert supcon_loss(z1, z2, labels, t).item() == pytest.approx(expected, abs=1e-10)
    # the labels matter: with them the loss differs from NT-Xent's
    assert abs(supcon_loss(z1, z2, labels, 0.1) - nt_xent_loss(z1, z2, 0.1)) > 1e-3


def test_equals_nt_xent_when_no_sample_shares_a_label():
    """Exact relation: with labels all -1, all distinct, or None, P(i) is the other view only and
    A(i) all other 2N-1 views, so supcon_loss(z1, z2, labels, t) == nt_xent_loss(z1, z2, t)."""
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(5, 4, generator=g, dtype=torch.float64)
    z2 = torch.randn(5, 4, generator=g, dtype=torch.float64)
    expected = nt_xent_loss(z1, z2, 0.2).item()
    for labels in (torch.full((5,), -1), torch.arange(5), torch.tensor([7, -1, 3, -1, 0]), None):
        assert supcon_loss(z1, z2, labels, 0.2).item() == pytest.approx(expected, abs=1e-12)


def test_base_temperature_scales_by_t_over_base_t():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([1, 1, 0, -1])
    plain = supcon_loss(z1, z2, labels, 0.1)
    scaled = supcon_loss(z1, z2, labels, 0.1, base_temperature=0.07)
    assert scaled.item() == pytest.approx(plain.item() * 0.1 / 0.07, abs=1e-12)


def test_bad_shapes_and_labels_raise():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="equal shape"):
        supcon_loss(z, torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"integer labels of shape \[4\]"):
        supcon_loss(z, z, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer labels"):
        supcon_loss(z, z, torch.zeros(4))


# --- 2 ranks ------------------------------------------------------------------------------------


def supcon_gradients(data, rows):
    z1 = data["z1"][rows].clone().requires_grad_()
    z2 = data["z2"][rows].clone().requires_grad_()
    loss = supcon_loss(z1, z2, data["labels"][rows], temperature=0.2)
    loss.backward()
    return {"grads": (z1.grad, z2.grad), "loss": loss.detach()}


def test_two_ranks_give_the_one_process_gradients_and_loss():
    g = torch.Generator().manual_seed(3)
    data = {
        "z1": torch.randn(8, 5, generator=g, dtype=torch.float64),
        "z2": torch.randn(8, 5, generator=g, dtype=torch.float64),
        # classes 0 and 1 have members on both ranks (rows 0-3 and 4-7); -1 on both
        "labels": torch.tensor([0, 1, -1, 2, 1, 0, -1, 0]),
    }
    results = run_on_ranks(supcon_gradients, data)
    assert_ddp_gradients(supcon_gradients, data, results, keys=["grads"])
    full = supcon_gradients(data, slice(None))["loss"]
    mean_of_ranks = sum(r["loss"] for r in results) / len(results)
    assert mean_of_ranks.item() == pytest.approx(full.item(), abs=1e-12)


# --- the method ---------------------------------------------------------------------------------


def build(**extra):
    return selfsup.build(
        "supcon", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=IMAGE_SIZE,
        **{**SMALL, **extra},
    )  # fmt: skip


def hand_views(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) for _ in range(2)]


def test_defaults_fields_and_arguments():
    method = build()
    assert method.temperature == 0.1 and method.base_temperature is None
    assert type(method).batch_fields == ("labels",)
    assert selfsup.list_methods()["supcon"]["temperature"] == 0.1
    for bad in (dict(temperature=0.0), dict(base_temperature=-1.0)):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=f"supcon: {name} must be > 0"):
            build(**bad)
    with pytest.raises(ValueError, match="supcon needs 2 views"):
        method.training_loss(hand_views(0)[:1])


def test_without_labels_it_is_nt_xent_on_its_projections():
    torch.manual_seed(0)
    method = build()
    views = hand_views(0)
    out = method.training_loss(views)
    z1, z2 = method.projector(method.backbone(torch.cat(views))).chunk(2)
    assert out.loss.item() == pytest.approx(nt_xent_loss(z1, z2, 0.1).item(), abs=1e-6)


def test_trains_with_labels_passed():
    torch.manual_seed(0)
    method = build()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    labels = torch.tensor([0, 1, 0, 1, -1, 2, -1, 2])
    before = [p.detach().clone() for p in method.parameters()]
    for step in range(3):
        out = method.training_loss(hand_views(step), labels=labels)
        assert torch.isfinite(out.loss)
        assert float(out.logs["labelled_fraction"]) == pytest.approx(0.75)
        assert 0 < float(out.logs["collapse_std"]) < 2
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, method.parameters(), strict=True))
    views = hand_views(9)
    with torch.no_grad():
        labelled = method.training_loss(views, labels=labels).loss
        unlabelled = method.training_loss(views, labels=torch.full((BATCH,), -1)).loss
        assert not torch.isclose(labelled, unlabelled)
        assert torch.isclose(unlabelled, method.training_loss(views).loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.training_loss(views, labels=labels).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
