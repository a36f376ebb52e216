import resource

import pytest
import torch

from selfsup.train import allocator
from selfsup.train.allocator import glibc, heap_allocations

BLOCK_MIB = 64  # above glibc's largest mmap threshold (32 MiB): always a fresh mmap by default
PAGES = BLOCK_MIB * 2**20 // 4096

needs_glibc = pytest.mark.skipif(glibc() is None, reason="the C library is not glibc")


def faults_of_a_second_block() -> int:
    """Minor page faults while filling a 64 MiB tensor right after one of the same size was
    freed: ~one per page when the freed block went back to the kernel, ~0 when it was kept."""
    torch.ones(BLOCK_MIB * 2**20 // 4, dtype=torch.float32)  # allocated, filled, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(BLOCK_MIB * 2**20 // 4, dtype=torch.float32)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@needs_glibc
def test_freed_blocks_are_reused_inside_and_returned_outside():
    outside = faults_of_a_second_block()
    if outside < PAGES // 4:
        pytest.skip(f"{outside} faults for {PAGES} pages: huge pages hide the effect here")
    with heap_allocations() as applied:
        assert applied
        inside = faults_of_a_second_block()
    after = faults_of_a_second_block()
    assert inside < PAGES // 20, (inside, PAGES)
    assert after > PAGES // 2, "glibc's defaults were not restored on exit"


@needs_glibc
def test_defaults_come_back_even_when_the_block_raises():
    with pytest.raises(RuntimeError, match="boom"), heap_allocations():
        raise RuntimeError("boom")
    if faults_of_a_second_block() < PAGES // 4:
        pytest.skip("huge pages hide the effect here")
    assert faults_of_a_second_block() > PAGES // 2


def test_disabled_or_without_glibc_it_is_not_applied(monkeypatch):
    with heap_allocations(enabled=False) as applied:
        assert not applied
    monkeypatch.setattr(allocator, "glibc", lambda: None)
    with heap_allocations() as applied:
        assert not applied


@needs_glibc
def test_a_refused_parameter_leaves_glibc_at_its_defaults(monkeypatch):
    calls = []

    class RefusingLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 0 if param == allocator.M_TRIM_THRESHOLD and value != 128 * 1024 else 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))

    monkeypatch.setattr(allocator, "glibc", lambda: RefusingLibc())
    with heap_allocations() as applied:
        assert not applied
    assert calls[-3:] == [
        (allocator.M_MMAP_MAX, allocator.DEFAULT_MMAP_MAX),
        (allocator.M_TRIM_THRESHOLD, allocator.DEFAULT_TRIM_THRESHOLD),
        ("trim", 0),
    ]
