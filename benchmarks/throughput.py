"""End-to-end throughput per method: selfsup's default path beside lightly 1.6's recipe.

    python benchmarks/throughput.py [--methods simclr mocov2 byol ... | all] [--cases resnet18 tiny]
                                    [--runs 3] [--steps N] [--warmup N] [--device cpu|cuda]
                                    [--lightly-workers 2] [--recipes selfsup lightly-fp32 ...]

Installs nothing. ``--methods`` (default: simclr, the benchmark of earlier sessions; ``all``:
every method of ``lightly_recipes.PAIRINGS`` that selfsup registers, the others skipped with a
note) picks the methods that lightly 1.6 also implements; ``unpaired`` (or their names) the
registered methods lightly lacks, measured on selfsup's side only (images/s, step / bare). When
``lightly`` is importable (``pip install -r requirements-bench.txt``) each case and method runs
up to three recipes, interleaved (A, B, C, A, B, C, ...), on the same generated images (random
32x32 RGB uint8) with the same backbone module and the same head widths:

- ``selfsup``: ``selfsup.build(method)`` trained by the same ``PretrainModule`` + Lightning
  ``Trainer`` as ``selfsup pretrain``, with the method's defaults and its own views: uint8
  batches gathered by index, batched per-sample views on the device, precision "auto"
  (bf16-mixed where the hardware computes bf16), channels_last for conv nets, one backbone
  pass per view size, and on CPU glibc's large blocks kept for reuse between steps
  (``selfsup.runtime.allocator``).
- ``lightly fp32``: lightly's documented recipe for the method (``lightly_recipes.py``): its
  transform per PIL image in ``DataLoader`` workers (set to selfsup's augmentations for the
  method; multi-crop for DINO and SwAV), its heads and loss, SGD, fp32, one backbone pass per
  view.
- ``lightly bf16``: the same with bf16 autocast added by hand around forward and loss; by
  default only where the device computes bf16 natively (elsewhere autocast emulates it).

Head widths (both sides): lightly's examples' widths for a ResNet-18, scaled with the
backbone's feature size d (SimCLR 512 -> 512 -> 128 becomes d -> d -> 128; the table is
``lightly_recipes.PAIRINGS``); queues and memory banks hold 4096 entries. Each recipe lives in
its own worker process (started once per case and method, then told to run), so peak memory is
per recipe. Printed per recipe: images/s end to end (data + augmentation + step; median and
min-max of the runs), the ratio to lightly, peak memory, and for selfsup its step time divided
by the bare backbone passes of one step on the same views and precision: forward + backward of
the backbone on the views it trains on, plus the forward of a momentum copy (BYOL's target,
MoCo's key encoder, DINO's teacher) where the method has one. What is left over is views,
heads, loss, queues, Sinkhorn, nearest neighbours, EMA updates and the optimizer. The bare
passes run once after every training step, in the same process, timed apart and left out of
the step's time: each step is divided by the bare passes right after it and the ratio is the
median of these pairs, so a machine whose speed drifts (a shared VM: the same bare passes
measured 250-590 ms in consecutive processes here) moves both sides of each pair together.
Without lightly only the selfsup rows are printed.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# benchmarks/ is not a package: its folder is put on sys.path above
from lightly_recipes import PAIRINGS, Pairing  # noqa: E402, F401  (Pairing: for callers)

RESULT = "@@result "
BATCH = 256
SIZE = 32
SEED = 0
# the same constant learning rate on both sides, no warm-up: it does not change the speed, and
# at selfsup's default 0.06 VICReg diverges to NaN within 5 steps on the random images
LR = 0.02


@dataclass(frozen=True)
class Case:
    """One benchmark case: a backbone, how many warm-up / timed steps a run takes, and the
    batch of images (``image_size`` px RGB) a step trains on."""

    label: str
    backbone: str
    warmup: int
    steps: int
    backbone_kwargs: Mapping[str, Any] = field(default_factory=dict)
    image_size: int = SIZE
    batch: int = BATCH


CASES = {
    "resnet18": Case("CIFAR-stem ResNet-18", "cifar_resnet18", warmup=1, steps=2),
    # enough warm-up to drain the workers' prefetched batches: the timed steps then see the
    # steady state of an augmentation-bound loop
    "tiny": Case("convnet_tiny (width 32)", "convnet_tiny", warmup=4, steps=10),
    # Super-Selfish's default image size with an ImageNet-stem ResNet-18: CPC's patches are
    # 56 px here (8 px at 32 px), the paper's regime of large patches
    "resnet18_225": Case(
        "ResNet-18, 225 px, batch 16", "resnet18", warmup=1, steps=2, image_size=225, batch=16
    ),
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


def generated_images(n: int, size: int = SIZE) -> Any:
    """``n`` random RGB images, uint8 [n, size, size, 3] (the same for every recipe)."""
    import numpy as np

    return np.random.default_rng(SEED).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _backbone(case: Case) -> Any:
    import torch

    from selfsup.backbones import build_backbone

    torch.manual_seed(SEED)
    return build_backbone(case.backbone, 3, **case.backbone_kwargs)


def _rate(times: list[float], warmup: int, steps: int, batch: int) -> tuple[float, float]:
    """(images/s, seconds per step) over the timed steps, from step-end timestamps."""
    elapsed = times[warmup + steps - 1] - times[warmup - 1]
    return steps * batch / elapsed, elapsed / steps


def head_parameters(model: Any) -> int:
    """Trained parameters outside the backbone (heads, predictors, prototypes)."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and not name.startswith("backbone.")
    )


