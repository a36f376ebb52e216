"""Distributed helpers: rank/world size and an all-gather that carries gradients.

Why a custom gather: ``torch.distributed.all_gather`` cuts the graph, so a loss computed on the
gathered batch would send no gradient to other ranks' samples. ``gather`` concatenates the tensors
of all ranks along dim 0 and, in backward, sums the incoming gradients of every rank
(all-reduce) and hands each rank the slice of its own samples. With that rule, if every rank's loss
is such that the mean over ranks equals the single-process loss on the concatenated batch, the
gradients that DDP averages equal the single-process gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


# far apart, so the streams of neighbouring seeds and ranks do not overlap in practice
RANK_SEED_STRIDE = 1_000_003


def seed_rank_views(rank: int, seed: int | None = None) -> int:
    """Give process ``rank`` its own torch random stream for the views; returns its seed.

    Every process starts from the run's seed (Lightning seeds them alike, so the models start
    identical), but the views are drawn on the device in the training process, not in loader
    workers: with one seed, every process would crop, flip and mask its images with the same
    random draws. Rank 0 keeps ``seed`` (a single-process run is unchanged); rank r continues
    from ``seed + r * RANK_SEED_STRIDE``. ``seed`` defaults to ``torch.initial_seed()``.
    Randomness that must agree across processes has its own generator (memory-bank draws) or
    is broadcast from rank 0 (Shuffle-BN's permutation)."""
    seed = torch.initial_seed() if seed is None else seed
    if rank:
        seed = (seed + rank * RANK_SEED_STRIDE) % 2**63
        torch.manual_seed(seed)  # every device's default generator
    return seed


class _GatherWithGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.local_size = x.shape[0]
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        ctx.sizes = [int(s.item()) for s in sizes]
        if len(set(ctx.sizes)) != 1:
            raise ValueError(
                f"gather needs the same batch size on every rank, got {ctx.sizes}; "
                "use drop_last=True in the training data loader"
            )
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.local_size
        return grad[start : start + ctx.local_size]


def gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` [B, ...] from all ranks into [world_size * B, ...], keeping gradients.

    A no-op outside torch.distributed or with one process.
    """
    if not is_distributed():
        return x
    return _GatherWithGradient.apply(x)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """All-gather without gradient (queues, memory banks, evaluation features)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (no gradient), e.g. DINO's teacher centre."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / world_size()


def local_rows(global_batch: int) -> slice:
    """Rows of the gathered batch that belong to this rank (equal batch per rank)."""
    local = global_batch // world_size()
    return slice(rank() * local, (rank() + 1) * local)
