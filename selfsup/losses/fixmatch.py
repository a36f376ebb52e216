"""FixMatch's unlabelled loss: confident pseudo-labels of a weak view teach the strong view."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss

FIXMATCH_THRESHOLD = 0.95  # the paper's tau


@float32_loss
def fixmatch_loss(
    weak_logits: Tensor, strong_logits: Tensor, threshold: float = FIXMATCH_THRESHOLD
) -> tuple[Tensor, Tensor]:
    """(loss, mask): FixMatch's unlabelled term and which samples it used.

    Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
    Confidence", NeurIPS 2020, eq. 4. For the mu*B unlabelled images with q_b =
    softmax(weak_logits_b) (no gradient) and pseudo-label q^_b = argmax q_b:
        l_u = 1/(mu B) sum_b 1[max q_b >= tau] H(q^_b, softmax(strong_logits_b)),
    the mean over ALL unlabelled samples (the masked ones count as 0), tau = 0.95.

    weak_logits, strong_logits: [U, C] of the same U images under a weak and a strong view.
    Returns the scalar loss (gradient through ``strong_logits`` only) and the mask [U] (bool).
    """
    if weak_logits.shape != strong_logits.shape or weak_logits.ndim != 2:
        raise ValueError(
            f"fixmatch_loss needs weak and strong logits of equal shape [U, C], got "
            f"{tuple(weak_logits.shape)} and {tuple(strong_logits.shape)}"
        )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"fixmatch_loss: threshold must be in [0, 1], got {threshold}")
    confidence, pseudo_labels = weak_logits.detach().softmax(dim=1).max(dim=1)
    mask = confidence >= threshold
    per_sample = F.cross_entropy(strong_logits, pseudo_labels, reduction="none")
    return (per_sample * mask.float()).mean(), mask
