"""End-to-end SimCLR throughput: selfsup's default path beside lightly's documented recipe.

    python benchmarks/throughput.py [--cases resnet18 tiny] [--runs 3] [--steps N]
                                    [--warmup N] [--device cpu|cuda] [--lightly-workers 2]

Installs nothing. When ``lightly`` is importable (``pip install -r requirements-bench.txt``)
each case runs up to three recipes, interleaved (A, B, C, A, B, C, ...), on the same
generated images (random 32x32 RGB uint8) with the same backbone module:

- ``selfsup``: ``selfsup.build("simclr")`` trained by the same ``PretrainModule`` + Lightning
  ``Trainer`` as ``selfsup pretrain``, with its defaults: uint8 batches gathered by index,
  batched per-sample views on the device, precision "auto" (bf16-mixed where the hardware
  computes bf16), channels_last for conv nets, one backbone pass for both views, and on CPU
  glibc's large blocks kept for reuse between steps (``selfsup.runtime.allocator``).
- ``lightly fp32``: lightly's documented SimCLR example: ``SimCLRTransform`` per PIL image in
  ``DataLoader`` workers, ``SimCLRProjectionHead``, ``NTXentLoss``, SGD, fp32, one backbone
  pass per view. Augmentation as selfsup's CIFAR recipe: ``cj_strength=0.5`` (jitter 0.4,
  0.4, 0.4, 0.1, what lightly recommends for CIFAR) and no blur at 32 px.
- ``lightly bf16``: the same with bf16 autocast added by hand around forward and loss; by
  default only where the device computes bf16 natively (elsewhere autocast emulates it).

Both use the backbone's width for the projection head's hidden layer and 128 outputs.
Each recipe lives in its own worker process (started once per case, then told to run), so
peak memory is per recipe. Printed per recipe: images/s end to end (data + augmentation +
step; median and min-max of the runs), the ratio to lightly, peak memory, and for selfsup
its step time divided by the bare backbone forward + backward on the same views and
precision. Without lightly only the selfsup rows are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULT = "@@result "
BATCH = 256
SIZE = 32
SEED = 0


@dataclass(frozen=True)
class Case:
    """One benchmark case: a backbone and how many warm-up / timed steps a run takes."""

    label: str
    backbone: str
    warmup: int
    steps: int
    bare_repeats: int


CASES = {
    "resnet18": Case("CIFAR-stem ResNet-18", "cifar_resnet18", warmup=1, steps=2, bare_repeats=2),
    # enough warm-up to drain the workers' prefetched batches: the timed steps then see the
    # steady state of an augmentation-bound loop
    "tiny": Case("convnet_tiny (width 32)", "convnet_tiny", warmup=4, steps=10, bare_repeats=3),
}
RECIPES = ("selfsup", "lightly-fp32", "lightly-bf16")


# --- measurement helpers (worker side) -----------------------------------------------------------


def _rss_mib_peak_main() -> float:
    """Peak resident set of this process (ru_maxrss; kB on Linux), MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _pss_mib(pid: int) -> float:
    """Proportional set size of one process (shared pages split among their users), MiB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class WorkerMemory:
    """Samples the summed PSS of this process's child processes (DataLoader workers) every
    ``interval`` seconds in a thread; ``peak`` is the largest sum seen."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.interval):
            total = sum(_pss_mib(pid) for pid in _children(me))
            self.peak = max(self.peak, total)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _reset_cuda_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory(device: str, workers: float) -> dict[str, float]:
    """CUDA: peak allocated device memory. CPU: this process's peak RSS plus the workers'
    peak summed PSS (an upper bound of the tree's peak when the two peaks do not overlap)."""
    import torch

    if device == "cuda":
        return {"memory_mib": torch.cuda.max_memory_allocated() / 2**20}
    return {"memory_mib": _rss_mib_peak_main() + workers, "workers_mib": workers}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def generated_images(n: int) -> Any:
    """``n`` random RGB images, uint8 [n, 32, 32, 3] (the same for every recipe)."""
    import numpy as np

    return np.random.default_rng(SEED).integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)


def _backbone(case: Case) -> Any:
    import torch

    from selfsup.backbones import build_backbone

    torch.manual_seed(SEED)
    return build_backbone(case.backbone, 3)


