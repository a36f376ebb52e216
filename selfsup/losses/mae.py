"""MAE's reconstruction loss: mean squared error on the masked patches (He et al. 2022)."""

from __future__ import annotations

from torch import Tensor

from selfsup.losses.precision import float32_loss

NORM_PIX_EPS = 1e-6  # MAE's code: (x - mean) / (var + 1e-6) ** 0.5 per patch


@float32_loss
def mae_loss(pred: Tensor, target_patches: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """MAE's loss: the mean squared error of the predicted pixels, on the masked patches only.

    He, Chen, Xie, Li, Dollar & Girshick, "Masked Autoencoders Are Scalable Vision Learners",
    CVPR 2022, sec. 3 ("Reconstruction target"): with m_bi = 1 where patch i of sample b is
    masked and P values per patch,
        L = sum_{b,i} m_bi ||pred_bi - t_bi||^2 / P  /  sum_{b,i} m_bi,
        t_bi = (x_bi - mean(x_bi)) / sqrt(var(x_bi) + 1e-6)   if ``norm_pix`` (default; the
    paper's normalised-pixel target, which gives better representations), else t_bi = x_bi; the
    mean and (unbiased, as in MAE's code) variance are over the patch's P values.
    Shapes: pred, target_patches [B, N, P] (P = p * p * C, ``selfsup.vit.patchify``); mask [B, N]
    (1 masked, 0 visible). Returns a scalar. No gradient reaches ``target_patches``.
    Distributed: MAE masks the same number of patches in every sample, so the local loss is the
    mean of per-sample means and DDP's gradient average is the global batch's: no gather.
    """
    if pred.shape != target_patches.shape or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"mae_loss: pred {tuple(pred.shape)} and target_patches "
            f"{tuple(target_patches.shape)} must be [B, N, P] and mask {tuple(mask.shape)} [B, N]"
        )
    target = target_patches.detach()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + NORM_PIX_EPS).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()
