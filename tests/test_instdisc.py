"""Instance discrimination (Wu et al. 2018): the NCE and softmax losses and the bank update on a
hand case, DDP on 2 gloo ranks (gradients, bank, normaliser), a smoke run, the one-view recipe,
image sizes, wafer maps, a user's module and the errors."""

import copy
import math

import pytest
import torch
from ddp_harness import WORLD, assert_ddp_gradients, run_on_ranks
from torch import nn
from torch.nn import functional as F

import selfsup
from selfsup.methods import InstDisc

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGE_SIZE, BATCH, N = 16, 8, 32
SMALL = dict(proj_dim=8, num_samples=N, num_negatives=16)


def flat_method(cls, dim: int, **kwargs) -> nn.Module:
    """``cls`` on a backbone that flattens [B, dim, 1, 1] "views": its features are the input."""
    return cls(nn.Flatten(), dim, in_channels=dim, image_size=4, **kwargs)


def softmax_by_hand(positive: list, negatives: list) -> float:
    """-log exp(s+) / (exp(s+) + sum_k exp(s_k)), averaged over the batch."""
    terms = [
        -math.log(math.exp(p) / (math.exp(p) + sum(math.exp(s) for s in n)))
        for p, n in zip(positive, negatives, strict=True)
    ]
    return sum(terms) / len(terms)


def nce_by_hand(positive: list, negatives: list, n: int) -> tuple[float, float]:
    """(loss, Z): Z = n mean exp(every logit of the batch), P = exp(s) / Z,
    h = P / (P + K / n), L = -log h(s+) - sum_k log(1 - h(s_k)), averaged over the batch."""
    everything = positive + [s for row in negatives for s in row]
    z = n * sum(math.exp(s) for s in everything) / len(everything)
    noise = len(negatives[0]) / n

    def h(s: float) -> float:
        return (math.exp(s) / z) / (math.exp(s) / z + noise)

    terms = [
        -math.log(h(p)) - sum(math.log(1 - h(s)) for s in row)
        for p, row in zip(positive, negatives, strict=True)
    ]
    return sum(terms) / len(terms), z


def test_losses_and_bank_update_by_hand():
    # f = normalise([3, 4]) = [0.6, 0.8] and [1, 0]; 4 unit bank rows; t = 0.5; images 2 and 0
    rows = torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.6, -0.8], [-1.0, 0.0]])
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])[:, :, None, None]
    indices = torch.tensor([2, 0])
    f = [[0.6, 0.8], [1.0, 0.0]]
    positive = [(0.36 - 0.64) / 0.5, 0.8 / 0.5]  # f_0.v_2 / t, f_1.v_0 / t
    for kind in ("softmax", "nce"):
        torch.manual_seed(0)
        method = flat_method(
            InstDisc, 2, proj_dim=2, num_samples=4, num_negatives=3, temperature=0.5,
            nce_kind=kind,
        )  # fmt: skip
        with torch.no_grad():
            method.projector.weight.copy_(torch.eye(2))
            method.projector.bias.zero_()
            method.bank.rows.copy_(rows)
            method.bank.written.fill_(True)  # rows as written by earlier steps
        drawn = copy.deepcopy(method.bank).sample(3).tolist()  # the step's negatives
        negatives = [
            [(fi[0] * rows[j, 0].item() + fi[1] * rows[j, 1].item()) / 0.5 for j in drawn]
            for fi in f
        ]
        out = method.training_loss([x], indices=indices)
        if kind == "softmax":
            assert out.loss.item() == pytest.approx(softmax_by_hand(positive, negatives), rel=1e-5)
        else:
            loss, z = nce_by_hand(positive, negatives, 4)
            assert out.loss.item() == pytest.approx(loss, rel=1e-5)
            assert float(out.logs["log_z"]) == pytest.approx(math.log(z), rel=1e-5)
        top = sum(p > max(n) for p, n in zip(positive, negatives, strict=True)) / 2
        assert float(out.logs["positive_is_top"]) == top
        # v_i <- normalise(0.5 v_i + 0.5 f_i) for the batch's rows only
        blended = F.normalize(0.5 * rows[indices] + 0.5 * torch.tensor(f), dim=1)
        assert torch.allclose(method.bank.rows[indices], blended, atol=1e-6)
        assert not torch.allclose(blended, rows[indices])
        assert torch.equal(method.bank.rows[[1, 3]], rows[[1, 3]])


def test_bank_momentum_blends_the_normalised_feature():
    torch.manual_seed(0)
    method = flat_method(InstDisc, 3, proj_dim=3, num_samples=5, num_negatives=4, bank_momentum=0.2)
    method.bank.written.fill_(True)  # rows as written by earlier steps
    old = method.bank.rows.clone()
    x = torch.randn(2, 3, 1, 1)
    out = method.training_loss([x], indices=torch.tensor([4, 1]))
    f = F.normalize(method.projector(x.flatten(1)), dim=1).detach()
    assert torch.allclose(method.bank.rows[[4, 1]], F.normalize(0.2 * old[[4, 1]] + 0.8 * f))
    assert torch.isfinite(out.loss)


