"""SimCLR's normalised temperature-scaled cross-entropy (NT-Xent)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss
from selfsup.runtime.distributed import gather, local_rows


@float32_loss
def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent: each of the 2N views is an anchor, its pair the positive, the other 2N-2 negatives.

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    ICML 2020, eq. 1:  l(i, j) = -log exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t),
    with sim the cosine similarity, averaged over all 2N anchors (both directions).

    z1, z2: [B, D] projections of the two views of the same B images (row i of z1 pairs with
    row i of z2). Returns a scalar. SimCLR used t = 0.5 on CIFAR-10 and t = 0.1 on ImageNet.

    Distributed: the local rows are anchors against the columns of all ranks (``gather``), so
    the mean of the ranks' losses is the loss of the global batch and DDP's averaged gradient
    equals the single-process gradient.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"nt_xent_loss needs z1 and z2 of equal shape [B, D], got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    columns = torch.cat([gather(z1), gather(z2)])  # [2G, D], G = global batch
    global_batch = columns.shape[0] // 2
    local = z1.shape[0]
    anchors = torch.cat([z1, z2])  # [2B, D]
    logits = anchors @ columns.T / temperature  # [2B, 2G]

    own = torch.arange(local, device=z1.device) + local_rows(global_batch).start
    self_column = torch.cat([own, own + global_batch])
    positive_column = torch.cat([own + global_batch, own])
    rows = torch.arange(2 * local, device=z1.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, self_column] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, positive_column)
