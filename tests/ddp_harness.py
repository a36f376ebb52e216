"""Run a function on 2 gloo ranks (CPU) and compare with one process: the DDP check every loss uses.

```
def grads(data, rows):            # module-level (spawn pickles it by name)
    a = data["a"][rows].clone().requires_grad_()
    my_loss(a, ...).backward()
    return {"a": a.grad}

results = run_on_ranks(grads, data)           # [rank0 result, rank1 result]
assert_ddp_gradients(grads, data, results)    # rank grads / world == 1-process grads, per row
```

``fn(data, rows)`` runs inside an initialised process group on rank r with ``rows`` = the
slice of the global batch that rank holds, and outside any group with ``rows = slice(None)``
for the reference. Return a dict of tensors (or tuples of tensors); ``None`` marks a
stop-gradient input.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def rank_rows(rank: int, batch: int, world: int = WORLD) -> slice:
    local = batch // world
    return slice(rank * local, (rank + 1) * local)


def _worker(rank: int, fn: Callable, data: Any, batch: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    try:
        result = fn(data, rank_rows(rank, batch))
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable, data: dict[str, Any], batch: int | None = None) -> list[Any]:
    """``fn(data, rows)`` on each of 2 gloo ranks; returns their results in rank order.
    ``batch``: the global batch size the rows split (default: len of the first tensor)."""
    if batch is None:
        batch = next(v for v in data.values() if isinstance(v, torch.Tensor)).shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(
            _worker,
            args=(fn, data, batch, str(Path(tmp) / "init"), tmp),
            nprocs=WORLD,
            join=True,
        )
        return [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(WORLD)]


def assert_ddp_gradients(
    fn: Callable,
    data: dict[str, Any],
    results: list[Any],
    *,
    keys: list[str] | None = None,
    batch: int | None = None,
    atol: float = 1e-5,
) -> None:
    """For every gradient ``fn`` returns: rank r's gradient / world == the 1-process gradient
    of the full batch on rank r's rows, and that gradient is not ~0 (so the test means
    something). ``keys``: which entries of the result are per-row gradients (default: all)."""
    reference = fn(data, slice(None))
    if batch is None:
        batch = next(v for v in data.values() if isinstance(v, torch.Tensor)).shape[0]
    for name in keys or list(reference):
        full = reference[name]
        fulls = full if isinstance(full, (tuple, list)) else (full,)
        for rank, result in enumerate(results):
            got = result[name]
            gots = got if isinstance(got, (tuple, list)) else (got,)
            rows = rank_rows(rank, batch)
            for grad, expected in zip(gots, fulls, strict=True):
                if expected is None:  # a stop-gradient input
                    assert grad is None, (name, rank)
                    continue
                assert torch.allclose(grad / WORLD, expected[rows], atol=atol, rtol=0), (
                    name,
                    rank,
                    (grad / WORLD - expected[rows]).abs().max(),
                )
                assert expected[rows].abs().max() > 1e-4, f"{name}: gradient too small to test"
