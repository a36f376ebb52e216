"""SimCLR's normalised temperature-scaled cross-entropy (NT-Xent)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss
from selfsup.runtime.distributed import gather, local_rows


@dataclass
class TwoViewLogits:
    """Cosine logits of the 2B local anchors (z1 rows, then z2 rows) against the 2G columns of
    the global batch (all ranks' z1, then all ranks' z2), and where each anchor's columns are.

    logits [2B, 2G]; ``self_column`` / ``positive_column`` [2B]: the anchor's own column and its
    other view's; ``rows`` [2B] = arange(2B), to index ``logits[rows, column]``.
    """

    logits: Tensor
    self_column: Tensor
    positive_column: Tensor
    rows: Tensor

    def mask(self, *columns: Tensor) -> Tensor:
        """Bool [2B, 2G], True at each anchor's entry of every given column index [2B]."""
        mask = torch.zeros_like(self.logits, dtype=torch.bool)
        for column in columns:
            mask[self.rows, column] = True
        return mask


def two_view_logits(z1: Tensor, z2: Tensor, temperature: float, loss: str) -> TwoViewLogits:
    """The in-batch contrastive setup shared by NT-Xent, DCL and SupCon: z1, z2 [B, D] (row i
    of each is image i) L2-normalised, gathered over ranks with their gradient (``gather``), and
    sim / temperature of every local anchor against every global column. ``loss`` names the
    caller in the shape error."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"{loss} needs z1 and z2 of equal shape [B, D], got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    columns = torch.cat([gather(z1), gather(z2)])  # [2G, D], G = global batch
    global_batch = columns.shape[0] // 2
    local = z1.shape[0]
    logits = torch.cat([z1, z2]) @ columns.T / temperature  # [2B, 2G]
    own = torch.arange(local, device=z1.device) + local_rows(global_batch).start
    return TwoViewLogits(
        logits,
        self_column=torch.cat([own, own + global_batch]),
        positive_column=torch.cat([own + global_batch, own]),
        rows=torch.arange(2 * local, device=z1.device),
    )


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
    pairs = two_view_logits(z1, z2, temperature, "nt_xent_loss")
    logits = pairs.logits.masked_fill(pairs.mask(pairs.self_column), float("-inf"))
    return F.cross_entropy(logits, pairs.positive_column)
