"""The memory bank and the NCE that instance discrimination, PIRL and CMC share."""

import math

import pytest
import torch
from torch.nn import functional as F

from selfsup.data import IndexedDataset
from selfsup.losses.nce import estimate_log_z, nce_loss, softmax_nce_loss
from selfsup.methods.memory_bank import (
    BankContrast,
    MemoryBank,
    require_indices,
    require_num_samples,
)
from tests.ddp_harness import run_on_ranks


def test_nce_loss_matches_the_paper_formula_by_hand():
    positive = torch.tensor([1.0, 0.5], dtype=torch.float64)
    negatives = torch.tensor([[0.2, -0.1, 0.3], [0.0, 0.4, -0.2]], dtype=torch.float64)
    n, log_z = 10, 0.7
    noise = 3 / n  # K * P_n
    p_pos = positive.exp() / math.exp(log_z)
    p_neg = negatives.exp() / math.exp(log_z)
    by_hand = -((p_pos / (p_pos + noise)).log() + (noise / (p_neg + noise)).log().sum(dim=1)).mean()
    assert torch.allclose(nce_loss(positive, negatives, log_z, n), by_hand)
    # a large logit does not overflow
    assert torch.isfinite(nce_loss(positive * 1e4, negatives, log_z, n))


def test_log_z_is_n_times_the_mean_exponential():
    positive = torch.tensor([1.0, 0.5])
    negatives = torch.tensor([[0.2, -0.1], [0.0, 0.4]])
    everything = torch.cat([positive[:, None], negatives], dim=1)
    expected = math.log(7 * everything.exp().mean().item())
    assert math.isclose(float(estimate_log_z(positive, negatives, 7)), expected, rel_tol=1e-6)


def test_softmax_nce_is_cross_entropy_with_the_positive_first():
    positive = torch.tensor([2.0])
    negatives = torch.tensor([[1.0, 0.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(1) + 1))
    assert math.isclose(float(softmax_nce_loss(positive, negatives)), expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"positive logits \[B\] and negative logits \[B, K\]"):
        softmax_nce_loss(torch.zeros(2), torch.zeros(3, 4))


def test_bank_update_blends_and_renormalises_rows():
    torch.manual_seed(0)
    bank = MemoryBank(5, 3)
    old = bank.rows.clone()
    f = torch.randn(2, 3)
    bank.update(torch.tensor([4, 1]), f, momentum=0.5)
    expected = F.normalize(0.5 * old[[4, 1]] + 0.5 * F.normalize(f, dim=1), dim=1)
    assert torch.allclose(bank.rows[[4, 1]], expected)
    assert torch.equal(bank.rows[[0, 2, 3]], old[[0, 2, 3]])
    bank.update(torch.tensor([0]), f[:1], momentum=0.0)
    assert torch.allclose(bank.rows[0], F.normalize(f[0], dim=0))


def test_first_visits_write_the_feature_and_later_ones_blend():
    torch.manual_seed(0)
    bank = MemoryBank(4, 3)
    random_rows = bank.rows.clone()
    f = torch.randn(2, 3)
    bank.fill_unwritten(torch.tensor([1, 3]), f)
    assert torch.allclose(bank.rows[[1, 3]], F.normalize(f, dim=1))
    assert torch.equal(bank.rows[[0, 2]], random_rows[[0, 2]])
    assert bank.written.tolist() == [False, True, False, True]
    assert float(bank.written_fraction()) == 0.5
    written = bank.rows.clone()
    bank.fill_unwritten(torch.tensor([1, 0]), torch.randn(2, 3))  # row 1: written already
    assert torch.equal(bank.rows[1], written[1]) and not torch.equal(bank.rows[0], written[0])
    bank.update(torch.tensor([2]), f[:1], momentum=0.5)
    assert bool(bank.written[2])


def test_sampling_is_reproducible_from_the_buffers():
    torch.manual_seed(1)
    bank = MemoryBank(100, 4)
    first = bank.sample(8)
    again = MemoryBank(100, 4)
    again.load_state_dict({**bank.state_dict(), "draws": torch.tensor(0)})
    assert torch.equal(again.sample(8), first)
    assert torch.equal(again.sample(8), bank.sample(8))  # the same position after "resume"
    assert not torch.equal(bank.sample(8), first)


def test_contrast_fixes_z_at_the_first_batch_and_learns_towards_the_bank_row():
    torch.manual_seed(0)
    bank = MemoryBank(16, 8)
    contrast = BankContrast(16, num_negatives=32, temperature=0.07)
    indices = torch.arange(4)
    features = torch.randn(4, 8, requires_grad=True)
    loss, logs = contrast(features, bank, indices)
    log_z = contrast.log_z.clone()
    assert torch.isfinite(log_z) and torch.isfinite(loss) and "positive_is_top" in logs
    loss.backward()
    step = features - 0.1 * features.grad
    cos = lambda x: F.cosine_similarity(x, bank.rows[indices]).mean()  # noqa: E731
    assert cos(step.detach()) > cos(features.detach())
    contrast(torch.randn(4, 8), bank, indices)
    assert torch.equal(contrast.log_z, log_z)
    softmax = BankContrast(16, num_negatives=32, temperature=0.07, kind="softmax")
    assert torch.isfinite(softmax(features, bank, indices)[0])
    with pytest.raises(ValueError, match="NCE kind must be one of"):
        BankContrast(16, 4, 0.07, kind="hinge")


def test_indices_and_bank_size_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"instdisc .*method\(images, indices=idx\)"):
        require_indices("instdisc", None, 10, 4)
    with pytest.raises(ValueError, match=r"must be in \[0, num_samples=10\), got 0..12"):
        require_indices("instdisc", torch.tensor([0, 12]), 10, 2)
    with pytest.raises(ValueError, match=r"integers of shape \[2\]"):
        require_indices("instdisc", torch.zeros(2), 10, 2)
    with pytest.raises(ValueError, match="instdisc needs num_samples"):
        require_num_samples("instdisc", None)


def test_indexed_dataset_appends_the_index():
    data = IndexedDataset([(torch.zeros(1), 3), (torch.ones(1), 5)])
    x, y, i = data[1]
    assert (float(x), y, i, len(data)) == (1.0, 5, 1, 2)
    assert IndexedDataset([7, 8])[0] == (7, 0)


def _bank_step(data, rows):
    torch.manual_seed(0)  # every rank seeds alike, as the trainer does
    bank = MemoryBank(12, 4)
    contrast = BankContrast(12, num_negatives=6, temperature=0.5)
    features = data["features"][rows].clone().requires_grad_()
    bank.fill_unwritten(data["indices"][rows][::2], features[::2])  # half the rows first
    loss, _ = contrast(features, bank, data["indices"][rows])
    loss.backward()
    bank.update(data["indices"][rows], features, momentum=0.5)
    return {
        "grad": features.grad,
        "rows": bank.rows,
        "log_z": contrast.log_z,
        "written": bank.written,
    }


def test_two_ranks_match_one_process_gradients_bank_and_normaliser():
    torch.manual_seed(3)
    data = {"features": torch.randn(8, 4, dtype=torch.float64), "indices": torch.randperm(12)[:8]}
    data["features"] = data["features"].float()
    one = _bank_step(data, slice(None))
    ranks = run_on_ranks(_bank_step, data)
    grads = torch.cat([r["grad"] for r in ranks]) / 2  # DDP averages over the 2 ranks
    assert torch.allclose(grads, one["grad"], atol=1e-6)
    for r in ranks:
        assert torch.allclose(r["rows"], one["rows"], atol=1e-6)
        assert torch.allclose(r["log_z"], one["log_z"], atol=1e-6)
        assert torch.equal(r["written"], one["written"])
