"""Photometric view ops on float [B, C, H, W] batches in [0, 1], with per-sample draws.

Semantics follow torchvision's functional ops (brightness scales, contrast and saturation blend
with grey, hue shifts H in HSV, each result clamped to [0, 1]), but every sample draws its own
factors and its own order of the four colour-jitter operations.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from selfsup.views.sampling import bernoulli, check_probability, check_range, rand, uniform

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # colour-jitter operation ids


def _per_sample(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def to_grayscale(x: Tensor) -> Tensor:
    """Luma Y = 0.299 R + 0.587 G + 0.114 B: [B, 3, H, W] -> [B, 1, H, W].

    1-channel input is returned as is; other channel counts use the channel mean.
    """
    c = x.shape[1]
    if c == 1:
        return x
    if c != 3:
        return x.mean(1, keepdim=True)
    # three fused multiply-adds: a channel reduction (``sum(1)``) is several times slower on CPU
    y = x[:, 0:1] * LUMA[0]
    y.add_(x[:, 1:2], alpha=LUMA[1])
    return y.add_(x[:, 2:3], alpha=LUMA[2])


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    """factor * a + (1 - factor) * b, clamped to [0, 1]; factor: [B]."""
    f = _per_sample(factor)
    return (b + f * (a - b)).clamp_(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """x * factor (per sample), clamped. factor: [B]."""
    return (x * _per_sample(factor)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the image's mean grey level: factor * x + (1 - factor) * mean(Y)."""
    return _blend(x, to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the grey image: factor * x + (1 - factor) * Y (3 channels)."""
    return _blend(x, to_grayscale(x), factor)


def _frac(x: Tensor) -> Tensor:
    """x mod 1 (faster than ``remainder`` on CPU)."""
    return x - torch.floor(x)


def _hue6(x: Tensor, v: Tensor, delta: Tensor) -> Tensor:
    """6H in [-1, 6) of RGB ``x`` [B, 3, H, W] with max ``v`` and max - min ``delta``.

    6H = (G - B) / d if V = R, 2 + (B - R) / d if V = G, else 4 + (R - G) / d (R before G
    before B on ties). Written with float masks: ``torch.where`` on full-size masks is ~20x
    slower on CPU. Grey pixels have every difference 0 and V = R, so 6H = 0.
    """
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    max_r = (v == r).to(x.dtype)
    max_g = (v == g).to(x.dtype) * (1 - max_r)
    max_b = 1 - max_r - max_g
    h6 = max_r * (g - b) + max_g * (b - r) + max_b * (r - g)
    return h6.div_(delta + (delta == 0)).add_(2 * max_g + 4 * max_b)


def _rgb_from_hue6(h6: Tensor, v: Tensor, chroma: Tensor) -> Tensor:
    """RGB of hue 6H (any real), max V and chroma V S, channel n in (R, G, B) = (5, 3, 1):
    value_n = V - chroma clamp(min(t, 4 - t), 0, 1) with t = (n + 6H) mod 6."""
    n = torch.tensor([5.0, 3.0, 1.0], device=h6.device, dtype=h6.dtype).view(1, 3, 1, 1)
    t = n + h6
    t = t.sub_(6 * torch.floor(t / 6))
    return v - chroma * torch.minimum(t, 4 - t).clamp_(0, 1)


def _max_min(x: Tensor) -> tuple[Tensor, Tensor]:
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB [B, 3, H, W] in [0, 1] -> HSV [B, 3, H, W] with H, S, V in [0, 1] (H = 0 where S = 0):
    V = max, S = (max - min) / max, H from ``_hue6`` taken mod 1."""
    v, low = _max_min(x)
    delta = v - low
    h = _frac(_hue6(x, v, delta) / 6)
    return torch.cat([h, delta / (v + (v == 0)), v], 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """HSV [B, 3, H, W] in [0, 1] -> RGB, the inverse of ``rgb_to_hsv``."""
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _rgb_from_hue6(6 * h, v, v * s)


# sRGB primaries (IEC 61966-2-1): linear RGB -> CIE XYZ, and the D65 white point (X, Y, Z)
SRGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
D65_WHITE = (0.95047, 1.0, 1.08883)
# L, a, b over the sRGB gamut (CMC's code scales each to [-1, 1] with them)
LAB_RANGES = ((0.0, 100.0), (-86.183, 98.233), (-107.857, 94.478))


def rgb_to_lab(x: Tensor) -> Tensor:
    """sRGB [B, 3, H, W] in [0, 1] -> CIE L*a*b* [B, 3, H, W] (D65 white; L in [0, 100], a and
    b within ``LAB_RANGES``), in float32, as ``skimage.color.rgb2lab`` (which CMC's code uses):
        linear c = c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4   (sRGB decoding)
        (X, Y, Z) = SRGB_TO_XYZ @ linear, divided by the white D65_WHITE
        f(t) = t ** (1/3) if t > (6/29) ** 3 else t / (3 (6/29) ** 2) + 4/29
        L = 116 f(Y) - 16,   a = 500 (f(X) - f(Y)),   b = 200 (f(Y) - f(Z)).
    White gives (100, 0, 0), pure red about (53.24, 80.09, 67.20). Values outside [0, 1] are
    clamped first (bilinear resizing can overshoot a little).
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"rgb_to_lab needs RGB images [B, 3, H, W], got {tuple(x.shape)}")
    rgb = x.float().clamp(0, 1)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055).pow(2.4))
    # three weighted sums per row, not a matmul: autocast would run a matmul in half precision
    r, g, b = linear[:, 0:1], linear[:, 1:2], linear[:, 2:3]
    xyz = [
        (r * m[0] + g * m[1] + b * m[2]) / white
        for m, white in zip(SRGB_TO_XYZ, D65_WHITE, strict=True)
    ]
    delta = 6 / 29
    fx, fy, fz = (
        torch.where(t > delta**3, t.clamp_min(delta**3).pow(1 / 3), t / (3 * delta**2) + 4 / 29)
        for t in xyz
    )
    return torch.cat([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIE L*a*b* [B, 3, H, W] (D65) -> sRGB [B, 3, H, W] in [0, 1], float32: the inverse of
    ``rgb_to_lab`` (as ``skimage.color.lab2rgb``), for showing colours a model predicted:
        f_y = (L + 16) / 116,  f_x = f_y + a / 500,  f_z = f_y - b / 200
        t = f ** 3 if f > 6/29 else 3 (6/29) ** 2 (f - 4/29)           (per X, Y, Z; x white)
        linear = SRGB_TO_XYZ^-1 @ (X, Y, Z)
        c = 12.92 linear if linear <= 0.0031308 else 1.055 linear ** (1/2.4) - 0.055,
    clamped to [0, 1] (L*a*b* outside the sRGB gamut has no exact RGB).
    """
    if lab.ndim != 4 or lab.shape[1] != 3:
        raise ValueError(f"lab_to_rgb needs L*a*b* images [B, 3, H, W], got {tuple(lab.shape)}")
    lab = lab.float()
    fy = (lab[:, 0:1] + 16) / 116
    delta = 6 / 29
    xyz = [
        torch.where(f > delta, f.pow(3), 3 * delta**2 * (f - 4 / 29)) * white
        for f, white in zip(
            (fy + lab[:, 1:2] / 500, fy, fy - lab[:, 2:3] / 200), D65_WHITE, strict=True
        )
    ]
    inverse = torch.linalg.inv(torch.tensor(SRGB_TO_XYZ, dtype=torch.float64)).tolist()
    linear = [(xyz[0] * m[0] + xyz[1] * m[1] + xyz[2] * m[2]).clamp(0, 1) for m in inverse]
    rgb = [
        torch.where(c <= 0.0031308, 12.92 * c, 1.055 * c.clamp_min(1e-12).pow(1 / 2.4) - 0.055)
        for c in linear
    ]
    return torch.cat(rgb, 1).clamp(0, 1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Shift H in HSV by ``shift`` [B] (fraction of the colour circle, wraps around), keeping
    S and V: the same as hsv_to_rgb(H + shift, S, V) without forming S. RGB only."""
    v, low = _max_min(x)
    delta = v - low
    h6 = _hue6(x, v, delta).add_(6 * _per_sample(shift))
    return _rgb_from_hue6(h6, v, delta).clamp_(0, 1)


IDENTITY_FACTORS = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation factors; hue shift


def apply_color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Apply the four jitter operations to each sample in its own order.

    factors: [B, 4] (brightness, contrast, saturation factors and hue shift; 1, 1, 1, 0 is a
    no-op); order: [B, 4], row i a permutation of (0, 1, 2, 3): operation order[i, s] runs at
    step s. Brightness (f x), contrast (f x + (1 - f) mean Y) and saturation (f x + (1 - f) Y)
    are all y = a x + b mean(Y) + c Y, so each step is one fused pass over the batch with
    per-sample (a, b, c), clamped; hue runs on the samples that chose it at that step
    (RGB only).
    x: [B, C, H, W] float in [0, 1]. Returns the same shape.
    """
    out = x
    for step in range(order.shape[1]):
        op = order[:, step]
        f = factors.gather(1, op[:, None]).squeeze(1)
        blend = (op == CONTRAST) | (op == SATURATION)
        a = torch.where(op == HUE, 1.0, f)
        if bool((blend & (f != 1)).any()):
            grey = to_grayscale(out)
            b = torch.where(op == CONTRAST, 1 - f, 0.0)
            c = torch.where(op == SATURATION, 1 - f, 0.0)
            offset = torch.addcmul(
                _per_sample(b) * grey.mean(dim=(1, 2, 3), keepdim=True), _per_sample(c), grey
            )
            out = torch.addcmul(offset, _per_sample(a), out).clamp_(0, 1)
        else:
            out = (_per_sample(a) * out).clamp_(0, 1)
        idx = ((op == HUE) & (f != 0)).nonzero().squeeze(1)
        if idx.numel() and out.shape[1] == 3:  # hue needs RGB
            out[idx] = adjust_hue(out[idx], f[idx])
    return out


def color_jitter(
    x: Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """torchvision-style ColorJitter with a per-sample draw, applied with probability ``p``.

    Brightness, contrast and saturation factors uniform in [max(0, 1 - s), 1 + s], hue shift
    uniform in [-hue, hue] (hue <= 0.5), the four in a random order per sample (SimCLR,
    Chen et al. 2020, appendix A). Saturation and hue need RGB and are skipped otherwise.
    x: [B, C, H, W] float in [0, 1]. Returns the same shape, clamped to [0, 1].
    """
    check_probability(p)
    for name, s in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if s < 0:
            raise ValueError(f"color_jitter: {name} must be >= 0, got {s}")
    if not 0 <= hue <= 0.5:
        raise ValueError(f"color_jitter: hue must be in [0, 0.5], got {hue}")
    b = x.shape[0]
    rgb = x.shape[1] == 3
    strengths = (brightness, contrast, saturation if rgb else 0.0, hue if rgb else 0.0)
    if not any(strengths) or p == 0:
        return x
    factors = torch.stack(
        [uniform(b, max(0.0, 1 - s), 1 + s, x, generator) for s in strengths[:3]]
        + [uniform(b, -strengths[3], strengths[3], x, generator)],
        1,
    )
    order = rand((b, 4), x, generator).argsort(1)
    if p < 1:
        selected = bernoulli(b, p, x, generator)
        identity = factors.new_tensor(IDENTITY_FACTORS).expand(b, 4)
        factors = torch.where(selected[:, None], factors, identity)
    return apply_color_jitter(x, factors.to(x.dtype), order)


def random_grayscale(x: Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """Replace each sample, with probability ``p``, by its luma repeated over the 3 channels.
    1-channel input is returned unchanged."""
    check_probability(p)
    if x.shape[1] == 1:
        return x
    mask = _per_sample(bernoulli(x.shape[0], p, x, generator))
    return torch.where(mask, to_grayscale(x).expand_as(x), x)


def default_blur_kernel_size(height: int, width: int) -> int:
    """About 10 % of the image side, odd, at least 3 (SimCLR, appendix A: 10 % of 224 -> 23)."""
    return max(3, int(0.1 * min(height, width)) // 2 * 2 + 1)


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """[n] standard deviations (pixels) -> [n, size] normalised 1-D Gaussian kernels."""
    r = torch.arange(size, device=sigma.device, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-(r.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).float() ** 2))
    return k / k.sum(1, keepdim=True)


def blur_with(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur of sample i with sigma[i]; reflect padding; same shape.

    One grouped convolution per axis: the batch is viewed as [1, B*C, H, W] with B*C groups,
    so every sample-channel pair gets its own kernel.
    """
    b, c, h, w = x.shape
    pad = kernel_size // 2
    kernels = gaussian_kernels(sigma, kernel_size).to(x.dtype).repeat_interleave(c, 0)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(
        F.pad(y, (pad, pad, 0, 0), mode="reflect"), kernels.view(b * c, 1, 1, -1), groups=b * c
    )
    y = F.conv2d(
        F.pad(y, (0, 0, pad, pad), mode="reflect"), kernels.view(b * c, 1, -1, 1), groups=b * c
    )
    return y.view(b, c, h, w)


def gaussian_blur(
    x: Tensor,
    sigma: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
    kernel_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Blur each sample, with probability ``p``, by a Gaussian of std uniform in ``sigma``
    (pixels). ``kernel_size`` (odd) defaults to ~10 % of the image side; it is capped so the
    reflect padding fits the image. x: [B, C, H, W] float. Returns the same shape."""
    check_probability(p)
    check_range(sigma, "blur sigma")
    if sigma[0] <= 0:
        raise ValueError(f"blur sigma must be positive, got {sigma}")
    b, _, h, w = x.shape
    if kernel_size is None:
        kernel_size = default_blur_kernel_size(h, w)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"gaussian_blur: kernel_size must be odd and positive, got {kernel_size}")
    kernel_size = min(kernel_size, 2 * (min(h, w) - 1) + 1)
    sigmas = uniform(b, sigma[0], sigma[1], x, generator)
    selected = bernoulli(b, p, x, generator)
    if p >= 1:
        return blur_with(x, sigmas, kernel_size)
    idx = selected.nonzero().squeeze(1)
    out = x.clone()
    if idx.numel():
        out[idx] = blur_with(x[idx], sigmas[idx], kernel_size)
    return out


def solarize(
    x: Tensor,
    p: float = 0.2,
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """In each sample chosen with probability ``p``, invert the pixels >= ``threshold``
    (x -> 1 - x), as BYOL (Grill et al. 2020, Table 6). x: float in [0, 1]."""
    check_probability(p)
    chosen = _per_sample(bernoulli(x.shape[0], p, x, generator)).to(x.dtype)
    # lerp with a 0/1 weight returns either end exactly
    return torch.lerp(x, 1 - x, (x >= threshold).to(x.dtype) * chosen)
