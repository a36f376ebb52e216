"""DCL / DCLW (Yeh et al. 2022): the loss by hand, its relation to NT-Xent, the vMF weights,
2 gloo ranks against one process, lightly 1.6's DCLLoss / DCLWLoss, and the two methods.

Conventions against lightly 1.6 (``lightly.loss.DCLLoss`` / ``DCLWLoss``): the same loss, the
mean over both views' anchors (lightly: 0.5 * (loss0 + loss1), each a batch mean) and detached
weights; equal values and gradients on one process. Under DDP lightly's DCLW weights use each
rank's own batch (softmax over the local pairs); here they use the global batch, so that DDP
equals one process (``test_two_ranks_equal_one_process``).
"""

import math

import pytest
import torch
from torch.nn import functional as F

import selfsup
from selfsup.losses import dcl_loss, nt_xent_loss, vmf_weights
from selfsup.methods import DCL, DCLW
from tests.ddp_harness import WORLD, assert_ddp_gradients, rank_rows, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")


def pair(batch: int = 6, dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return z1, z1 + 0.8 * torch.randn(batch, dim, generator=g, dtype=torch.float64)


def by_hand(z1, z2, temperature, sigma=None) -> float:
    """Eq. 6 with Python loops over the 2N anchors; the weights from their definition."""
    n = len(z1)
    a, b = F.normalize(z1, dim=-1).tolist(), F.normalize(z2, dim=-1).tolist()

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v, strict=True))

    weights = [1.0] * n
    if sigma is not None:
        e = [math.exp(dot(a[i], b[i]) / sigma) for i in range(n)]
        weights = [2 - e[i] / (sum(e) / n) for i in range(n)]
    total = 0.0
    for views in ((a, b), (b, a)):
        anchor_view, other_view = views
        for i in range(n):
            anchor = anchor_view[i]
            negatives = [dot(anchor, anchor_view[j]) for j in range(n) if j != i]
            negatives += [dot(anchor, other_view[j]) for j in range(n) if j != i]
            log_sum = math.log(sum(math.exp(s / temperature) for s in negatives))
            total += -weights[i] * dot(anchor, other_view[i]) / temperature + log_sum
    return total / (2 * n)


def test_orthogonal_pairs_give_the_value_by_hand():
    """Two pairs on orthogonal axes, each view equal to its pair: the positive similarity is 1,
    the two negatives 0, so every anchor scores -1/t + log(2 e^0); the weights are all 1."""
    z = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    expected = -1 / 0.1 + math.log(2)
    assert dcl_loss(z, z, 0.1).item() == pytest.approx(expected, abs=1e-5)
    assert dcl_loss(z, z, 0.1, sigma=0.5).item() == pytest.approx(expected, abs=1e-5)
    assert vmf_weights(z, z).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_random_pairs_match_the_loops(sigma):
    z1, z2 = pair()
    assert dcl_loss(z1, z2, 0.2, sigma=sigma).item() == pytest.approx(
        by_hand(z1, z2, 0.2, sigma), abs=1e-10
    )


def test_nt_xent_is_dcl_plus_the_coupling_term():
    """NT-Xent's denominator adds the positive: per anchor, NT-Xent - DCL = log(1 + e^p / S),
    p the positive logit and S the sum of the negatives' exp (computed here from the logits)."""
    z1, z2 = pair(seed=1)
    t = 0.3
    a, b = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    gap = 0.0
    for anchors, others in ((a, b), (b, a)):
        for i in range(len(a)):
            negatives = torch.cat([anchors @ anchors[i], others @ anchors[i]]) / t
            keep = torch.ones(2 * len(a), dtype=torch.bool)
            keep[[i, len(a) + i]] = False
            positive = anchors[i] @ others[i] / t
            gap += torch.log1p(torch.exp(positive - negatives[keep].logsumexp(0))).item()
    difference = (nt_xent_loss(z1, z2, t) - dcl_loss(z1, z2, t)).item()
    assert difference == pytest.approx(gap / (2 * len(a)), abs=1e-10) and difference > 0


def test_vmf_weights_average_one_and_favour_hard_pairs():
    z1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # similarities 1, 0, -1
    e = [math.exp(s / 0.5) for s in (1.0, 0.0, -1.0)]
    expected = [2 - 3 * v / sum(e) for v in e]
    weights = vmf_weights(z1, z2, 0.5)
    assert weights.tolist() == pytest.approx(expected, abs=1e-6)
    assert weights.mean().item() == pytest.approx(1.0) and weights[0] < weights[1] < weights[2]
    z1.requires_grad_()
    assert not vmf_weights(z1, z2).requires_grad


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"dcl_loss needs z1 and z2 of equal shape"):
        dcl_loss(torch.randn(4, 3), torch.randn(4, 2))