def _rate(times: list[float], warmup: int, steps: int) -> tuple[float, float]:
    """(images/s, seconds per step) over the timed steps, from step-end timestamps."""
    elapsed = times[warmup + steps - 1] - times[warmup - 1]
    return steps * BATCH / elapsed, elapsed / steps


# --- selfsup --------------------------------------------------------------------------------------


def run_selfsup(case: Case, warmup: int, steps: int, device: str) -> dict[str, Any]:
    """One run of selfsup's trainer path; also times the bare backbone on the same views."""
    import lightning as L
    import torch

    import selfsup
    from selfsup.data import ImageDataset, make_dataloader
    from selfsup.data.loader import pin_memory_for
    from selfsup.runtime.allocator import heap_allocations
    from selfsup.runtime.precision import resolve_channels_last, resolve_precision
    from selfsup.train.module import PretrainModule

    images = generated_images((warmup + steps + 1) * BATCH)
    dataset = ImageDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    backbone = _backbone(case)
    method = selfsup.build(
        "simclr",
        backbone=backbone,
        in_channels=3,
        image_size=SIZE,
        proj_hidden_dim=backbone.feature_dim,
        proj_dim=128,
    )
    precision = resolve_precision("auto", device)
    channels_last = resolve_channels_last(None, case.backbone, precision, device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    module = PretrainModule(
        method, total_steps=warmup + steps, channels_last=channels_last, warmup_steps=0
    )
    clock = StepClock(device)
    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        precision=precision,
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        callbacks=[clock.callback()],
    )
    loader = make_dataloader(dataset, BATCH, seed=SEED, pin_memory=pin_memory_for(device))
    _reset_cuda_peak(device)
    # as `selfsup pretrain` does on CPU; the bare backbone is timed under the same allocator
    with heap_allocations(device == "cpu") as heap:
        trainer.fit(module, train_dataloaders=loader)
        rate, step_s = _rate(clock.times, warmup, steps)
        result = {"images_per_s": rate, "step_s": step_s, **_peak_memory(device, 0.0)}
        bare = bare_backbone_step(
            method, dataset.images[:BATCH], precision, channels_last, case.bare_repeats
        )
    views_s = views_time(method, dataset.images[:BATCH], device)
    result.update(
        bare_s=bare,
        views_s=views_s,
        step_over_bare=step_s / bare,
        precision=precision,
        channels_last=channels_last,
        heap_allocations=heap,
    )
    return result


