"""Shuffling BN (He et al. 2020, MoCo sec. 3.3): the key encoder never sees the query's batch.

BatchNorm mixes the samples of a batch: if the query q_i and its positive key k_i are normalised
with statistics of the same images, the network can match them by those statistics instead of by
content (the "cheating" of MoCo sec. 3.3), and it does. MoCo forwards the queries per GPU, but
shuffles the key batch across GPUs before the key encoder and un-shuffles after, so a key's
BatchNorm statistics come from a random sub-batch, mostly of other images.

``shuffled_key_forward`` does this under DDP (gather, one permutation for every rank, forward
this rank's slice, gather, un-shuffle, keep this rank's rows) and, on one device, as split BN:
the batch is forwarded in ``splits`` sub-batches, each with its own statistics, the queries in
order (``split_bn_forward``) and the keys shuffled. One device with ``splits=8`` is then the
paper's 8 GPUs. Both share one code path: with one process the gather is the identity.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from selfsup.runtime.distributed import gather_no_grad, is_distributed, local_rows, world_size

# MoCo's BatchNorm batch: 256 images over 8 GPUs, 32 per GPU (He et al. 2020, sec. 4)
SHUFFLE_BN_GROUP = 32


def bn_groups(local_batch: int, splits: int | None = None) -> int:
    """The number of BatchNorm sub-batches for ``local_batch`` samples on this device.

    ``splits`` None: groups of about ``SHUFFLE_BN_GROUP`` (32) samples, MoCo's per-GPU batch (a
    batch of 256 on one device gives 8 groups, the ``bn_splits=8`` of the single-GPU MoCo ports
    and the paper's 8 GPUs), and at least 2 groups over all devices: with a single group on a
    single device, shuffling changes nothing (BatchNorm statistics ignore the order). A given
    ``splits`` is kept. Either way no group is smaller than 2 samples (BatchNorm needs 2), so a
    small last batch gets fewer groups.
    """
    if splits is not None and (
        not isinstance(splits, int) or isinstance(splits, bool) or splits < 1
    ):
        raise ValueError(f"bn_splits must be a positive integer or None, got {splits!r}")
    if splits is None:
        splits = max(local_batch // SHUFFLE_BN_GROUP, 1)
        if splits * world_size() < 2:
            splits = 2
    return max(1, min(splits, local_batch // 2))


def split_bn_forward(encoder: nn.Module, images: Tensor, splits: int | None = None) -> Tensor:
    """``encoder`` on ``images`` [B, ...] in ``bn_groups(B, splits)`` consecutive sub-batches,
    each normalised with its own BatchNorm statistics; outputs concatenated in order [B, D].
    Keeps gradients (queries). When the groups divide B (the trainer's batches), one forward
    of the whole batch with every BatchNorm computing per-group statistics
    (``grouped_batchnorm``): the same values as a forward per sub-batch, at the speed of one
    big batch. Otherwise one forward per sub-batch (sizes differing by at most one)."""
    groups = bn_groups(images.shape[0], splits)
    if groups == 1:
        return encoder(images)
    if images.shape[0] % groups == 0:
        with grouped_batchnorm(encoder, groups):
            return encoder(images)
    return torch.cat([encoder(part) for part in images.tensor_split(groups)])


def grouped_batch_norm(bn: _BatchNorm, x: Tensor, groups: int) -> Tensor:
    """BatchNorm ``bn`` in training mode on x [N, C, ...] as ``groups`` consecutive sub-batches
    of N / groups samples, each normalised with its own mean and variance.

    The encoder's other layers run once on the whole batch; only the normalisation runs per
    sub-batch: ``F.batch_norm`` on each slice of the batch dimension (a view in any memory
    format, channels_last included), joined by one ``torch.cat``. The running statistics move
    by the mean of the groups' updates, as MoCo's single-GPU SplitBatchNorm (one update with
    the groups' mean statistics): each group updates its own copy, the copies are averaged.
    """
    momentum = bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    tracked = bn.running_mean is not None and bn.running_var is not None
    means = [bn.running_mean.clone() for _ in range(groups)] if tracked else [None] * groups
    variances = [bn.running_var.clone() for _ in range(groups)] if tracked else [None] * groups
    parts = [
        F.batch_norm(part, mean, var, bn.weight, bn.bias, training=True,
                     momentum=0.0 if momentum is None else momentum, eps=bn.eps)
        for part, mean, var in zip(x.split(x.shape[0] // groups), means, variances, strict=True)
    ]  # fmt: skip
    if tracked:
        with torch.no_grad():
            bn.running_mean.copy_(torch.stack(means).mean(0))
            bn.running_var.copy_(torch.stack(variances).mean(0))
    return torch.cat(parts)


@contextlib.contextmanager
def grouped_batchnorm(encoder: nn.Module, groups: int) -> Iterator[None]:
    """Inside, every BatchNorm of ``encoder`` that is in training mode normalises its input as
    ``groups`` consecutive sub-batches (``grouped_batch_norm``); eval-mode ones are unchanged."""
    patched = [
        m for m in encoder.modules() if isinstance(m, _BatchNorm) and m.training and groups > 1
    ]
    for bn in patched:
        bn.forward = functools.partial(grouped_batch_norm, bn, groups=groups)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for bn in patched:
            del bn.forward  # back to the class's forward


def shared_permutation(
    size: int, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """A random permutation of ``size`` rows, drawn on rank 0 (from ``generator`` or the global
    CPU generator) and broadcast, so that every rank holds the same one."""
    order = torch.randperm(size, generator=generator).to(device)
    if is_distributed():
        dist.broadcast(order, src=0)
    return order


@torch.no_grad()
def shuffled_key_forward(
    encoder: nn.Module,
    images: Tensor,
    splits: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """MoCo's key forward with shuffled BatchNorm (He et al. 2020, sec. 3.3), no gradient.

    The batches of all ranks are gathered [G, ...] (G = world size x B; every rank must hold
    the same B, as the trainer's ``drop_last`` gives), permuted by ``shared_permutation``; each
    rank forwards its slice of the shuffled batch with ``split_bn_forward`` (``splits``
    sub-batches), the outputs are gathered, put back in the original order, and each rank keeps
    the rows of its own images. One process: shuffle, forward in sub-batches, un-shuffle.
    With BatchNorm in eval mode or no BatchNorm at all, the result is ``encoder(images)``.

    images: [B, C, H, W] (any [B, ...] the encoder takes). Returns keys [B, D] in the order of
    ``images``. ``generator``: the permutation's random source (rank 0's is used).
    """
    gathered = gather_no_grad(images)
    total = gathered.shape[0]
    order = shared_permutation(total, images.device, generator)
    mine = local_rows(total)
    shuffled_keys = gather_no_grad(split_bn_forward(encoder, gathered[order[mine]], splits))
    keys = torch.empty_like(shuffled_keys)
    keys[order] = shuffled_keys  # row order[j] of the batch was forwarded as shuffled row j
    return keys[mine]
