"""Reconstruction losses of the autoencoder methods: squared error on pixel values, cross-entropy
on per-pixel classes (wafer die codes, quantised colours), each over an optional region.

Both are per-sample: sample i's error is averaged over its own region R_i, then the samples are
averaged. A sample's term never depends on another sample, so under DDP each rank's mean over
its B/N samples, averaged by DDP, equals the one-process mean over B: no gather is needed.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss


def _region_mean(errors: Tensor, mask: Tensor | None) -> Tensor:
    """Per-sample mean of ``errors`` [B, ...] over ``mask`` (broadcast to it; None: all),
    then the mean over samples; a sample with an empty region contributes 0."""
    batch = errors.shape[0]
    if mask is None:
        return errors.reshape(batch, -1).mean(dim=1).mean()
    weights = mask.to(errors.dtype).expand_as(errors).reshape(batch, -1)
    total = (errors.reshape(batch, -1) * weights).sum(dim=1)
    return (total / weights.sum(dim=1).clamp_min(1.0)).mean()


def _check_mask(mask: Tensor | None, like: Tensor, name: str) -> None:
    if mask is None:
        return
    if mask.ndim != like.ndim or mask.shape[0] != like.shape[0]:
        raise ValueError(
            f"{name}: mask must be [B, ...] with the target's {like.ndim} dims and batch "
            f"{like.shape[0]}, got {tuple(mask.shape)}"
        )
    try:
        mask.expand_as(like)
    except RuntimeError as err:
        raise ValueError(
            f"{name}: mask {tuple(mask.shape)} does not broadcast to {tuple(like.shape)}"
        ) from err


@float32_loss
def reconstruction_mse(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Squared error of a reconstruction, per sample over its region, averaged over samples:

        L = (1/B) sum_i [ sum_{c,p} m_icp (xhat_icp - x_icp)^2 / sum_{c,p} m_icp ]

    with m the region (``mask``, 1 where the error counts; None: every value, the denoising
    autoencoder's loss on all pixels, Vincent et al. 2008, sec. 2.3, L_2 = ||x - z||^2 up to
    the constant 1/(C H W)) and 0 for a sample whose region is empty. The Context Encoder's
    L_rec = ||M (x - F((1 - M) x))||^2 (Pathak et al. 2016, eq. 1) is this with m = M, the
    erased region, normalised by its size. ``target`` is a constant (no gradient).
    prediction, target: [B, C, H, W]; mask: [B, 1 or C, H, W] (bool or 0/1). Returns a scalar.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"reconstruction_mse: prediction {tuple(prediction.shape)} and target "
            f"{tuple(target.shape)} differ"
        )
    _check_mask(mask, target, "reconstruction_mse")
    return _region_mean((prediction - target.detach()).square(), mask)


@float32_loss
def reconstruction_cross_entropy(
    logits: Tensor, target: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Cross-entropy of per-position classes, per sample over its region, averaged over samples:

        L = (1/B) sum_i [ sum_p m_ip (-log softmax(s_ip)[y_ip]) / sum_p m_ip ]

    for quantised targets: wafer die codes (3 classes), the split-brain autoencoder's colour
    bins (Zhang, Isola & Efros 2017, eq. 3, the classification loss over Q bins). ``mask`` as
    in ``reconstruction_mse`` (None: every position).
    logits: [B, K, ...] (K classes); target: int64 [B, ...] in [0, K); mask: [B, ...] broadcast
    to the target (bool or 0/1). Returns a scalar.
    """
    if logits.ndim != target.ndim + 1 or logits.shape[0] != target.shape[0]:
        raise ValueError(
            f"reconstruction_cross_entropy: logits [B, K, ...] {tuple(logits.shape)} do not fit "
            f"target [B, ...] {tuple(target.shape)}"
        )
    if logits.shape[2:] != target.shape[1:]:
        raise ValueError(
            f"reconstruction_cross_entropy: logits {tuple(logits.shape)} and target "
            f"{tuple(target.shape)} have different positions"
        )
    _check_mask(mask, target, "reconstruction_cross_entropy")
    return _region_mean(F.cross_entropy(logits, target, reduction="none"), mask)