class StepClock:
    """Timestamps at the end of every training step (after the optimizer step)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.times: list[float] = []

    def callback(self) -> Any:
        import lightning as L

        clock = self

        class _Clock(L.Callback):
            def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
                _sync(clock.device)
                clock.times.append(time.perf_counter())

        return _Clock()


def bare_backbone_step(
    method: Any, batch: Any, precision: str, channels_last: bool, repeats: int
) -> float:
    """Median seconds of backbone forward + backward on one batch's views, concatenated as
    the method sees them, at the same precision and memory format (no heads, no loss).
    The backbone is warm (the training run just used the same shapes)."""
    import torch

    device = next(method.parameters()).device
    views = method.views(batch.to(device))
    x = torch.cat(views)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    backbone = method.backbone.train()
    bf16 = precision == "bf16-mixed"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = backbone(x)
        out.float().mean().backward()
        backbone.zero_grad(set_to_none=True)
        _sync(device.type)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def views_time(method: Any, batch: Any, device: str, repeats: int = 5) -> float:
    """Median seconds for ``method.views`` on one uint8 batch (both views), with the
    trainer's thread choice."""
    from selfsup.runtime.precision import views_threads

    batch = batch.to(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with views_threads(batch):
            method.views(batch)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- lightly --------------------------------------------------------------------------------------


def run_lightly(case: Case, warmup: int, steps: int, device: str, bf16: bool, workers: int):
    """One run of lightly's documented SimCLR loop (per-image PIL transform in workers)."""
    import torch
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from torch import nn
    from torch.utils.data import DataLoader

    class LightlySimCLR(nn.Module):
        def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimCLRProjectionHead(feature_dim, feature_dim, 128)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.projection_head(self.backbone(x).flatten(start_dim=1))

    transform = SimCLRTransform(input_size=SIZE, cj_strength=0.5, gaussian_blur=0.0)
    dataset = PILImages(generated_images((warmup + steps + 1) * BATCH), transform)
    loader = DataLoader(
        dataset, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=workers
    )
    backbone = _backbone(case)
    model = LightlySimCLR(backbone, backbone.feature_dim).to(device)
    criterion = NTXentLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    times: list[float] = []
    _reset_cuda_peak(device)
    with WorkerMemory() as memory:
        for step, ((x0, x1), _) in enumerate(loader):
            x0, x1 = x0.to(device), x1.to(device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                z0 = model(x0)
                z1 = model(x1)
                loss = criterion(z0, z1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            _sync(device)
            times.append(time.perf_counter())
            if step + 1 == warmup + steps:
                break
        del loader  # shuts the workers down
    rate, step_s = _rate(times, warmup, steps)
    return {"images_per_s": rate, "step_s": step_s, **_peak_memory(device, memory.peak)}


class PILImages:
    """Like torchvision's CIFAR10: HWC uint8 arrays, a PIL image per item, then the
    transform."""

    def __init__(self, images: Any, transform: Any) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), 0


# --- worker process -------------------------------------------------------------------------------


def serve(case_name: str, recipe: str, args: argparse.Namespace) -> None:
    """Worker loop: import once, then one run per "run" line on stdin, a result line each."""
    import torch

    sys.path.insert(0, str(HERE))
    from machine import machine_line

    torch.manual_seed(SEED)
    case = CASES[case_name]
    warmup, steps = args.warmup or case.warmup, args.steps or case.steps
    print(RESULT + json.dumps({"ready": True, "machine": machine_line()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        if recipe == "selfsup":
            result = run_selfsup(case, warmup, steps, args.device)
        else:
            bf16 = recipe == "lightly-bf16"
            result = run_lightly(case, warmup, steps, args.device, bf16, args.lightly_workers)
        print(RESULT + json.dumps(result), flush=True)


# --- orchestration (parent side) ------------------------------------------------------------------


class Worker:
    """A recipe's worker process; its stderr goes to a log file shown when it fails."""

    def __init__(self, case_name: str, recipe: str, args: argparse.Namespace) -> None:
        self.name = f"{case_name}/{recipe}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="throughput-", suffix=".log")
        command = [sys.executable, __file__, "--serve", case_name, recipe, *_passed_options(args)]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT) :])
        self.log.seek(0)
        tail = self.log.read()[-3000:]
        raise RuntimeError(f"{self.name} worker stopped:\n{tail}")

    def run(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=120)
        self.log.close()


def _passed_options(args: argparse.Namespace) -> list[str]:
    options = ["--device", args.device, "--lightly-workers", str(args.lightly_workers)]
    if args.steps:
        options += ["--steps", str(args.steps)]
    if args.warmup:
        options += ["--warmup", str(args.warmup)]
    return options


def measure_case(case_name: str, recipes: list[str], args: argparse.Namespace):
    """Runs every recipe ``args.runs`` times, interleaved; returns results and the machine."""
    workers = [Worker(case_name, recipe, args) for recipe in recipes]
    results: dict[str, list[dict[str, Any]]] = {recipe: [] for recipe in recipes}
    try:
        for run in range(args.runs):
            for recipe, worker in zip(recipes, workers, strict=True):
                result = worker.run()
                results[recipe].append(result)
                print(
                    f"  {case_name} run {run + 1}/{args.runs} {recipe}: "
                    f"{result['images_per_s']:.1f} img/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for worker in workers:
            worker.close()
    return results, workers[0].ready["machine"]


def _spread(values: list[float], digits: int = 1) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}–{max(values):.{digits}f})"
    )


