"""A FIFO queue of negative keys, gathered over ranks: MoCo's (He et al. 2020), reusable by
MoCo v1/v3-style methods and NNCLR's support set."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.runtime.distributed import gather_no_grad


def queue_size_for(paper_size: int, num_images: int, global_batch: int) -> int:
    """A queue length for a training set of ``num_images``: the paper's ``paper_size``, but
    never longer than the training set (rounded down to whole global batches, at least one),
    else it holds older keys of the same images, the anchor's own among its negatives."""
    fitting = max(global_batch, num_images // global_batch * global_batch)
    return min(paper_size, fitting)


class KeyQueue(nn.Module):
    """A FIFO queue of L2-normalised keys [size, dim], kept in buffers (saved in checkpoints).

    ``push(keys)`` gathers the keys of every rank (rank order, no gradient) and overwrites the
    oldest entries, so all ranks hold the same queue. Starts as random unit vectors (MoCo).
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got size={size}, dim={dim}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """Enqueue ``keys`` [B, dim] of this rank (all ranks' keys go in, in rank order)."""
        keys = gather_no_grad(keys.detach()).to(self.keys.dtype)
        size = self.keys.shape[0]
        if keys.shape[0] > size:
            raise ValueError(
                f"queue_size={size} is smaller than the keys pushed per step ({keys.shape[0]} = "
                "global batch size); raise queue_size"
            )
        index = (self.ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.keys.index_copy_(0, index, keys)
        self.ptr.copy_((self.ptr + keys.shape[0]) % size)
