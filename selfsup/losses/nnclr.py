"""NNCLR: nearest-neighbour lookup in a support set and the contrastive loss on the neighbours."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss
from selfsup.runtime.distributed import gather, gather_no_grad, local_rows


@torch.no_grad()
def nearest_neighbours(z: Tensor, support: Tensor) -> Tensor:
    """NN(z, Q) = argmax_{q in Q} cos(z, q): for every row of ``z``, the closest support row.

    Dwibedi et al. 2021, eq. 3 (argmin of the L2 distance between L2-normalised vectors, i.e.
    the largest cosine). z: [B, D]; support: [K, D]. Returns the chosen support rows,
    L2-normalised, [B, D] (float32, no gradient). Ties go to the lowest support index.
    """
    if z.ndim != 2 or support.ndim != 2 or z.shape[1] != support.shape[1] or len(support) == 0:
        raise ValueError(
            f"nearest_neighbours needs z [B, D] and a non-empty support [K, D], got "
            f"{tuple(z.shape)} and {tuple(support.shape)}"
        )
    support = support.float()
    # divide by the K row norms rather than normalising a copy of the (large) support set
    cosine = F.normalize(z.float(), dim=-1) @ support.T / support.norm(dim=1).clamp_min(1e-12)
    return F.normalize(support[cosine.argmax(dim=1)], dim=-1)


@float32_loss
def nnclr_loss(neighbours: Tensor, predictions: Tensor, temperature: float = 0.1) -> Tensor:
    """NNCLR's contrastive loss: the neighbour of view a's projection is the positive of the
    prediction of view b of the same image; the batch's other images are the negatives.

    Dwibedi, Aytar, Tompson, Sermanet & Zisserman, "With a Little Help from My Friends:
    Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021. With n_i =
    NN(z_i, Q) (no gradient, ``nearest_neighbours``), p_k the predictions and cosine dot products:
        eq. 2:           L_i = -log exp(n_i.p_i/t) / sum_k exp(n_i.p_k/t)
        symmetric term:  L'_i = -log exp(n_i.p_i/t) / sum_k exp(n_k.p_i/t)
    (sec. 3.2, "we make the loss symmetric"; the paper adds L'_i, this returns the mean
    1/2 (mean_i L_i + mean_i L'_i) so the value is on eq. 2's scale).

    neighbours: [B, D] support-set rows for view a; predictions: [B, D] predictor outputs of
    view b (gradient flows). Returns a scalar. The paper used t = 0.1.

    Distributed: the sums over k run over the global batch (predictions gathered with their
    gradient, neighbours without), each rank averages its local anchors, so the mean of the
    ranks' losses is the global-batch loss and DDP's averaged gradient is the single-process one.
    """
    if neighbours.shape != predictions.shape or neighbours.ndim != 2:
        raise ValueError(
            f"nnclr_loss needs neighbours and predictions of equal shape [B, D], got "
            f"{tuple(neighbours.shape)} and {tuple(predictions.shape)}"
        )
    n = F.normalize(neighbours.detach().to(predictions.dtype), dim=-1)
    p = F.normalize(predictions, dim=-1)
    all_p, all_n = gather(p), gather_no_grad(n)  # [G, D]
    positive = torch.arange(len(p), device=p.device) + local_rows(len(all_p)).start
    eq2 = F.cross_entropy(n @ all_p.T / temperature, positive)
    symmetric = F.cross_entropy(p @ all_n.T / temperature, positive)
    return (eq2 + symmetric) / 2