# --- selfsup --------------------------------------------------------------------------------------


# methods that build one encoder per channel group from a registered backbone's name, and
# refuse a built module (split_brain's L and ab halves)
BUILT_BY_NAME = ("split_brain",)


def case_backbone(case: Case, method: str) -> Any:
    """The case's backbone for ``method``: built (seeded), or its (name, keywords) for the
    methods of ``BUILT_BY_NAME``."""
    if method in BUILT_BY_NAME:
        return case.backbone, dict(case.backbone_kwargs)
    return _backbone(case)


def build_selfsup(method: str, backbone: Any, size: int, num_images: int = BATCH) -> Any:
    """selfsup's ``method`` with its defaults and the head widths of ``PAIRINGS``; a method
    lightly lacks gets its defaults and, as ``selfsup pretrain`` gives it, its defaults for
    ``num_images`` training images (``Method.data_defaults``: a memory bank's size).
    ``backbone``: a built module, or (registered name, keywords) built here, seeded."""
    import torch

    import selfsup
    from selfsup.methods import METHODS

    by_name: dict[str, Any] = {}
    if isinstance(backbone, tuple):
        torch.manual_seed(SEED)
        backbone, by_name = backbone[0], {"backbone_kwargs": backbone[1]}
    if method in PAIRINGS:
        sizes = PAIRINGS[method].sizes(backbone.feature_dim)
    else:
        sizes = METHODS.get(method).data_defaults(num_images, BATCH)
    return selfsup.build(
        method, backbone=backbone, in_channels=3, image_size=size, **by_name, **sizes
    )


def selfsup_views(method: str, size: int) -> Any:
    """The views selfsup's ``method`` makes by default (its ``ViewRecipe``), for lightly's
    transform to copy; built on a 1-channel-wide net, so it costs next to no memory."""
    from selfsup.backbones import build_backbone

    return build_selfsup(method, build_backbone("convnet_tiny", 3, width=1), size).views


