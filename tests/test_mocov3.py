"""MoCo v3: ctr(q, k) = 2t CE(q k^T / t, diagonal) by hand, on two ranks, and the method's heads.

lightly 1.6 has no MoCo v3 loss: its ``NTXentLoss(memory_bank_size=0)`` is SimCLR's (both views
are anchors, the other view's and the same view's other samples are the 2N - 2 negatives, no
2t factor), and with a memory bank the negatives are the bank, not the batch's keys. What
lightly has is MoCo v3's projector, ``MoCoProjectionHead(num_layers=3, batch_norm=True)``;
it differs from ours (and the official code's) only in keeping the last BatchNorm's affine
parameters, which are the identity at initialisation, so the two are compared at init.
"""

import math

import pytest
import torch
from torch import nn

import selfsup
from selfsup.losses import mocov3_contrastive_loss
from selfsup.methods import MoCoV3
from tests.ddp_harness import WORLD, assert_ddp_gradients, rank_rows, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 16


def build(**kwargs) -> MoCoV3:
    kwargs = {"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 16, **kwargs}
    return selfsup.build(
        "mocov3", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=SIZE, **kwargs
    )


def test_loss_value_by_hand():
    q = torch.tensor([[3.0, 0.0], [0.6, 0.8]])  # normalised: (1, 0), (0.6, 0.8)
    k = torch.tensor([[0.8, 0.6], [0.0, 2.0]])  # normalised: (0.8, 0.6), (0, 1)
    t = 0.5
    # row 0: q0.k0 = 0.8 (positive), q0.k1 = 0; row 1: q1.k0 = 0.96, q1.k1 = 0.8 (positive)
    row0 = -math.log(math.exp(0.8 / t) / (math.exp(0.8 / t) + math.exp(0.0)))
    row1 = -math.log(math.exp(0.8 / t) / (math.exp(0.96 / t) + math.exp(0.8 / t)))
    expected = 2 * t * (row0 + row1) / 2
    assert mocov3_contrastive_loss(q, k, t).item() == pytest.approx(expected, abs=1e-6)
    assert mocov3_contrastive_loss(q, k).item() == pytest.approx(
        2 * (math.log(1 + math.exp(-0.8)) + math.log(1 + math.exp(0.16))) / 2, abs=1e-6
    )


def test_keys_get_no_gradient_and_bad_inputs_are_refused():
    q = torch.randn(4, 3, requires_grad=True)
    k = torch.randn(4, 3, requires_grad=True)
    mocov3_contrastive_loss(q, k, 0.2).backward()
    assert q.grad is not None and q.grad.abs().max() > 0 and k.grad is None
    with pytest.raises(ValueError, match="equal shape"):
        mocov3_contrastive_loss(q, k[:3])
    with pytest.raises(ValueError, match="temperature"):
        mocov3_contrastive_loss(q, k, 0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mocov3_contrastive_loss(q.bfloat16(), k.bfloat16()).dtype == torch.float32


def ddp_loss_grads(data, rows):
    q = data["q"][rows].clone().requires_grad_()
    k = data["k"][rows].clone().requires_grad_()
    loss = mocov3_contrastive_loss(q, k, 0.2)
    loss.backward()
    return {"q": q.grad, "k": k.grad, "loss": loss.detach()}


def test_on_two_ranks_the_gradients_equal_one_process():
    g = torch.Generator().manual_seed(0)
    data = {
        "q": torch.randn(8, 5, generator=g).double(),
        "k": torch.randn(8, 5, generator=g).double(),
    }
    results = run_on_ranks(ddp_loss_grads, data)
    assert_ddp_gradients(ddp_loss_grads, data, results, keys=["q", "k"])
    reference = ddp_loss_grads(data, slice(None))["loss"]
    assert sum(r["loss"] for r in results) / WORLD == pytest.approx(reference.item(), abs=1e-10)
    # the keys of the other rank are negatives: rank 0's loss on its rows alone differs
    alone = ddp_loss_grads({k: v[rank_rows(0, 8)] for k, v in data.items()}, slice(None))
    assert abs(alone["loss"].item() - results[0]["loss"].item()) > 1e-3


def test_method_loss_is_the_symmetric_ctr_of_its_heads():
    torch.manual_seed(0)
    method = build(temperature=0.2)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, SIZE, SIZE, generator=g) for _ in range(2)]
    with torch.no_grad():
        q1, q2 = (method.predictor(method.projector(method.backbone(v))) for v in views)
        k1, k2 = (method.key_projector(method.key_backbone(v)) for v in views)
        expected = mocov3_contrastive_loss(q1, k2, 0.2) + mocov3_contrastive_loss(q2, k1, 0.2)
    out = method.training_loss(views)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert out.logs["momentum"] == pytest.approx(0.99)
    out.loss.backward()
    assert all(p.grad is None for p in method.key_projector.parameters())
    assert method.predictor[0].weight.grad.abs().max() > 0


def test_paper_defaults_and_heads():
    defaults = selfsup.list_methods()["mocov3"]
    assert defaults["temperature"] == 1.0 and defaults["num_proj_layers"] == 3
    assert (defaults["proj_hidden_dim"], defaults["proj_dim"]) == (4096, 256)
    assert defaults["pred_hidden_dim"] == 4096 and defaults["pred_last_norm"] is False
    assert (defaults["base_momentum"], defaults["final_momentum"]) == (0.99, 1.0)
    method = build()
    assert type(method).view_recipe == "byol" and not hasattr(method, "queue")
    assert method.momentum_at(0.5) == pytest.approx(0.995) and method.momentum_at(1.0) == 1.0
    linears = [m for m in method.projector if isinstance(m, nn.Linear)]
    norms = [m for m in method.projector if isinstance(m, nn.BatchNorm1d)]
    assert len(linears) == 3 and all(m.bias is None for m in linears)
    assert len(norms) == 3 and [m.affine for m in norms] == [True, True, False]
    assert isinstance(method.projector[-1], nn.BatchNorm1d)
    assert isinstance(method.predictor[-1], nn.Linear) and method.predictor[-1].bias is None
    vit = build(pred_last_norm=True, num_proj_layers=2)
    assert isinstance(vit.predictor[-1], nn.BatchNorm1d) and not vit.predictor[-1].affine
    assert sum(isinstance(m, nn.Linear) for m in vit.projector) == 2
    for kwargs, name in (
        ({"temperature": 0.0}, "temperature"),
        ({"num_proj_layers": 0}, "num_proj_layers"),
    ):
        with pytest.raises(ValueError, match=f"mocov3: {name}"):
            build(**kwargs)


def test_projector_matches_lightly_at_initialisation():
    heads = pytest.importorskip("lightly.models.modules.heads")
    torch.manual_seed(0)
    ours = build().projector.double()
    theirs = heads.MoCoProjectionHead(32, 16, 8, num_layers=3, batch_norm=True).double()
    # the same layers at the same positions; their last BN keeps its gamma = 1 and beta = 0
    missing, unexpected = theirs.layers.load_state_dict(ours.state_dict(), strict=False)
    assert (sorted(missing), unexpected) == (["7.bias", "7.weight"], [])
    x = torch.randn(10, 32, dtype=torch.float64, requires_grad=True)
    ours_out = ours(x)
    (grad_ours,) = torch.autograd.grad(ours_out.square().sum(), x)
    theirs_out = theirs(x)
    (grad_theirs,) = torch.autograd.grad(theirs_out.square().sum(), x)
    assert torch.allclose(ours_out, theirs_out, atol=1e-12)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-10)
