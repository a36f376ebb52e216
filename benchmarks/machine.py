"""One line describing the machine a benchmark ran on (printed under every table)."""

from __future__ import annotations

import os
import platform


def machine_line() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from selfsup.runtime.precision import cpu_supports_bf16

    # the vector unit decides CPU speed: the same cloud "AMD EPYC" has come with AVX2 only
    # and with AVX-512 + AVX512-BF16 (where bf16-mixed is 2-3x faster than fp32)
    isa = torch.backends.cpu.get_cpu_capability()
    bf16 = "native bf16" if cpu_supports_bf16() else "no native bf16"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}, {isa}, {bf16}), {device}, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
