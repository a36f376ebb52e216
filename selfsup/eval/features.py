"""Frozen-feature extraction: a backbone in eval mode over a whole image tensor, batch by batch."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.runtime.precision import resolve_precision
from selfsup.runtime.progress import Progress, resolve_progress

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def extract_features(
    backbone: nn.Module,
    images: Any,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    precision: str = "32-true",
    channels_last: bool = False,
    out_device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> Tensor:
    """Backbone features [N, D] (float32, on ``out_device``) of every image.

    images: uint8 [N, C, H, W] (tensor or numpy array) or a dataset with an ``.images`` tensor.
    preprocess: maps a uint8 batch on the compute device to the backbone's input (e.g. a view
    recipe's ``preprocess``: scale + normalise); None feeds the batch as it is.

    The backbone runs in eval mode (BatchNorm uses its running statistics, dropout is off; see
    lightly#1440 for what goes wrong otherwise) without gradients, and gets its previous mode
    (and device, when ``device`` moved it) back afterwards. ``device`` defaults to the
    backbone's own. ``precision`` is a Lightning string: "32-true"/"32", "bf16-mixed",
    "16-mixed" or "auto"; mixed precision autocasts the backbone (not ``preprocess``) on the
    device's type. ``channels_last`` passes NHWC inputs, which oneDNN and tensor cores prefer.
    ``progress`` reports batches done (default: ``resolve_progress``, silent for short jobs).
    """
    if batch_size < 1:
        raise ValueError(f"extract_features: batch_size must be >= 1, got {batch_size}")
    images = _image_tensor(images)
    home = _module_device(backbone)
    device = torch.device(device) if device is not None else home
    resolved = resolve_precision(precision, "gpu" if device.type == "cuda" else device.type)
    autocast_dtype = AUTOCAST_DTYPES.get(resolved)

    out: Tensor | None = None
    task = resolve_progress(progress).task(
        f"features of {images.shape[0]} images", math.ceil(images.shape[0] / batch_size), "batches"
    )
    with _eval_on(backbone, device), torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            x = preprocess(batch) if preprocess is not None else batch
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, autocast_dtype):
                feats = backbone(x)
            if not isinstance(feats, Tensor) or feats.ndim != 2 or feats.shape[0] != x.shape[0]:
                shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
                raise ValueError(
                    f"extract_features: the backbone must return features [B, D] for a batch of "
                    f"{x.shape[0]} images, got {shape}"
                )
            if out is None:
                out = torch.empty(images.shape[0], feats.shape[1], device=out_device)
            out[start : start + feats.shape[0]].copy_(feats.float())
            task.advance()
    task.close()
    assert out is not None  # images is non-empty
    return out


def _image_tensor(images: Any) -> Tensor:
    if hasattr(images, "images") and not isinstance(images, Tensor):
        images = images.images
    t = images if isinstance(images, Tensor) else torch.as_tensor(images)
    if t.ndim != 4:
        raise ValueError(
            f"extract_features: images must be [N, C, H, W] (or a dataset with .images), "
            f"got shape {tuple(t.shape)}"
        )
    if t.shape[0] == 0:
        raise ValueError("extract_features: got no images (N = 0)")
    return t


def _module_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_on(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode on ``device`` for the block; the module's modes and device come back after."""
    # Remember every submodule's flag: a frozen sub-part may be in eval while the rest trains.
    modes = [(m, m.training) for m in module.modules()]
    home = _module_device(module)
    module.eval()
    if device != home:
        module.to(device)
    try:
        yield
    finally:
        if device != home:
            module.to(home)
        for m, training in modes:
            m.training = training


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
