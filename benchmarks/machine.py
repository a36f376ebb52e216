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
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {device}, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )
