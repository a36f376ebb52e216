"""Wafer-map augmentation: die codes 0 (off-wafer), 1 (pass), 2 (fail) stay in that set."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.views.random import rand


def die_flip_noise(
    codes: Tensor, p: float = 0.03, generator: torch.Generator | None = None
) -> Tensor:
    """Swap pass <-> fail independently on each on-wafer die with probability ``p``.

    Off-wafer positions (0) never change; the dtype is kept. codes: [B, C, H, W] in {0, 1, 2}.
    Models the test-to-test noise of die-level pass/fail results (fastsiam-wafers uses ~3 %).
    """
    if p <= 0:
        return codes
    flip = (codes > 0) & (rand(tuple(codes.shape), codes, generator) < p)
    return torch.where(flip, 3 - codes, codes)
