"""benchmarks/allocator_speed.py: both allocator settings run in their own processes and the
table reports them (tiny net, one timed step)."""

import subprocess
import sys
from pathlib import Path

import pytest

from selfsup.runtime.allocator import glibc

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "allocator_speed.py"


@pytest.mark.skipif(glibc() is None, reason="the C library is not glibc")
def test_benchmark_prints_both_settings_and_their_ratio():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--backbones", "convnet_tiny", "--rounds", "1",
         "--steps", "1"],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| convnet_tiny")]
    assert [row.split("|")[2].strip() for row in rows] == [
        "glibc default",
        "heap_allocations",
        "heap / default",
    ]
    heap_faults = float(rows[1].split("|")[4])
    default_faults = float(rows[0].split("|")[4])
    assert heap_faults < default_faults, "heap allocations did not cut the page faults"
    assert "batch 512, 32 px" in out and "timed steps per setting" in out
