"""VICReg: the loss by hand and by loops, on 2 gloo ranks, against lightly, and the method."""

import math

import pytest
import torch
from torch import nn

import selfsup
from selfsup.losses import vicreg_loss, vicreg_terms
from tests.ddp_harness import assert_ddp_gradients, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def vicreg_by_loops(z1, z2, lam, mu, nu, gamma=1.0, eps=1e-4):
    """The authors' definitions written with Python floats, one entry at a time."""
    n, d = z1.shape
    a, b = z1.tolist(), z2.tolist()
    invariance = sum((a[i][j] - b[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def mean(z, j):
        return sum(z[i][j] for i in range(n)) / n

    def cov(z, j, k):
        mj, mk = mean(z, j), mean(z, k)
        return sum((z[i][j] - mj) * (z[i][k] - mk) for i in range(n)) / (n - 1)

    def v(z):
        return sum(max(0.0, gamma - math.sqrt(cov(z, j, j) + eps)) for j in range(d)) / d

    def c(z):
        return sum(cov(z, j, k) ** 2 for j in range(d) for k in range(d) if j != k) / d

    return lam * invariance + mu * (v(a) + v(b)) / 2 + nu * (c(a) + c(b))


def test_hand_case_one_spread_and_one_dead_dimension():
    # column 0 has unbiased variance 1 (no hinge), column 1 is constant: its hinge is
    # 1 - sqrt(1e-4) = 0.99, so v = 0.99 / 2 per view; no covariance, identical views
    z = torch.tensor([[0.5**0.5, 3.0], [-(0.5**0.5), 3.0]], dtype=torch.float64)
    terms = vicreg_terms(z, z.clone())
    assert terms.invariance.item() == 0.0 and terms.covariance.item() == 0.0
    assert terms.variance.item() == pytest.approx(0.495, abs=1e-12)
    assert vicreg_loss(z, z.clone()).item() == pytest.approx(25 * 0.495, abs=1e-10)


def test_hand_case_invariance_and_covariance():
    # two equal columns s * (1, -1, 1, -1), s = sqrt(3) / 2: unbiased variance 4 s^2 / 3 = 1
    # (no hinge) and covariance 1 in both off-diagonal entries: c = 2 * 1^2 / D = 1 per view
    s = 3**0.5 / 2
    col = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64) * s
    z1 = torch.stack([col, col], dim=1)
    z2 = z1 + 0.5  # a shift: the same statistics, squared distance 0.25 per entry
    terms = vicreg_terms(z1, z2)
    assert terms.invariance.item() == pytest.approx(0.25)
    assert terms.variance.item() == pytest.approx(0.0)
    assert terms.covariance.item() == pytest.approx(2.0)
    loss = vicreg_loss(z1, z2, lambda_param=2.0, mu_param=7.0, nu_param=3.0)
    assert loss.item() == pytest.approx(2.0 * 0.25 + 3.0 * 2.0)


def test_matches_loops_on_random_embeddings():
    z1, z2 = randn(6, 4, seed=1) * 0.7, randn(6, 4, seed=2) * 1.3
    for weights in ((25.0, 25.0, 1.0), (1.0, 0.5, 3.0)):
        expected = vicreg_by_loops(z1, z2, *weights)
        assert vicreg_loss(z1, z2, *weights).item() == pytest.approx(expected, abs=1e-9)
    expected = vicreg_by_loops(z1, z2, 25.0, 25.0, 1.0, gamma=2.0)
    assert vicreg_loss(z1, z2, gamma=2.0).item() == pytest.approx(expected, abs=1e-9)


def test_float32_under_bf16_autocast():
    a, b = randn(8, 16, seed=3).float(), randn(8, 16, seed=4).float()
    reference = vicreg_loss(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = vicreg_loss(a.bfloat16(), b.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="equal shape"):
        vicreg_loss(randn(4, 3), randn(4, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        vicreg_loss(randn(1, 3), randn(1, 3))


# --- 2 ranks --------------------------------------------------------------------------------------

BATCH, DIM = 8, 5


def ddp_data() -> dict[str, torch.Tensor]:
    # scale 0.6: every dimension's std is below gamma = 1, so the hinge passes gradient
    return {"a": randn(BATCH, DIM, seed=5) * 0.6, "b": randn(BATCH, DIM, seed=6) * 0.6}


def term_gradients(data: dict[str, torch.Tensor], rows: slice) -> dict[str, object]:
    """Each term's (and the loss') gradient w.r.t. this rank's rows of both embeddings."""
    out: dict[str, object] = {}
    for name in ("invariance", "variance", "covariance", "loss"):
        a = data["a"][rows].clone().requires_grad_()
        b = data["b"][rows].clone().requires_grad_()
        terms = vicreg_terms(a, b)
        value = terms.weighted(25.0, 25.0, 1.0) if name == "loss" else getattr(terms, name)
        value.backward()
        out[name] = (a.grad, b.grad)
        out[f"{name}_value"] = value.detach()
    return out


def test_two_ranks_give_the_one_process_gradients_and_statistics():
    data = ddp_data()
    results = run_on_ranks(term_gradients, data)
    names = ["invariance", "variance", "covariance", "loss"]
    assert_ddp_gradients(term_gradients, data, results, keys=names)
    reference = term_gradients(data, slice(None))
    for name in ("variance", "covariance"):  # statistics of the gathered batch: on every rank
        for result in results:
            assert result[f"{name}_value"].item() == pytest.approx(
                reference[f"{name}_value"].item(), abs=1e-12
            )
    # the invariance is per rank; its mean over ranks is the global mean
    mean_over_ranks = sum(r["invariance_value"] for r in results) / len(results)
    assert mean_over_ranks.item() == pytest.approx(reference["invariance_value"].item())


# --- lightly --------------------------------------------------------------------------------------


def test_matches_lightly_values_and_gradients():
    """lightly 1.6 ``VICRegLoss`` follows the authors' code as we do (variance halved, covariance
    summed over the two views, unbiased variance, eps 1e-4). Its ``gather_distributed`` defaults
    to False (per-rank statistics under DDP); ours always gathers. Its default weights are
    ours. One process here, so the gather setting plays no part."""
    lightly_loss = pytest.importorskip("lightly.loss")
    theirs_fn = lightly_loss.VICRegLoss()
    for seed, scale in ((7, 0.5), (8, 2.0)):
        z1, z2 = randn(10, 6, seed=seed) * scale, randn(10, 6, seed=seed + 10)
        ours_in = [z1.clone().requires_grad_(), z2.clone().requires_grad_()]
        theirs_in = [z1.clone().requires_grad_(), z2.clone().requires_grad_()]
        ours, theirs = vicreg_loss(*ours_in), theirs_fn(*theirs_in)
        ours.backward()
        theirs.backward()
        assert ours.item() == pytest.approx(theirs.item(), abs=1e-10)
        for mine, other in zip(ours_in, theirs_in, strict=True):
            assert torch.allclose(mine.grad, other.grad, atol=1e-10)


# --- the method -----------------------------------------------------------------------------------


def build(**kwargs):
    return selfsup.build(
        "vicreg", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=16, **kwargs
    )


def test_method_loss_is_the_weighted_terms_of_its_expander_outputs():
    torch.manual_seed(0)
    method = build(proj_hidden_dim=16, proj_dim=8, lambda_param=3.0, mu_param=5.0, nu_param=2.0)
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    out = method.training_loss(views)
    z1, z2 = method.projector(method.backbone(torch.cat(views))).chunk(2)
    expected = vicreg_loss(z1, z2, 3.0, 5.0, 2.0)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert {"collapse_std", "invariance", "variance", "covariance"} <= set(out.logs)
    terms = vicreg_terms(z1, z2)
    assert float(out.logs["variance"]) == pytest.approx(terms.variance.item(), rel=1e-5)


def test_expander_is_three_bias_free_linears_with_bn_relu_and_scaled_widths():
    method = build()
    linears = [m for m in method.projector if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and all(m.bias is None for m in linears)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in method.projector) == 2
    assert sum(isinstance(m, nn.ReLU) for m in method.projector) == 2
    cap = 16 * method.feature_dim  # heads.HEAD_WIDTH_FACTOR: the paper's 8192 is scaled down
    assert [m.out_features for m in linears] == [cap, cap, cap]
    recorded = method.hyperparameters()
    assert recorded["proj_hidden_dim"] == recorded["proj_dim"] == cap
    paper = build(head_widths="paper", num_proj_layers=2, proj_hidden_dim=32)
    assert [m.out_features for m in paper.projector if isinstance(m, nn.Linear)] == [32, 8192]


def test_paper_defaults():
    defaults = selfsup.list_methods()["vicreg"]
    assert defaults["lambda_param"] == 25.0 and defaults["mu_param"] == 25.0
    assert defaults["nu_param"] == 1.0 and defaults["gamma"] == 1.0
    assert defaults["proj_hidden_dim"] == defaults["proj_dim"] == 8192
    assert defaults["num_proj_layers"] == 3
    assert type(build()).view_recipe == "byol"


def test_a_few_steps_move_the_backbone_and_expander():
    torch.manual_seed(0)
    method = build(proj_hidden_dim=16, proj_dim=8)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    before = [p.detach().clone() for p in method.parameters()]
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    for _ in range(3):
        loss = method(images)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = [not torch.equal(b, a) for b, a in zip(before, method.parameters(), strict=True)]
    assert all(moved)


@pytest.mark.parametrize(
    "argument", [dict(gamma=0.0), dict(lambda_param=-1.0), dict(mu_param=-0.1), dict(nu_param=-2)]
)
def test_bad_arguments_name_themselves(argument):
    (name,) = argument
    with pytest.raises(ValueError, match=f"vicreg: {name} must be"):
        build(**argument)
    build(**{name: 0.0} if name != "gamma" else {"gamma": 0.5})  # a weight of 0 is an ablation
