"""CPU training step with glibc's default allocator vs ``heap_allocations`` (selfsup's default).

    python benchmarks/allocator_speed.py [--backbones cifar_resnet18 convnet_small] [--rounds 2]

One training step = backbone forward under the precision ``auto`` picks, a linear head,
backward, SGD (momentum, weight decay), on a batch of 512 random 32 px images (the two
256-image views of a SimCLR step), channels_last. Each (backbone, allocator) pair runs in its
own process, alternating default / heap for ``--rounds`` rounds; each process times
``--steps`` steps after one warm-up step. Printed per pair: median step time (min-max over all
timed steps of all rounds), minor page faults per step, peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402

SETTINGS = ("default", "heap")
IN_CHANNELS = {"cifar_resnet18": 3, "convnet_small": 1, "convnet_tiny": 3}


def measure(backbone_name: str, setting: str, steps: int) -> dict[str, Any]:
    """Run in a fresh process: times ``steps`` training steps after one warm-up."""
    import resource
    import time

    import torch

    from selfsup.backbones import build_backbone
    from selfsup.runtime.allocator import heap_allocations
    from selfsup.runtime.precision import resolve_precision

    torch.manual_seed(0)
    channels = IN_CHANNELS.get(backbone_name, 3)
    backbone = build_backbone(backbone_name, channels).to(memory_format=torch.channels_last)
    head = torch.nn.Linear(backbone.feature_dim, 128)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(512, channels, 32, 32).contiguous(memory_format=torch.channels_last)
    bf16 = resolve_precision("auto", "cpu") == "bf16-mixed"
    times, faults = [], []
    with heap_allocations(setting == "heap") as applied:
        for _ in range(steps + 1):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = head(backbone(x)).float().pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {
        "applied": applied,
        "precision": "bf16-mixed" if bf16 else "32-true",
        "step_s": times[1:],
        "faults": faults[1:],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_in_process(backbone_name: str, setting: str, steps: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", backbone_name, setting, "--steps", str(steps)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["cifar_resnet18", "convnet_small"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process")
    parser.add_argument("--child", nargs=2, metavar=("BACKBONE", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.steps)))
        return

    print(
        "| backbone | allocator | step ms, median (min–max) | minor faults / step | peak RSS MiB |"
    )
    print("|---|---|---|---|---|")
    precision = "?"
    for name in args.backbones:
        results: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
        for _ in range(args.rounds):
            for setting in SETTINGS:
                results[setting].append(run_in_process(name, setting, args.steps))
        medians = {}
        for setting in SETTINGS:
            runs = results[setting]
            precision = runs[0]["precision"]
            times = [t * 1000 for r in runs for t in r["step_s"]]
            faults = [f for r in runs for f in r["faults"]]
            medians[setting] = statistics.median(times)
            label = "glibc default" if setting == "default" else "heap_allocations"
            if setting == "heap" and not runs[0]["applied"]:
                label += " (not applied: not glibc)"
            print(
                f"| {name} | {label} | {medians[setting]:.0f} ({min(times):.0f}–{max(times):.0f})"
                f" | {statistics.median(faults):.0f} | {max(r['peak_rss_mib'] for r in runs):.0f} |"
            )
        print(f"| {name} | heap / default | {medians['heap'] / medians['default']:.2f}x | | |")
    print(
        f"\nbatch 512, 32 px, {precision}, channels_last, {args.rounds} rounds x {args.steps} "
        f"timed steps per setting; {machine_line()}"
    )


if __name__ == "__main__":
    main()