def run_selfsup(
    case: Case,
    method_name: str,
    warmup: int,
    steps: int,
    device: str,
    *,
    batch: int = BATCH,
    size: int = SIZE,
) -> dict[str, Any]:
    """One run of selfsup's trainer path; also times the bare backbone passes of a step."""
    import lightning as L
    import torch

    from selfsup.data import ImageDataset, make_dataloader
    from selfsup.data.loader import pin_memory_for
    from selfsup.runtime.allocator import heap_allocations
    from selfsup.runtime.precision import resolve_channels_last, resolve_precision
    from selfsup.train.module import PretrainModule

    images = generated_images((warmup + steps + 1) * batch, size)
    dataset = ImageDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    method = build_selfsup(method_name, case_backbone(case, method_name), size, len(dataset))
    precision = resolve_precision("auto", device)
    channels_last = resolve_channels_last(None, case.backbone, precision, device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    module = PretrainModule(
        method, lr=LR, total_steps=warmup + steps, channels_last=channels_last, warmup_steps=0
    )
    bare = BarePasses(method, dataset.images[:batch], precision, channels_last)
    clock = StepClock(device, between_steps=bare)
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
    fields = getattr(method, "batch_fields", ())
    loader = make_dataloader(
        dataset, batch, seed=SEED, pin_memory=pin_memory_for(device), fields=fields
    )
    _reset_cuda_peak(device)
    # as `selfsup pretrain` does on CPU; the bare backbone is timed under the same allocator
    with heap_allocations(device == "cpu") as heap:
        trainer.fit(module, train_dataloaders=loader)
        timed = slice(warmup, warmup + steps)
        step_times, bare_times = clock.steps[timed], clock.between[timed]
        step_s = sum(step_times) / len(step_times)
        result = {"images_per_s": batch / step_s, "step_s": step_s, **_peak_memory(device, 0.0)}
    result.update(
        bare_s=statistics.median(bare_times),
        bare_passes=bare.described,
        views_s=views_time(method, dataset.images[:batch], device),
        step_over_bare=statistics.median(
            s / b for s, b in zip(step_times, bare_times, strict=True)
        ),
        precision=precision,
        channels_last=channels_last,
        heap_allocations=heap,
        loss=float(trainer.callback_metrics["train/loss"]),
        head_parameters=head_parameters(method),
    )
    return result


class StepClock:
    """Each training step's duration end to end: from the end of the previous one (or the
    start of training) to the end of its optimizer step, data loading included. With
    ``between_steps`` (a callable returning seconds), that reference is run and timed after
    every step and left out of the next step's duration: ``between[i]`` follows ``steps[i]``."""

    def __init__(self, device: str, between_steps: Any = None) -> None:
        self.device = device
        self.between_steps = between_steps
        self.steps: list[float] = []
        self.between: list[float] = []
        self._start = 0.0

    def callback(self) -> Any:
        import lightning as L

        clock = self

        class _Clock(L.Callback):
            def on_train_start(self, *args: Any, **kwargs: Any) -> None:
                _sync(clock.device)
                clock._start = time.perf_counter()

            def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
                _sync(clock.device)
                clock.steps.append(time.perf_counter() - clock._start)
                if clock.between_steps is not None:
                    clock.between.append(clock.between_steps())
                clock._start = time.perf_counter()

        return _Clock()


def sample_fields(method: Any, batch: int) -> dict[str, Any]:
    """The per-sample fields the method declares, as the loader would give them for the
    first ``batch`` samples of an unlabelled dataset."""
    import torch

    made = {
        "indices": torch.arange(batch, dtype=torch.int64),
        "labels": torch.full((batch,), -1, dtype=torch.int64),
    }
    return {name: made[name] for name in getattr(method, "batch_fields", ())}


# (module, "forward" or "feature_map", its input, whether it built a graph to backpropagate)
BackboneCall = tuple[Any, str, Any, bool]


def backbone_calls(method: Any, views: list[Any], bf16: bool) -> list[BackboneCall]:
    """The backbone calls of one ``training_loss`` on ``views``: (module, which pass, its
    input, whether it built a graph: grad on and its parameters or input trainable), for the
    backbone and every copy of it (momentum target, key encoder, teacher): forward passes
    recorded by forward pre-hooks, ``feature_map`` passes (the autoencoders', CPC's) by a
    recording wrapper on each backbone."""
    import torch

    calls: list[BackboneCall] = []

    def builds_graph(module: Any, x: Any) -> bool:
        # a frozen backbone (BiGAN's encoder in the discriminator's part) runs forward only
        trains = x.requires_grad or any(p.requires_grad for p in module.parameters())
        return torch.is_grad_enabled() and trains

    def record(module: Any, args: tuple[Any, ...]) -> None:
        calls.append((module, "forward", args[0].detach(), builds_graph(module, args[0])))

    def recording_feature_map(module: Any) -> Any:
        feature_map = module.feature_map

        def wrapper(x: Any) -> Any:
            calls.append((module, "feature_map", x.detach(), builds_graph(module, x)))
            return feature_map(x)

        return wrapper

    from selfsup.backbones import Backbone

    # the innermost backbones: a composite (CMC's channel_split) runs its trunks one by one
    backbones = [
        m
        for m in method.modules()
        if isinstance(m, Backbone)
        and not any(isinstance(c, Backbone) for c in list(m.modules())[1:])
    ]
    hooks = [m.register_forward_pre_hook(record) for m in backbones]
    for m in backbones:
        m.feature_map = recording_feature_map(m)  # shadows the method on this instance
    device = views[0].device
    fields = {k: v.to(device) for k, v in sample_fields(method, views[0].shape[0]).items()}
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            method.training_loss(views, **fields)
    finally:
        for hook in hooks:
            hook.remove()
        for m in backbones:
            del m.feature_map
    return calls


def bare_passes(calls: list[BackboneCall]) -> list[BackboneCall]:
    """``calls`` merged into one pass per (module, pass, grad, input size): the fewest passes
    over the same rows, the trained passes first. A method that splits a batch (ShuffleBN's
    sub-batches) pays for the split in its step / bare ratio."""
    import torch

    groups: dict[tuple[int, str, bool, tuple[int, ...]], tuple[Any, str, bool, list[Any]]] = {}
    for module, kind, x, grad in calls:
        key = (id(module), kind, grad, tuple(x.shape[1:]))
        groups.setdefault(key, (module, kind, grad, []))[3].append(x)
    merged = [(module, kind, torch.cat(xs), grad) for module, kind, grad, xs in groups.values()]
    return sorted(merged, key=lambda call: not call[3])  # stable: first-seen order within each


class BarePasses:
    """The backbone passes one step of the method needs, on one batch's views at the same
    precision and memory format: forward + backward over every row the backbone trains on,
    forward alone for its momentum copies, one pass per module and view size; no heads, no
    loss. Calling it runs them once and returns the seconds taken. The passes are found on the
    first call (one ``training_loss`` with recording hooks), on the device the method is on
    by then."""

    def __init__(self, method: Any, batch: Any, precision: str, channels_last: bool) -> None:
        self.method, self.batch = method, batch
        self.bf16 = precision == "bf16-mixed"
        self.channels_last = channels_last
        self.passes: list[BackboneCall] | None = None
        self.described = ""

    def prepare(self) -> None:
        import torch

        method = self.method
        device = next(method.parameters()).device
        views = method.views(self.batch.to(device))
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        passes = bare_passes(backbone_calls(method, views, self.bf16))
        if not passes:
            raise ValueError(
                f"{method.method_name} makes no backbone pass (it encodes visible tokens only: "
                "benchmarks/mae_speed.py times it): its step / bare ratio is not measured here"
            )
        if self.channels_last:
            passes = [
                (m, kind, x.contiguous(memory_format=torch.channels_last), g)
                for m, kind, x, g in passes
            ]
        self.passes = passes
        self.described = ", ".join(
            f"{'fwd+bwd' if grad else 'fwd'}{' (feature map)' if kind != 'forward' else ''} "
            f"{x.shape[0]}x{x.shape[-1]}px"
            for _, kind, x, grad in passes
        )

    def __call__(self) -> float:
        import torch

        if self.passes is None:
            self.prepare()
        assert self.passes is not None
        device = self.passes[0][2].device
        was_training = self.method.training
        self.method.train()
        start = time.perf_counter()
        outputs = []
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for module, kind, x, grad in self.passes:
                with torch.set_grad_enabled(grad):
                    out = module(x) if kind == "forward" else module.feature_map(x)
                if grad:
                    outputs.append(out.float().mean())
        sum(outputs).backward()
        self.method.zero_grad(set_to_none=True)
        _sync(device.type)
        seconds = time.perf_counter() - start
        self.method.train(was_training)
        return seconds


def views_time(method: Any, batch: Any, device: str, repeats: int = 5) -> float:
    """Median seconds for ``method.views`` on one uint8 batch (all views), with the
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


def run_lightly(
    case: Case,
    method_name: str,
    warmup: int,
    steps: int,
    device: str,
    bf16: bool,
    workers: int,
    *,
    batch: int = BATCH,
    size: int = SIZE,
) -> dict[str, Any]:
    """One run of lightly's documented loop for the method (per-image PIL transform in
    workers, ``lightly_recipes``), SGD, fp32 unless ``bf16`` adds autocast."""
    import torch
    from torch.utils.data import DataLoader

    pairing = PAIRINGS[method_name]
    backbone = _backbone(case)
    recipe = pairing.lightly(
        backbone,
        pairing.sizes(backbone.feature_dim),
        selfsup_views(method_name, size),
        warmup + steps,
    )
    dataset = PILImages(generated_images((warmup + steps + 1) * batch, size), recipe.transform)
    loader = DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers
    )
    model = recipe.model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    times: list[float] = []
    _reset_cuda_peak(device)
    with WorkerMemory() as memory:
        for step, (views, _) in enumerate(loader):
            views = [v.to(device) for v in views]
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = recipe.loss(views, step)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            _sync(device)
            times.append(time.perf_counter())
            if step + 1 == warmup + steps:
                break
        del loader  # shuts the workers down
    rate, step_s = _rate(times, warmup, steps, batch)
    return {
        "images_per_s": rate,
        "step_s": step_s,
        **_peak_memory(device, memory.peak),
        "loss": float(loss.detach()),
        "head_parameters": head_parameters(model),
        "notes": recipe.notes,
    }


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


def serve(case_name: str, method: str, recipe: str, args: argparse.Namespace) -> None:
    """Worker loop: import once, then one run per "run" line on stdin, a result line each."""
    import torch
    from machine import machine_line

    torch.manual_seed(SEED)
    case = CASES[case_name]
    warmup, steps = args.warmup or case.warmup, args.steps or case.steps
    print(RESULT + json.dumps({"ready": True, "machine": machine_line()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        if recipe == "selfsup":
            result = run_selfsup(
                case, method, warmup, steps, args.device, batch=case.batch, size=case.image_size
            )
        else:
            bf16 = recipe == "lightly-bf16"
            result = run_lightly(
                case, method, warmup, steps, args.device, bf16, args.lightly_workers,
                batch=case.batch, size=case.image_size,
            )  # fmt: skip
        print(RESULT + json.dumps(result), flush=True)


# --- orchestration (parent side) ------------------------------------------------------------------


class Worker:
    """A recipe's worker process; its stderr goes to a log file shown when it fails."""

    def __init__(self, case_name: str, method: str, recipe: str, args: argparse.Namespace):
        self.name = f"{case_name}/{method}/{recipe}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="throughput-", suffix=".log")
        command = [
            sys.executable,
            __file__,
            "--serve",
            case_name,
            method,
            recipe,
            *_passed_options(args),
        ]
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