def table_rows(case_name: str, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown rows of one case: rates, selfsup's ratios to lightly, memory, step/bare."""
    label = CASES[case_name].label
    rate = {r: [x["images_per_s"] for x in runs] for r, runs in results.items()}
    median = {r: statistics.median(v) for r, v in rate.items()}
    rows = []
    for recipe, runs in results.items():
        ratios = "–"
        if recipe == "selfsup":
            bases = [b for b in ("lightly-fp32", "lightly-bf16") if b in median]
            ratios = "; ".join(
                f"{median[recipe] / median[b]:.2f}x {_recipe_label(b, {})}" for b in bases
            )
        memory = max(x["memory_mib"] for x in runs)
        bare = "–"
        if "step_over_bare" in runs[0]:
            bare = _spread([x["step_over_bare"] for x in runs], 2)
        rows.append(
            f"| {label} | {_recipe_label(recipe, runs[0])} | {_spread(rate[recipe])} | "
            f"{ratios or '–'} | {memory:.0f} | {bare} |"
        )
    return rows


def _recipe_label(recipe: str, result: dict[str, Any]) -> str:
    if recipe == "selfsup":
        memory_format = ", channels_last" if result.get("channels_last") else ""
        heap = ", heap allocations" if result.get("heap_allocations") else ""
        return f"selfsup default ({result['precision']}{memory_format}{heap})"
    return {
        "lightly-fp32": "lightly recipe, fp32",
        "lightly-bf16": "lightly recipe + bf16 autocast",
    }[recipe]


def detail_lines(case_name: str, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per-run numbers behind the table: paired ratios, selfsup's views and bare step."""
    lines: list[str] = []
    if "selfsup" not in results:
        return lines
    ours = results["selfsup"]
    views = statistics.median(x["views_s"] for x in ours) * 1000
    bare = statistics.median(x["bare_s"] for x in ours) * 1000
    step = statistics.median(x["step_s"] for x in ours) * 1000
    lines.append(
        f"{case_name}: selfsup step {step:.0f} ms end to end, bare backbone fwd+bwd "
        f"{bare:.0f} ms, views (both) {views:.1f} ms"
    )
    for base in ("lightly-fp32", "lightly-bf16"):
        if base in results:
            paired = [
                a["images_per_s"] / b["images_per_s"]
                for a, b in zip(ours, results[base], strict=True)
            ]
            lines.append(
                f"{case_name}: selfsup / {base} per interleaved round: "
                + ", ".join(f"{p:.2f}" for p in paired)
            )
            workers = [x.get("workers_mib", 0.0) for x in results[base]]
            if any(workers):
                lines.append(
                    f"{case_name}: {base} peak memory includes {max(workers):.0f} MiB of "
                    "DataLoader workers (PSS)"
                )
    return lines


def choose_recipes(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(recipes to run, notes to print): lightly's only when it is importable, its bf16
    variant only where bf16 is native (elsewhere autocast emulates it, several times slower
    than fp32, which would flatter selfsup)."""
    notes = []
    recipes = list(args.recipes or RECIPES)
    if importlib.util.find_spec("lightly") is None:
        notes.append(
            "lightly was not found: measuring selfsup only (pip install -r requirements-bench.txt)"
        )
        return [r for r in recipes if not r.startswith("lightly")], notes
    if args.recipes is None and not native_bf16(args.device):
        recipes.remove("lightly-bf16")
        notes.append(
            f"lightly + bf16: skipped, this {args.device.upper()} has no native bf16 "
            "(AVX512-BF16 / AMX); force it with --recipes"
        )
    return recipes, notes


def native_bf16(device: str) -> bool:
    import torch

    from selfsup.runtime.precision import cpu_supports_bf16

    return torch.cuda.is_bf16_supported() if device == "cuda" else cpu_supports_bf16()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--runs", type=int, default=3, help="timed runs per recipe (>= 3)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per run (0: per case)")
    parser.add_argument("--warmup", type=int, default=0, help="warm-up steps (0: per case)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--lightly-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--recipes",
        nargs="+",
        choices=RECIPES,
        default=None,
        help="default: all; lightly-bf16 only where the device computes bf16 natively",
    )
    parser.add_argument("--serve", nargs=2, metavar=("CASE", "RECIPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], args)
        return

    recipes, notes = choose_recipes(args)
    print("\n".join(notes))
    started = time.strftime("%Y-%m-%d %H:%M")
    load_at_start = "/".join(f"{x:.1f}" for x in os.getloadavg())
    rows, details, machine = [], [], ""
    for case_name in args.cases:
        results, machine = measure_case(case_name, recipes, args)
        rows += table_rows(case_name, results)
        details += detail_lines(case_name, results)
    print(
        "| case | recipe | images/s, median (min–max) | selfsup / lightly | peak memory MiB | "
        "step / bare backbone fwd+bwd |\n|---|---|---|---|---|---|"
    )
    print("\n".join(rows))
    print()
    print("\n".join(details))
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nSimCLR, batch {BATCH}, {SIZE} px RGB, {args.runs} interleaved runs per recipe; "
        f"{started}; load average at start {load_at_start}, at the end {load}; {machine}"
    )


if __name__ == "__main__":
    main()