def test_bfloat16_autocast_runs_in_float32():
    z1, z2 = (z.float() for z in pair())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dcl_loss(z1.bfloat16(), z2.bfloat16(), 0.1, sigma=0.5)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# --- 2 ranks ------------------------------------------------------------------------------------


def grads_and_state(data, rows):
    """DCL and DCLW on the rows this rank holds: gradients, loss, and the DCLW weights."""
    out = {}
    for name, sigma in (("dcl", None), ("dclw", 0.5)):
        z1 = data["z1"][rows].clone().requires_grad_()
        z2 = data["z2"][rows].clone().requires_grad_()
        loss = dcl_loss(z1, z2, 0.2, sigma=sigma)
        loss.backward()
        out[f"{name}_grads"] = (z1.grad, z2.grad)
        out[f"{name}_loss"] = loss.detach()
    out["weights"] = vmf_weights(data["z1"][rows], data["z2"][rows], 0.5)
    return out


def test_two_ranks_equal_one_process():
    z1, z2 = pair(batch=8)
    data = {"z1": z1, "z2": z2}
    results = run_on_ranks(grads_and_state, data)
    assert_ddp_gradients(grads_and_state, data, results, keys=["dcl_grads", "dclw_grads"])
    reference = grads_and_state(data, slice(None))
    for name in ("dcl_loss", "dclw_loss"):
        mean = sum(r[name] for r in results) / WORLD
        assert torch.allclose(mean, reference[name], atol=1e-10), name
    for rank, result in enumerate(results):  # global-batch weights, sliced
        assert torch.allclose(result["weights"], reference["weights"][rank_rows(rank, 8)])


# --- lightly ------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
def test_matches_lightly_values_and_gradients(weighted):
    lightly_loss = pytest.importorskip("lightly.loss")
    z1, z2 = pair(seed=3)
    theirs = lightly_loss.DCLWLoss(temperature=0.2, sigma=0.5) if weighted else (
        lightly_loss.DCLLoss(temperature=0.2)
    )  # fmt: skip
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ours = dcl_loss(a1, a2, 0.2, sigma=0.5 if weighted else None)
    with pytest.warns(UserWarning) if weighted else _nothing():  # lightly's torch.tensor(tensor)
        reference = theirs(b1, b2)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-10)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(a1.grad, b1.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(a2.grad, b2.grad, atol=1e-10, rtol=0)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- the methods --------------------------------------------------------------------------------


def build(name: str, **kwargs):
    return selfsup.build(
        name, backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=16,
        proj_hidden_dim=16, proj_dim=8, **kwargs,
    )  # fmt: skip


def views(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]


def test_registered_with_the_papers_defaults_and_simclrs_projector():
    defaults = selfsup.list_methods()
    assert defaults["dcl"]["temperature"] == 0.1 and "sigma" not in defaults["dcl"]
    assert defaults["dclw"]["temperature"] == 0.1 and defaults["dclw"]["sigma"] == 0.5
    assert defaults["dcl"]["num_proj_layers"] == 2 and defaults["dcl"]["proj_dim"] == 128
    dclw = build("dclw")
    assert isinstance(dclw, DCLW) and isinstance(dclw, DCL) and dclw.sigma == 0.5
    assert build("dcl").sigma is None
    assert dclw.hyperparameters()["sigma"] == 0.5


@pytest.mark.parametrize("name, sigma", [("dcl", None), ("dclw", 0.5)])
def test_method_loss_is_the_decoupled_loss_of_its_projections(name, sigma):
    torch.manual_seed(0)
    method = build(name)
    v = views()
    out = method.training_loss(v)
    with torch.no_grad():
        z1, z2 = method.projector(method.backbone(torch.cat(v))).chunk(2)
    assert out.loss.item() == pytest.approx(dcl_loss(z1, z2, 0.1, sigma=sigma).item(), abs=1e-5)
    assert 0 < float(out.logs["collapse_std"]) < 2


@pytest.mark.parametrize("name", ["dcl", "dclw"])
def test_a_few_steps_move_the_parameters(name):
    torch.manual_seed(0)
    method = build(name)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    before = [p.detach().clone() for p in method.parameters()]
    for step in range(3):
        loss = method.training_loss(views(step)).loss
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, method.parameters(), strict=True))


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("dcl", {"temperature": 0.0}, "dcl: temperature must be > 0"),
        ("dclw", {"temperature": -1.0}, "dclw: temperature must be > 0"),
        ("dclw", {"sigma": 0.0}, "dclw: sigma must be > 0"),
    ],
)
def test_bad_arguments_are_named(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(name, **kwargs)
    with pytest.raises(ValueError, match=f"{name} needs 2 views"):
        build(name).training_loss(views()[:1])
