"""Per-sample random draws on the right device, optionally from a ``torch.Generator``."""

from __future__ import annotations

import torch
from torch import Tensor


def rand(
    n: int | tuple[int, ...], like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Uniform [0, 1) floats of shape ``n`` on ``like``'s device (drawn on the generator's)."""
    shape = (n,) if isinstance(n, int) else n
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def uniform(n: int, low: float, high: float, like: Tensor, generator=None) -> Tensor:
    return low + (high - low) * rand(n, like, generator)


def bernoulli(n: int, p: float, like: Tensor, generator=None) -> Tensor:
    """Boolean [n], True with probability ``p`` independently per sample."""
    if p <= 0:
        return torch.zeros(n, dtype=torch.bool, device=like.device)
    if p >= 1:
        return torch.ones(n, dtype=torch.bool, device=like.device)
    return rand(n, like, generator) < p


def randint(n: int, high: int, like: Tensor, generator=None) -> Tensor:
    """Integers uniform in [0, high), shape [n]."""
    return (rand(n, like, generator) * high).long().clamp_(max=high - 1)
