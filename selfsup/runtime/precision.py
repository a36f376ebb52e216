"""Choosing numeric precision and memory format for the hardware at hand."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import Tensor

PRECISIONS = ("auto", "bf16-mixed", "16-mixed", "32-true", "32")
# below this many elements per batch, views run on one CPU thread (see ``views_threads``)
SMALL_VIEWS_ELEMENTS = 1 << 22


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def on_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` setting ends up on CUDA devices."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> bf16-mixed where the device computes bf16 natively, else 16-mixed on older
    CUDA GPUs, else 32-true."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    if on_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"


def resolve_channels_last(
    channels_last: bool | None, backbone_name: str, precision: str, accelerator: str = "auto"
) -> bool:
    """channels_last for conv nets on CPU (oneDNN's NHWC kernels: 1.3-2x here, fp32 and bf16
    alike, see docs/benchmarks.md) and under mixed precision on GPUs (tensor-core NHWC kernels)."""
    if channels_last is not None:
        return channels_last
    if not backbone_name.startswith(("resnet", "cifar_resnet", "convnet")):
        return False
    return precision != "32-true" or not on_gpu(accelerator)


@contextlib.contextmanager
def views_threads(images: Tensor) -> Iterator[None]:
    """Compute the views of a small CPU batch on one intra-op thread, then restore the count.

    Views are ~100 elementwise ops of well under a millisecond each at 32 px. Split over
    threads, every op ends in an OpenMP barrier; on a machine whose cores are shared with
    other processes the sibling thread is often descheduled and each barrier waits for a
    time slice. Measured on a 2-core machine under load: 5 s for a 256-image SimCLR batch
    on 2 threads, 0.07 s on one (the backbone's large convolutions still use every thread).
    GPU batches and batches of >= ``SMALL_VIEWS_ELEMENTS`` elements are left alone.
    """
    threads = torch.get_num_threads()
    if images.device.type != "cpu" or images.numel() >= SMALL_VIEWS_ELEMENTS or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
