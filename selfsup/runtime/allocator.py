"""Keeping freed tensor memory in the process during CPU training (glibc's malloc).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
returns it to the kernel on ``free``. A CPU training step allocates and frees activations of tens
of MiB each (a CIFAR ResNet-18 at batch 512: 64 MiB per early feature map), so every step
page-faults all of them in again: about 600,000 minor faults per step, measured, a tenth of the
step time spent in the kernel zeroing pages. With mmap disabled and a high trim threshold, freed
blocks stay in the heap and later steps reuse them (after a few steps: glibc's per-thread cache
can hold small alignment leftovers that make the first reuses miss, up to 7 steps measured); the
process keeps its peak working set instead of returning it to the kernel between steps. Only the
main thread's heap is affected this way: a thread arena holds at most 64 MiB, so larger blocks of
other threads are still mmapped (training runs in the main thread).

This is process-wide state, so ``heap_allocations`` applies it only for the ``with`` block (the
trainer's fit) and puts glibc's defaults back afterwards, releasing the kept memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Iterator

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# glibc's defaults, restored on exit
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536
# free memory at the top of the heap is given back to the kernel only above this
KEEP_TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=1)
def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (the only one whose ``mallopt`` this module knows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def heap_allocations(enabled: bool = True) -> Iterator[bool]:
    """Within the block, glibc serves large allocations from the heap and keeps freed memory.

    Yields whether the setting is in force: False when ``enabled`` is False, the C library is
    not glibc, or glibc refused a parameter. On exit, glibc's default mmap count and trim
    threshold are set again and ``malloc_trim(0)`` returns the kept free memory to the kernel.
    """
    libc = glibc() if enabled else None
    applied = False
    if libc is not None:
        applied = libc.mallopt(M_MMAP_MAX, 0) == 1
        applied = applied and libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD) == 1
        if not applied:
            _restore(libc)
    try:
        yield applied
    finally:
        if applied:
            _restore(libc)


def _restore(libc: ctypes.CDLL) -> None:
    libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
    libc.malloc_trim(0)
