"""Noise-contrastive estimation against a memory bank (Wu et al. 2018), and its softmax form."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss


def _check_logits(positive: Tensor, negatives: Tensor) -> None:
    if positive.ndim != 1 or negatives.ndim != 2 or negatives.shape[0] != positive.shape[0]:
        raise ValueError(
            f"NCE needs positive logits [B] and negative logits [B, K], got "
            f"{tuple(positive.shape)} and {tuple(negatives.shape)}"
        )


@float32_loss
def nce_loss(positive: Tensor, negatives: Tensor, log_z: Tensor | float, num_data: int) -> Tensor:
    """Binary noise-contrastive estimation of the non-parametric instance softmax.

    Wu, Xiong, Yu & Lin, "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination", CVPR 2018, eq. 5-7. With s = v_i.f / t the logit of feature f against
    memory-bank row v_i, P(i|f) = exp(s) / Z, noise P_n = 1/n (uniform over the n training
    samples) and K noise samples per positive:
        h(i, f) = P(i|f) / (P(i|f) + K P_n)
        L = -log h(pos, f) - sum_{k=1..K} log(1 - h(neg_k, f)),   averaged over the batch.
    Computed in log space (log h = log P - logaddexp(log P, log(K/n))), so large logits do not
    overflow. PIRL (Misra & van der Maaten 2020, eq. 3) and CMC (Tian et al. 2020) use the same.

    positive: [B] logits s of the positives; negatives: [B, K] logits of the noise samples;
    log_z: log of the normalising constant Z (the paper estimates it once, from the first batch:
    ``estimate_log_z``); num_data: n. Returns a scalar.
    """
    _check_logits(positive, negatives)
    log_noise = math.log(negatives.shape[1] / num_data)  # log(K P_n)
    log_p_pos = positive - log_z
    log_p_neg = negatives - log_z
    log_h_pos = log_p_pos - torch.logaddexp(log_p_pos, torch.full_like(log_p_pos, log_noise))
    log_one_minus_h_neg = log_noise - torch.logaddexp(
        log_p_neg, torch.full_like(log_p_neg, log_noise)
    )
    return -(log_h_pos + log_one_minus_h_neg.sum(dim=1)).mean()


@torch.no_grad()
def estimate_log_z(positive: Tensor, negatives: Tensor, num_data: int) -> Tensor:
    """Wu et al.'s Monte-Carlo estimate of the normaliser, Z ~ n * mean_j exp(s_j), over the
    positive and negative logits of a batch (the official code fixes it at the first batch).
    Returns log Z as a 0-d float32 tensor."""
    _check_logits(positive, negatives)
    logits = torch.cat([positive[:, None], negatives], dim=1).float()
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(logits.numel()) + math.log(num_data)


@float32_loss
def softmax_nce_loss(positive: Tensor, negatives: Tensor) -> Tensor:
    """The softmax (InfoNCE) form over one positive and K sampled negatives:
        L = -log exp(s_pos) / (exp(s_pos) + sum_k exp(s_neg_k)),   averaged over the batch.
    Tian et al. (CMC, 2020, eq. 2) and later memory-bank methods use it in place of binary NCE.
    positive: [B] logits; negatives: [B, K] logits. Returns a scalar."""
    _check_logits(positive, negatives)
    logits = torch.cat([positive[:, None], negatives], dim=1)
    targets = torch.zeros(len(positive), dtype=torch.long, device=positive.device)
    return F.cross_entropy(logits, targets)
