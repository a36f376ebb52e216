"""DINO's self-distillation cross-entropy and the teacher centre update."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss
from selfsup.runtime.distributed import all_reduce_mean


@float32_loss
def dino_loss(
    student_out: list[Tensor],
    teacher_out: list[Tensor],
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """Cross-entropy between the centred, sharpened teacher and the student, over view pairs.

    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
    eq. 2-3 and Algorithm 1:
        P_t = softmax((g_t(x_i) - c) / tau_t)   (no gradient),
        log P_s = log_softmax(g_s(x_j) / tau_s),
        L = mean over pairs (i, j), i a global view seen by the teacher, j any student view,
            i != j, of  mean_b  -sum_k P_t[b, k] log P_s[b, k].

    student_out: V tensors [B, K] (the global views first, in the teacher's order, then the
    local views); teacher_out: G tensors [B, K] for the G global views; center: [K].
    Returns a scalar. Distributed: a per-sample mean, so no gather is needed.
    """
    if len(teacher_out) > len(student_out):
        raise ValueError(
            f"dino_loss got {len(teacher_out)} teacher views but only {len(student_out)} "
            "student views; the student must see every global view"
        )
    center = center.detach().to(teacher_out[0].dtype)
    teacher_probs = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher_out]
    student_logp = [F.log_softmax(s / student_temp, dim=-1) for s in student_out]
    total = student_logp[0].new_zeros(())
    pairs = 0
    for i, p_t in enumerate(teacher_probs):
        for j, logp_s in enumerate(student_logp):
            if i == j:
                continue
            total = total + (-(p_t * logp_s).sum(dim=-1)).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("dino_loss needs at least two views (no teacher/student pair with i != j)")
    return total / pairs


@torch.no_grad()
def update_center(
    center: Tensor, teacher_out: list[Tensor], center_momentum: float = 0.9
) -> Tensor:
    """DINO's teacher centre: c <- m c + (1 - m) mean of the teacher outputs over the global batch.

    Caron et al. 2021, eq. 4 (m = ``center_momentum`` = 0.9). center: [K]; teacher_out: G
    tensors [B, K]. Returns the new centre (float32 or wider, no gradient); every rank gets the
    same value because the batch mean is averaged over ranks (equal batch per rank).
    """
    outputs = torch.cat([t.detach() for t in teacher_out])
    outputs = outputs.float() if outputs.dtype in (torch.float16, torch.bfloat16) else outputs
    batch_center = all_reduce_mean(outputs.mean(dim=0))
    return center * center_momentum + batch_center.to(center.dtype) * (1 - center_momentum)
