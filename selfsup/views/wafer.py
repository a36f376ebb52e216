"""Wafer-map noise: die codes 0 (off-wafer), 1 (pass), 2 (fail) stay in that set."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.views.sampling import check_probability, rand

OFF_WAFER, PASS, FAIL = 0, 1, 2


def die_flip_noise(
    codes: Tensor, p: float = 0.03, generator: torch.Generator | None = None
) -> Tensor:
    """Swap pass <-> fail (1 <-> 2, i.e. c -> 3 - c) on each on-wafer die independently with
    probability ``p``; off-wafer positions (0) never change.

    Models the test-to-test noise of die-level results (a few per cent of dies). Each die of
    each sample draws on its own. codes: [B, C, H, W] in {0, 1, 2}, any dtype (kept).
    """
    check_probability(p, "die-flip p")
    if p == 0:
        return codes
    flip = (codes > OFF_WAFER) & (rand(tuple(codes.shape), codes, generator) < p)
    # arithmetic rather than torch.where, which is slow on CPU for full-size masks
    if codes.dtype.is_floating_point:
        return codes + flip.to(codes.dtype) * ((PASS + FAIL) - 2 * codes)
    return codes ^ (flip.to(codes.dtype) * (PASS ^ FAIL))
