"""Training-step speed of the small backbones under fp32/bf16 and NCHW/channels_last.

    python benchmarks/backbone_speed.py [--batch 512] [--size 32] [--repeats 3]

One step = forward, a scalar loss, backward, SGD step. Prints a Markdown table of images/s
(median of --repeats timed steps after one warm-up step) and the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402

from selfsup.backbones import build_backbone  # noqa: E402

CASES = [
    ("convnet_tiny", {"width": 32}),
    ("convnet_small", {"width": 16}),
    ("convnet_small", {"width": 32}),
    ("cifar_resnet18", {}),
]
MODES = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def step_rate(name: str, kwargs: dict, precision: str, channels_last: bool, args) -> float:
    torch.manual_seed(0)
    net = build_backbone(name, 1, **kwargs)
    x = torch.randn(args.batch, 1, args.size, args.size)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = net(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return args.batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    header = " | ".join(f"{p}{' + channels_last' if cl else ''}" for p, cl in MODES)
    print(f"| backbone | {header} |\n|---|" + "---|" * len(MODES))
    for name, kwargs in CASES:
        rates = [step_rate(name, kwargs, p, cl, args) for p, cl in MODES]
        label = name + (f" (width {kwargs['width']})" if kwargs else "")
        print(f"| {label} | " + " | ".join(f"{r:.0f}" for r in rates) + " |", flush=True)
    print(f"\nimages/s, batch {args.batch}, {args.size} px, 1 channel; {machine_line()}")


if __name__ == "__main__":
    main()
