import math

import pytest
import torch
from torch import nn

from selfsup.runtime.optim import (
    LARS,
    WARMUP_MAX_BUDGET_SHARE,
    build_optimizer,
    parameter_groups,
    scaled_lr,
    warmup_cosine,
)
from selfsup.runtime.precision import resolve_channels_last, resolve_precision


def test_scaled_lr_rules():
    assert scaled_lr(0.1, 512, "linear") == pytest.approx(0.2)
    assert scaled_lr(0.1, 1024, "sqrt") == pytest.approx(0.2)
    assert scaled_lr(0.1, 1024, "none") == 0.1
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_lr(0.1, 256, "cubic")


def test_warmup_cosine_shape():
    total, warm = 100, 10
    assert warmup_cosine(0, total, warm) == pytest.approx(0.1)
    assert warmup_cosine(9, total, warm) == pytest.approx(1.0)
    assert warmup_cosine(10, total, warm) == pytest.approx(1.0)
    assert warmup_cosine(55, total, warm) == pytest.approx(0.5)
    assert warmup_cosine(100, total, warm) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(100, total, warm, final_fraction=0.1) == pytest.approx(0.1)


def cosine_at(progress: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * progress))


def test_warmup_cosine_follows_a_time_budget_that_runs_out_first():
    total, warm, cap = 100, 10, WARMUP_MAX_BUDGET_SHARE
    # step 20 of 100 is 1/9 through the cosine, but half of the time budget is spent
    by_time = (0.5 - cap) / (1 - cap)
    assert warmup_cosine(20, total, warm, time_progress=0.5) == pytest.approx(cosine_at(by_time))
    assert warmup_cosine(20, total, warm, time_progress=1.0) == pytest.approx(0.0, abs=1e-12)
    # the step count still ends the schedule when it is further along than the clock
    assert warmup_cosine(100, total, warm, time_progress=0.1) == pytest.approx(0.0, abs=1e-12)


def test_warmup_under_a_budget_ends_by_its_share_of_the_budget():
    total, warm, cap = 10_000, 100, WARMUP_MAX_BUDGET_SHARE
    # the clock is further along than the steps: it drives the warm-up
    assert warmup_cosine(3, total, warm, time_progress=cap / 2) == pytest.approx(0.5)
    assert warmup_cosine(30, total, warm, time_progress=cap / 2) == pytest.approx(0.5)
    # steps' warm-up not over, but the cap is: the cosine starts from the cap
    late = (0.9 - cap) / (1 - cap)
    assert warmup_cosine(3, total, warm, time_progress=0.9) == pytest.approx(cosine_at(late))
    # the steps' warm-up ended early: the peak holds until the cap, then the cosine
    assert warmup_cosine(warm, total, warm, time_progress=cap / 4) == pytest.approx(1.0, abs=1e-6)
    assert warmup_cosine(warm + 1, total, warm, time_progress=cap) == pytest.approx(1.0, abs=1e-6)
    # no warm-up planned: the cosine runs on the whole budget
    assert warmup_cosine(5, total, 0, time_progress=0.5) == pytest.approx(0.5)


@pytest.mark.parametrize("warmup_share_of_budget", [0.05, 0.64, 3.0])
def test_budgeted_schedule_peaks_once_and_never_jumps(warmup_share_of_budget):
    """A run whose warm-up in steps would take this share of its budget: the LR rises to its peak
    and decays smoothly to 0 when the budget ends (session 15's DINO rows warmed up for 64 % of
    their 10 minutes and then fell from the peak to 0.2 of it in one step)."""
    warm, total = 100, 100_000
    steps_in_budget = round(warm / warmup_share_of_budget)
    factors = [
        warmup_cosine(step, total, warm, time_progress=(step + 1) / steps_in_budget)
        for step in range(steps_in_budget)
    ]
    assert max(factors) == pytest.approx(1.0, abs=0.02)
    assert factors[-1] == pytest.approx(0.0, abs=1e-9)
    jumps = [abs(b - a) for a, b in zip(factors[:-1], factors[1:], strict=True)]
    assert max(jumps) < 4 / min(warm, steps_in_budget * WARMUP_MAX_BUDGET_SHARE)


def test_parameter_groups_exclude_bias_and_norm_from_decay():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    decay, no_decay = parameter_groups(net, 0.5)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_lars_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    w.grad = torch.tensor([0.6, 0.8])  # ||g|| = 1
    opt = LARS([{"params": [w], "weight_decay": 0.0}], lr=1.0, momentum=0.9, trust_coefficient=0.1)
    opt.step()
    # trust = 0.1 * 5 / 1 = 0.5; update = lr * 0.5 * g
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.3, 4.0 - 0.4]), atol=1e-6)
    w.grad = torch.tensor([0.6, 0.8])
    before = w.detach().clone()
    opt.step()
    # momentum buffer = 0.9 * 0.5 g + trust' g, trust' = 0.1 * ||w'|| / 1
    trust2 = 0.1 * before.norm().item()
    expected = before - (0.9 * 0.5 + trust2) * torch.tensor([0.6, 0.8])
    assert torch.allclose(w.detach(), expected, atol=1e-6)


def test_lars_excluded_group_is_plain_sgd():
    b = nn.Parameter(torch.tensor([1.0]))
    b.grad = torch.tensor([2.0])
    opt = LARS([{"params": [b], "weight_decay": 0.0, "lars_exclude": True}], lr=0.1)
    opt.step()
    assert b.item() == pytest.approx(1.0 - 0.2)


@pytest.mark.parametrize(
    "name, cls", [("sgd", torch.optim.SGD), ("lars", LARS), ("adamw", torch.optim.AdamW)]
)
def test_build_optimizer(name, cls):
    net = nn.Linear(3, 2)
    opt = build_optimizer(name, net, lr=0.1, weight_decay=1e-4)
    assert isinstance(opt, cls)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        build_optimizer("rmsprop", net, lr=0.1, weight_decay=0)


def test_precision_resolution():
    assert resolve_precision("32", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") in ("bf16-mixed", "32-true")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", "cpu")
    assert resolve_channels_last(None, "resnet18", "bf16-mixed") is True
    assert resolve_channels_last(None, "convnet_small", "32-true", "cpu") is True
    assert resolve_channels_last(None, "convnet_small", "32-true", "gpu") is False
    assert resolve_channels_last(None, "timm/vit_tiny", "bf16-mixed") is False
    assert resolve_channels_last(False, "resnet18", "bf16-mixed") is False