def test_proximal_term_pulls_the_feature_towards_its_bank_row():
    """Wu et al. sec. 3.4: loss + lambda * mean ||f_i - v_i||^2 with v_i the row before the step's
    update; its gradient on the unit feature f_i is 2 lambda (f_i - v_i) / B, seen through the
    normalisation as (I - f_i f_i^T) 2 lambda (f_i - v_i) / B."""
    torch.manual_seed(0)
    x, indices = torch.randn(2, 3, 1, 1), torch.tensor([4, 1])
    losses, grads = {}, {}
    for weight in (0.0, 3.0):
        torch.manual_seed(1)
        method = flat_method(InstDisc, 3, proj_dim=3, num_samples=5, num_negatives=4,
                             proximal_weight=weight)  # fmt: skip
        method.bank.written.fill_(True)  # rows as written by earlier steps
        rows = method.bank.rows.clone()
        features = F.normalize(method.projector(x.flatten(1)), dim=1)
        features.retain_grad()
        method.projector = IdentityOf(features)
        out = method.training_loss([x], indices=indices)
        out.loss.backward()
        losses[weight], grads[weight] = out.loss.item(), features.grad.clone()
        if weight:
            f = features.detach()
            expected = (f - rows[indices]).pow(2).sum(dim=1).mean().item()
            assert float(out.logs["proximal"]) == pytest.approx(expected, rel=1e-5)
            assert losses[weight] - losses[0.0] == pytest.approx(weight * expected, rel=1e-5)
            pull = 2 * weight * (f - rows[indices]) / len(indices)
            pull = pull - (pull * f).sum(dim=1, keepdim=True) * f  # along the unit sphere
            assert torch.allclose(grads[weight] - grads[0.0], pull, atol=1e-5)
        else:
            assert "proximal" not in out.logs
    with pytest.raises(ValueError, match="instdisc: proximal_weight must be >= 0"):
        flat_method(InstDisc, 3, proj_dim=3, num_samples=5, proximal_weight=-1.0)


class IdentityOf(nn.Module):
    """A projector that returns a fixed tensor (so the test can read the gradient on it)."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return self.value


# --- 2 ranks: gradients, the bank after each step and the NCE normaliser --------------------------

DIM, PROJ, ROWS = 6, 4, 12


def instdisc_steps(data, rows):
    """Two training_loss calls of an InstDisc on a flattening backbone (fixed projector, bank of
    12 rows seeded alike on every rank), with NCE and with the softmax form: step 1 estimates
    log Z and writes the batch's rows, step 2 reads them."""
    out = {"views": [], "weights": [], "bank": [], "log_z": []}
    for kind in ("nce", "softmax"):
        torch.manual_seed(0)  # every rank seeds alike, as the trainer does
        method = flat_method(
            InstDisc, DIM, proj_dim=PROJ, num_samples=ROWS, num_negatives=5, temperature=0.5,
            nce_kind=kind,
        )  # fmt: skip
        with torch.no_grad():
            method.projector.weight.copy_(data["w_proj"])
        for step in range(2):
            x = data["views"][step][rows].clone().requires_grad_()
            method.training_loss([x], indices=data["indices"][step][rows]).loss.backward()
            out["views"].append(x.grad)
            out["bank"].append(method.bank.rows.clone())
        out["weights"].append(method.projector.weight.grad)
        out["log_z"].append(method.contrast.log_z.clone())
    return {k: tuple(v) for k, v in out.items()}


def test_two_ranks_give_the_one_process_gradients_bank_and_normaliser():
    g = torch.Generator().manual_seed(2)
    data = {
        "views": torch.randn(2, BATCH, DIM, 1, 1, generator=g),
        "w_proj": torch.randn(PROJ, DIM, generator=g),
        "indices": torch.stack([torch.randperm(ROWS, generator=g)[:BATCH] for _ in range(2)]),
    }
    results = run_on_ranks(instdisc_steps, data, batch=BATCH)
    assert_ddp_gradients(instdisc_steps, data, results, keys=["views"], batch=BATCH)
    reference = instdisc_steps(data, slice(None))
    for i, kind in enumerate(("nce", "softmax")):
        mean = sum(r["weights"][i] for r in results) / WORLD
        assert torch.allclose(mean, reference["weights"][i], atol=1e-5), kind
    for key in ("bank", "log_z"):
        for r in results:
            for got, expected in zip(r[key], reference[key], strict=True):
                assert torch.allclose(got, expected, atol=1e-6, equal_nan=True), key
    assert torch.isfinite(reference["log_z"][0]) and torch.isnan(reference["log_z"][1])


# --- training, views, sizes ----------------------------------------------------------------------


