"""Per-sample random draws for the view ops: on the input's device, optionally seeded.

Every draw goes through ``rand``: it samples on the generator's device when a generator is
given (a ``torch.Generator`` only feeds tensors on its own device) and moves the result to the
device of the batch, so a CPU generator makes CUDA views reproducible too.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rand(
    shape: int | tuple[int, ...], like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Uniform [0, 1) float32 of ``shape`` on ``like``'s device."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def uniform(
    n: int,
    low: float,
    high: float,
    like: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """[n] floats uniform in [low, high)."""
    return low + (high - low) * rand(n, like, generator)


def bernoulli(n: int, p: float, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """[n] booleans, each True with probability ``p``; p = 0 and p = 1 draw nothing."""
    if p <= 0:
        return torch.zeros(n, dtype=torch.bool, device=like.device)
    if p >= 1:
        return torch.ones(n, dtype=torch.bool, device=like.device)
    return rand(n, like, generator) < p


def randint(n: int, high: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """[n] int64 uniform in {0, ..., high - 1}."""
    return (rand(n, like, generator) * high).long().clamp_(max=high - 1)


def check_probability(p: float, name: str = "p") -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


def check_range(bounds: tuple[float, float], name: str, minimum: float | None = None) -> None:
    low, high = bounds
    if low > high or (minimum is not None and low < minimum):
        floor = f" with low >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be a (low, high) pair with low <= high{floor}, got {bounds}")