Results = dict[str, list[dict[str, Any]]]  # recipe -> one result per run


def measure(case_name: str, method: str, recipes: list[str], args: argparse.Namespace):
    """Runs every recipe of one case and method ``args.runs`` times, interleaved; returns the
    results and the machine. Only this method's workers are alive meanwhile."""
    workers = [Worker(case_name, method, recipe, args) for recipe in recipes]
    results: Results = {recipe: [] for recipe in recipes}
    try:
        for run in range(args.runs):
            for recipe, worker in zip(recipes, workers, strict=True):
                result = worker.run()
                results[recipe].append(result)
                print(
                    f"  {case_name} {method} run {run + 1}/{args.runs} {recipe}: "
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


TABLE_HEADER = (
    "| case | method | recipe | images/s, median (min–max) | selfsup / lightly | "
    "peak memory MiB | step / bare backbone passes |\n|---|---|---|---|---|---|---|"
)


def table_rows(case_name: str, method: str, results: Results) -> list[str]:
    """Markdown rows of one case and method: rates, selfsup's ratios to lightly, memory,
    step / bare."""
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
            f"| {label} | {method} | {_recipe_label(recipe, runs[0])} | {_spread(rate[recipe])} "
            f"| {ratios or '–'} | {memory:.0f} | {bare} |"
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


def detail_lines(case_name: str, method: str, results: Results) -> list[str]:
    """Per-run numbers behind the table: paired ratios, selfsup's views and bare passes,
    both sides' head sizes, how lightly's transform was chosen where its example's class
    could not make selfsup's views."""
    lines: list[str] = []
    name = f"{case_name} {method}"
    if "selfsup" in results:
        ours = results["selfsup"]
        views = statistics.median(x["views_s"] for x in ours) * 1000
        bare = statistics.median(x["bare_s"] for x in ours) * 1000
        step = statistics.median(x["step_s"] for x in ours) * 1000
        lines.append(
            f"{name}: selfsup step {step:.0f} ms end to end, bare backbone passes {bare:.0f} ms "
            f"({ours[0]['bare_passes']}), views (all) {views:.1f} ms"
        )
    heads = [f"{r} {runs[0]['head_parameters'] / 1e6:.3f} M" for r, runs in results.items()]
    lines.append(f"{name}: trained head parameters: {', '.join(heads)}")
    for base in ("lightly-fp32", "lightly-bf16"):
        if base not in results:
            continue
        if "selfsup" in results:
            paired = [
                a["images_per_s"] / b["images_per_s"]
                for a, b in zip(results["selfsup"], results[base], strict=True)
            ]
            lines.append(
                f"{name}: selfsup / {base} per interleaved round: "
                + ", ".join(f"{p:.2f}" for p in paired)
            )
        workers = [x.get("workers_mib", 0.0) for x in results[base]]
        if any(workers):
            lines.append(
                f"{name}: {base} peak memory includes {max(workers):.0f} MiB of "
                "DataLoader workers (PSS)"
            )
    notes = next((runs[0]["notes"] for r, runs in results.items() if r != "selfsup"), [])
    lines += [f"{name}: lightly's transform: {note}" for note in notes]
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


def choose_methods(requested: list[str] | None) -> tuple[list[str], list[str]]:
    """(methods to run, notes to print): those of ``requested`` that selfsup registers
    (default / ``all``: every one lightly 1.6 also implements; ``unpaired``: every registered
    one it does not, measured on selfsup's side only) and, where paired, that take the paired
    head widths by these names."""
    from selfsup.methods import METHODS
    from selfsup.registry import keyword_parameters

    requested = list(requested or ["all"])
    names: list[str] = []
    for name in requested:
        if name == "all":
            names += list(PAIRINGS)
        elif name == "unpaired":
            names += [m for m in METHODS.names() if m not in PAIRINGS]
        else:
            names.append(name)
    chosen, notes = [], []
    for name in dict.fromkeys(names):
        if name not in METHODS:
            notes.append(f"{name}: skipped, not a registered selfsup method (yet)")
            continue
        if name not in PAIRINGS:
            chosen.append(name)
            continue
        parameters, _ = keyword_parameters(METHODS.get(name))
        unknown = sorted(set(PAIRINGS[name].sizes(512)) - set(parameters))
        if unknown:
            notes.append(
                f"{name}: skipped, selfsup's {name} takes no {', '.join(unknown)} (the head "
                "widths of PAIRINGS in benchmarks/lightly_recipes.py)"
            )
            continue
        chosen.append(name)
    return chosen, notes


def recipes_for(method: str, recipes: list[str]) -> list[str]:
    """The recipes ``method`` runs: lightly's only where lightly implements it."""
    return recipes if method in PAIRINGS else [r for r in recipes if r == "selfsup"]


def native_bf16(device: str) -> bool:
    import torch

    from selfsup.runtime.precision import cpu_supports_bf16

    return torch.cuda.is_bf16_supported() if device == "cuda" else cpu_supports_bf16()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["simclr"],
        help="registered method names; 'all': every method lightly 1.6 also implements that "
        "selfsup registers; 'unpaired': every registered method lightly lacks (selfsup only)",
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
    parser.add_argument(
        "--serve", nargs=3, metavar=("CASE", "METHOD", "RECIPE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve, args)
        return

    methods, method_notes = choose_methods(args.methods)
    recipes, notes = choose_recipes(args)
    print("\n".join(method_notes + notes))
    started = time.strftime("%Y-%m-%d %H:%M")
    load_at_start = "/".join(f"{x:.1f}" for x in os.getloadavg())
    rows, details, machine = [], [], ""
    for case_name in args.cases:
        for method in methods:
            try:
                results, machine = measure(case_name, method, recipes_for(method, recipes), args)
            except RuntimeError as err:  # one method's failure is its row, not the end
                reason = str(err).strip().splitlines()[-1]
                rows.append(f"| {CASES[case_name].label} | {method} | failed: {reason} |||||")
                print(f"  {case_name} {method} FAILED: {reason}", file=sys.stderr, flush=True)
                continue
            rows += table_rows(case_name, method, results)
            details += detail_lines(case_name, method, results)
            print("\n".join(rows[-len(results) :]), file=sys.stderr, flush=True)
    print(TABLE_HEADER)
    print("\n".join(rows))
    print()
    print("\n".join(details))
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    cases = [CASES[name] for name in args.cases]
    inputs = ", ".join(f"{c.label}: batch {c.batch}, {c.image_size} px RGB" for c in cases)
    print(
        f"\n{', '.join(methods)}; {inputs}; {args.runs} interleaved runs per recipe; {started}; "
        f"load average at start {load_at_start}, at the end {load}; {machine}"
    )


if __name__ == "__main__":
    main()
