"""Photometric augmentations on float [B, C, H, W] batches in [0, 1], per-sample random.

Semantics follow torchvision's (blend-based brightness/contrast/saturation, HSV hue shift), but
every sample draws its own factors and its own order of the four jitter operations.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.views.random import bernoulli, rand, uniform

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def to_grayscale(x: Tensor) -> Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma; 1-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _view(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    return (factor * a + (1 - factor) * b).clamp(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _view(factor)).clamp(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, _view(factor))


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, to_grayscale(x).expand_as(x), _view(factor))


def rgb_to_hsv(x: Tensor) -> Tensor:
    """[B, 3, H, W] RGB in [0, 1] -> HSV with H in [0, 1)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), 0 * maxc)
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack(
        [
            torch.stack([v, t, p], 1),
            torch.stack([q, v, p], 1),
            torch.stack([p, v, t], 1),
            torch.stack([p, q, v], 1),
            torch.stack([t, p, v], 1),
            torch.stack([v, p, q], 1),
        ],
        0,
    )  # [6, B, 3, H, W]
    index = i.unsqueeze(0).unsqueeze(2).expand(1, -1, 3, -1, -1)
    return choices.gather(0, index).squeeze(0)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    hsv = rgb_to_hsv(x)
    h = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], 1)).clamp(0, 1)


def color_jitter(
    x: Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Colour jitter applied to each sample with probability ``p``, in a random order per sample.

    Factors: brightness and contrast and saturation uniform in [1 - s, 1 + s] (s = strength),
    hue shift uniform in [-hue, hue] (fraction of the colour circle). Saturation and hue need
    3 channels and are skipped for 1-channel images.
    """
    b = x.shape[0]
    apply = bernoulli(b, p, x, generator)
    rgb = x.shape[1] == 3
    factors = {
        0: uniform(b, max(0.0, 1 - brightness), 1 + brightness, x, generator)
        if brightness
        else None,
        1: uniform(b, max(0.0, 1 - contrast), 1 + contrast, x, generator) if contrast else None,
        2: uniform(b, max(0.0, 1 - saturation), 1 + saturation, x, generator)
        if saturation and rgb
        else None,
        3: uniform(b, -hue, hue, x, generator) if hue and rgb else None,
    }
    ops = {0: adjust_brightness, 1: adjust_contrast, 2: adjust_saturation, 3: adjust_hue}
    order = rand((b, 4), x, generator).argsort(1)  # a random permutation of the 4 ops per sample
    out = x.clone()
    for step in range(4):
        for op, factor in factors.items():
            if factor is None:
                continue
            idx = ((order[:, step] == op) & apply).nonzero().squeeze(1)
            if idx.numel():
                out[idx] = ops[op](out[idx], factor[idx])
    return out


def random_grayscale(x: Tensor, p: float = 0.2, generator=None) -> Tensor:
    """Replace a sample by its luma (repeated over 3 channels) with probability ``p``."""
    if x.shape[1] == 1:
        return x
    mask = bernoulli(x.shape[0], p, x, generator).view(-1, 1, 1, 1)
    return torch.where(mask, to_grayscale(x).expand_as(x), x)


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """[n] sigmas -> [n, size] normalised 1-D Gaussian kernels."""
    r = torch.arange(size, device=sigma.device, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-(r.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    return k / k.sum(1, keepdim=True)


def gaussian_blur(
    x: Tensor,
    sigma: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
    kernel_size: int | None = None,
    generator=None,
) -> Tensor:
    """Blur each sample with probability ``p`` with a Gaussian of sigma uniform in ``sigma``.

    Separable; one grouped convolution per axis over the selected samples; reflect padding.
    Kernel size defaults to ~10% of the image side (odd, >= 3), as SimCLR.
    """
    b, c, h, w = x.shape
    if kernel_size is None:
        kernel_size = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    sigmas = uniform(b, sigma[0], sigma[1], x, generator)
    idx = bernoulli(b, p, x, generator).nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    n = idx.numel()
    kernels = gaussian_kernels(sigmas[idx], kernel_size).repeat_interleave(c, 0)  # [n*C, k]
    pad = kernel_size // 2
    sel = x[idx].reshape(1, n * c, h, w).float()
    sel = F.conv2d(
        F.pad(sel, (pad, pad, 0, 0), mode="reflect"), kernels.view(n * c, 1, 1, -1), groups=n * c
    )
    sel = F.conv2d(
        F.pad(sel, (0, 0, pad, pad), mode="reflect"), kernels.view(n * c, 1, -1, 1), groups=n * c
    )
    out = x.clone()
    out[idx] = sel.view(n, c, h, w).to(x.dtype)
    return out


def solarize(x: Tensor, p: float = 0.2, threshold: float = 0.5, generator=None) -> Tensor:
    """Invert pixels >= ``threshold`` (x -> 1 - x) in each sample with probability ``p``."""
    mask = bernoulli(x.shape[0], p, x, generator).view(-1, 1, 1, 1)
    return torch.where(mask & (x >= threshold), 1 - x, x)


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