def test_smoke_training_moves_weights_and_the_batch_rows_of_the_bank():
    torch.manual_seed(0)
    method = selfsup.build(
        "instdisc", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=IMAGE_SIZE,
        **SMALL,
    )  # fmt: skip
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in method.parameters()]
    g = torch.Generator().manual_seed(0)
    log_z = None
    for step in range(3):
        images = torch.randint(0, 256, (BATCH, 3, 20, 20), dtype=torch.uint8, generator=g)
        indices = torch.arange(BATCH) + step * BATCH
        rows = method.bank.rows.clone()
        loss = method(images, indices=indices)
        assert loss.ndim == 0 and torch.isfinite(loss)
        changed = (method.bank.rows != rows).any(dim=1)
        assert changed[indices].all() and changed.sum() == BATCH
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.on_train_step_end((step + 1) / 3)
        log_z = method.contrast.log_z.clone() if log_z is None else log_z
        assert torch.equal(method.contrast.log_z, log_z)  # fixed after the first batch
    after = list(method.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert torch.allclose(method.bank.rows.norm(dim=1), torch.ones(N))


def test_defaults_one_view_of_moco_v1_augmentation_and_data_defaults():
    defaults = selfsup.list_methods()["instdisc"]
    assert (defaults["proj_dim"], defaults["num_negatives"], defaults["temperature"]) == (
        128, 4096, 0.07,
    )  # fmt: skip
    assert (defaults["bank_momentum"], defaults["nce_kind"]) == (0.5, "nce")
    method = selfsup.build("instdisc", backbone="convnet_tiny", num_samples=10, image_size=16)
    assert method.views.num_views == 1 and method.batch_fields == ("indices",)
    params = method.views.params
    assert params["crop_scale"] == (0.2, 1.0) and params["hue"] == 0.4
    assert (params["jitter_p"], params["grayscale_p"], params["blur_p"]) == (1.0, 0.2, 0.0)
    assert InstDisc.data_defaults(1234, 256) == {"num_samples": 1234}
    # negatives are drawn with replacement: more than the dataset holds is fine
    many = selfsup.build(
        "instdisc", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=16,
        num_samples=4, num_negatives=64, proj_dim=8,
    )  # fmt: skip
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    assert torch.isfinite(many(images, indices=torch.arange(4)))


def user_module(channels: int = 3, width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


def check_sizes_wafers_and_user_module(cls, **heads) -> None:
    """``cls`` trains on a user's module at 16 and 225 px and on 1-channel wafer codes."""
    name = cls.method_name
    for size in (16, 225):
        method = cls(user_module(), 8, image_size=size, num_samples=N, **heads)
        images = torch.randint(0, 256, (4, 3, size + 3, size + 3), dtype=torch.uint8)
        views = method.views(images)
        assert all(v.shape == (4, 3, size, size) for v in views), (name, size)
        loss = method(images, indices=torch.tensor([0, 5, 9, 31]))
        loss.backward()
        assert torch.isfinite(loss) and method.encoder(views[0]).shape[0] == 4
    wafer = selfsup.build(
        name, backbone="convnet_tiny", backbone_kwargs={"width": 4}, in_channels=1,
        image_size=32, view_style="wafer", num_samples=N, **heads,
    )  # fmt: skip
    codes = torch.randint(0, 3, (4, 1, 30, 30), dtype=torch.uint8)
    views = wafer.views(codes)
    assert all(set(v.unique().tolist()) <= {0.0, 0.5, 1.0} for v in views)
    assert torch.isfinite(wafer(codes, indices=torch.arange(4)))
    assert wafer.embed(codes).shape == (4, wafer.feature_dim)


def test_user_module_any_image_size_and_wafer_maps():
    check_sizes_wafers_and_user_module(InstDisc, proj_dim=8, num_negatives=16)


def test_errors_name_the_argument():
    build = dict(backbone="convnet_tiny", image_size=16)
    with pytest.raises(ValueError, match="instdisc needs num_samples"):
        selfsup.build("instdisc", **build)
    with pytest.raises(ValueError, match="instdisc: nce_kind must be one of"):
        selfsup.build("instdisc", num_samples=8, nce_kind="hinge", **build)
    with pytest.raises(ValueError, match=r"instdisc: bank_momentum must be in \[0, 1\)"):
        selfsup.build("instdisc", num_samples=8, bank_momentum=1.0, **build)
    with pytest.raises(ValueError, match="instdisc: temperature must be > 0"):
        selfsup.build("instdisc", num_samples=8, temperature=0.0, **build)
    method = selfsup.build("instdisc", num_samples=8, **build)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"instdisc .*indices=idx"):
        method(images)
    with pytest.raises(ValueError, match=r"must be in \[0, num_samples=8\)"):
        method(images, indices=torch.tensor([0, 8]))


def test_a_first_visit_makes_the_samples_own_feature_its_positive():
    torch.manual_seed(0)
    method = flat_method(InstDisc, 3, proj_dim=3, num_samples=5, num_negatives=4)
    x = torch.randn(2, 3, 1, 1)
    out = method.training_loss(
        [x],
        indices=torch.tensor([4, 1]),
    )
    f = F.normalize(method.projector(x.flatten(1)), dim=1).detach()
    # written on the first visit, then blended with itself: the row is the feature
    assert torch.allclose(method.bank.rows[[4, 1]], f, atol=1e-6)
    assert float(out.logs["bank_written"]) == pytest.approx(2 / 5)
