"""Run a loss in float32 whatever the caller's autocast or input precision."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])


def _upcast(value: Any) -> Any:
    if isinstance(value, Tensor):
        # float64 stays float64 (exact gradient tests); only half types are widened
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, (list, tuple)):
        return type(value)(_upcast(v) for v in value)
    return value


def _device_type(values: Any) -> str | None:
    for value in values:
        if isinstance(value, Tensor):
            return value.device.type
        if isinstance(value, (list, tuple)):
            found = _device_type(value)
            if found is not None:
                return found
    return None


def float32_loss(fn: F) -> F:
    """Decorator: half-precision tensor arguments become float32 and autocast is off inside.

    Why: under bf16 autocast, matmuls and exp/log-sum-exp over thousands of logits lose the
    precision a contrastive or cross-correlation loss needs, even when the inputs are float32.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = _upcast(args)
        kwargs = {k: _upcast(v) for k, v in kwargs.items()}
        device_type = _device_type(list(args) + list(kwargs.values()))
        if device_type is None:
            return fn(*args, **kwargs)
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
