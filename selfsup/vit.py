"""Vision Transformers from torchvision as selfsup trunks, and the token operations of masked
image modelling (MAE).

Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021. ``vision_transformer(...)``
builds a ``VisionTransformerTrunk`` from the parts of torchvision's ``VisionTransformer``
(patch projection, class token, learned position embedding, pre-norm encoder blocks, final
LayerNorm; its classifier head is dropped), so torchvision's ViT weights load into it. On top:

- any ``in_channels``: the patch projection is rebuilt for them (initialised as torchvision does);
- any input size: the position embedding is learned for ``image_size`` and, for another grid of
  patches, interpolated bicubically (as DINO's code does for its 96 px local crops); a side that
  is not a multiple of the patch size loses its last ``H mod p`` rows (the strided projection's
  floor, as in DINO's code);
- ``pooling``: "cls" (the class token) or "mean" (the mean of the patch tokens), both after the
  final LayerNorm, gives the [B, D] features;
- ``feature_map(x)``: the patch tokens as a [B, D, h, w] map;
- ``encode_visible(x, visible_idx)``: the encoder on the visible patches only (MAE).

Sizes (``VIT_SIZES``): tiny 192 wide / 3 heads and small 384 / 6 (Touvron et al., DeiT 2021),
base 768 / 12 (Dosovitskiy et al.), all 12 blocks deep with MLPs 4x as wide. ``selfsup.backbones``
registers them as ``vit_tiny``, ``vit_small``, ``vit_base``; ``depth``, ``width``, ``heads`` and
``mlp_dim`` override a size (tests use depth 1, width 32). The default patch size follows the
image (``default_patch_size``): 4 px at 32 px, 8 at 64, 16 from 128 px up.

torchvision is imported when a ViT is built, not when this module is imported.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

POOLINGS = ("cls", "mean")
VIT_SIZES: dict[str, dict[str, int]] = {
    "vit_tiny": {"width": 192, "depth": 12, "heads": 3},
    "vit_small": {"width": 384, "depth": 12, "heads": 6},
    "vit_base": {"width": 768, "depth": 12, "heads": 12},
}
MAX_DEFAULT_PATCH = 16  # ViT-B/16's patches: the default from 128 px up
MIN_DEFAULT_GRID = 8  # the default patch size leaves at least 8 x 8 patches


def default_patch_size(image_size: int) -> int:
    """The largest patch size p <= min(16, image_size // 8) that divides ``image_size``: a grid
    of at least 8 x 8 patches, ViT's 16 px patches from 128 px up. 16 px -> 2, 28 -> 2, 32 -> 4,
    64 -> 8, 96 -> 12, 224 -> 16."""
    limit = max(1, min(MAX_DEFAULT_PATCH, image_size // MIN_DEFAULT_GRID))
    return next(p for p in range(limit, 0, -1) if image_size % p == 0)


def _init_patch_projection(conv: nn.Conv2d) -> None:
    """torchvision's init of the patch projection: truncated normal, std sqrt(1 / fan_in)."""
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / fan_in))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class VisionTransformerTrunk(nn.Module):
    """torchvision's ViT without its classifier: images [B, C, H, W] -> features [B, D].

    Built by ``vision_transformer`` (which checks the arguments). ``build_kwargs`` holds the
    keywords that rebuild it (``artifacts.export_backbone`` writes them to backbone.json).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int,
        depth: int,
        width: int,
        heads: int,
        mlp_dim: int,
        pooling: str,
    ) -> None:
        from torchvision.models.vision_transformer import VisionTransformer

        super().__init__()
        net = VisionTransformer(image_size, patch_size, depth, heads, width, mlp_dim, num_classes=1)
        if in_channels != 3:
            net.conv_proj = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
            _init_patch_projection(net.conv_proj)
        # torchvision's module names, so its state dicts load (without "heads")
        self.conv_proj = net.conv_proj
        self.class_token = net.class_token
        self.encoder = net.encoder
        self.in_channels = in_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size  # of the learned position embedding
        self.feature_dim = width
        self.pooling = pooling

    @property
    def depth(self) -> int:
        return len(self.encoder.layers)

    def grid(self, x: Tensor) -> tuple[int, int]:
        """(h, w): the grid of patches of images ``x``."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        if h < 1 or w < 1:
            raise ValueError(
                f"images of {x.shape[-2]}x{x.shape[-1]} px are smaller than the ViT's "
                f"{self.patch_size} px patches"
            )
        return h, w

    def position_embedding(self, h: int, w: int) -> Tensor:
        """[1, 1 + h * w, D]: the class token's position, then the patches' in row-major order;
        interpolated bicubically from the learned grid when (h, w) differs from it."""
        pos = self.encoder.pos_embedding
        g = self.grid_size
        if (h, w) == (g, g):
            return pos
        patch_pos = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patch_pos.flatten(2).transpose(1, 2).to(pos.dtype)], dim=1)

    def patch_embeddings(self, x: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """(patch tokens with their positions [B, h * w, D], the class token's position
        [1, 1, D], (h, w)) of images ``x``."""
        h, w = self.grid(x)
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)
        pos = self.position_embedding(h, w)
        return tokens + pos[:, 1:], pos[:, :1], (h, w)

    def _encode(self, patches: Tensor, class_pos: Tensor) -> Tensor:
        """The class token (at ``class_pos``) and ``patches`` [B, n, D] through the encoder
        blocks and the final LayerNorm: [B, 1 + n, D]."""
        cls = (self.class_token + class_pos).expand(patches.shape[0], -1, -1)
        encoder = self.encoder
        return encoder.ln(encoder.layers(encoder.dropout(torch.cat([cls, patches], dim=1))))

    def tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(every output token [B, 1 + h * w, D], class token first; the grid (h, w))."""
        patches, class_pos, grid = self.patch_embeddings(x)
        return self._encode(patches, class_pos), grid

    def pool(self, tokens: Tensor) -> Tensor:
        """Features [B, D] of encoder outputs [B, 1 + n, D]: the class token or the patch mean."""
        return tokens[:, 0] if self.pooling == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.tokens(x)[0])

    def feature_map(self, x: Tensor) -> Tensor:
        """The output patch tokens as a map [B, D, h, w] (the class token left out)."""
        tokens, (h, w) = self.tokens(x)
        return tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def encode_visible(self, x: Tensor, visible_idx: Tensor) -> Tensor:
        """MAE's encoder pass: embed every patch of ``x`` [B, C, H, W] with its position, keep
        the patches ``visible_idx`` [B, n_visible] (row-major indices into the h x w grid, per
        sample), add the class token and run the blocks on those alone: [B, 1 + n_visible, D].
        The cost of the blocks falls with the number of tokens, which is where MAE's speed
        comes from."""
        patches, class_pos, (h, w) = self.patch_embeddings(x)
        if visible_idx.ndim != 2 or visible_idx.shape[0] != x.shape[0]:
            raise ValueError(
                f"visible_idx must be [B, n_visible] for a batch of {x.shape[0]}, "
                f"got shape {tuple(visible_idx.shape)}"
            )
        index = visible_idx.to(patches.device).unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        return self._encode(torch.gather(patches, 1, index), class_pos)


def _positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"vit: {name} must be a positive integer, got {value!r}")
    return value


def vision_transformer(
    in_channels: int = 3,
    image_size: int = 224,
    patch_size: int | None = None,
    pooling: str = "cls",
    depth: int = 12,
    width: int = 192,
    heads: int = 3,
    mlp_dim: int | None = None,
) -> VisionTransformerTrunk:
    """A ViT of ``depth`` blocks, ``width`` (D) wide with ``heads`` attention heads and MLPs
    ``mlp_dim`` wide (default 4 x width), on ``patch_size`` px patches (default
    ``default_patch_size(image_size)``), its position embedding learned for ``image_size``."""
    for name, value in (("in_channels", in_channels), ("image_size", image_size),
                        ("depth", depth), ("width", width), ("heads", heads)):  # fmt: skip
        _positive(name, value)
    mlp_dim = 4 * width if mlp_dim is None else _positive("mlp_dim", mlp_dim)
    patch_size = default_patch_size(image_size) if patch_size is None else patch_size
    if _positive("patch_size", patch_size) > image_size or image_size % patch_size:
        raise ValueError(
            f"vit: patch_size {patch_size} does not tile image_size {image_size} "
            f"(default for it: {default_patch_size(image_size)})"
        )
    if pooling not in POOLINGS:
        raise ValueError(f"vit: pooling must be one of {POOLINGS}, got {pooling!r}")
    if width % heads:
        raise ValueError(f"vit: width {width} is not a multiple of heads {heads}")
    trunk = VisionTransformerTrunk(
        in_channels, image_size, patch_size, depth, width, heads, mlp_dim, pooling
    )
    trunk.build_kwargs = {
        "image_size": image_size,
        "patch_size": patch_size,
        "pooling": pooling,
        "depth": depth,
        "width": width,
        "heads": heads,
        "mlp_dim": mlp_dim,
    }
    return trunk


# name -> builder with that size's defaults (``selfsup.backbones`` registers them)
VIT_BUILDERS = {
    name: functools.partial(vision_transformer, **size) for name, size in VIT_SIZES.items()
}


# --- token operations of masked image modelling -------------------------------------------------


def transformer_blocks(depth: int, width: int, heads: int, mlp_dim: int) -> nn.Sequential:
    """``depth`` of torchvision's pre-norm ViT blocks (the encoder's own kind), e.g. MAE's
    decoder. Tokens [B, n, width] -> [B, n, width]."""
    from torchvision.models.vision_transformer import EncoderBlock

    norm = functools.partial(nn.LayerNorm, eps=1e-6)
    return nn.Sequential(
        *(EncoderBlock(heads, width, mlp_dim, 0.0, 0.0, norm) for _ in range(depth))
    )


class PatchMask(NamedTuple):
    """A random split of every sample's patches (``random_masking``).

    ``visible``: [B, n_visible] indices of the kept patches; ``mask``: [B, N] float, 1 where a
    patch is masked; ``restore``: [B, N], the permutation that puts the visible tokens followed
    by the masked ones back in grid order (``torch.gather(shuffled, 1, restore)``).
    """

    visible: Tensor
    mask: Tensor
    restore: Tensor


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> PatchMask:
    """MAE's per-sample random masking (He et al. 2022, sec. 3), batched: argsort of uniform
    noise gives every sample its own random order of patches; the first
    ``n_visible = int(N * (1 - mask_ratio))`` (at least 1, at most N - 1) stay visible."""
    if not 0 < mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    if num_patches < 2:
        raise ValueError(f"masking needs at least 2 patches, got {num_patches}")
    visible = min(num_patches - 1, max(1, int(num_patches * (1 - mask_ratio))))
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, num_patches, device=noise.device)
    mask[:, :visible] = 0
    return PatchMask(shuffle[:, :visible], torch.gather(mask, 1, restore), restore)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] -> [B, h * w, p * p * C]: patches in row-major order, each flattened as
    (row, column, channel) like MAE's code. H and W must be multiples of ``patch_size``."""
    b, c, height, width = images.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"images of {height}x{width} px do not split into {p} px patches")
    x = images.reshape(b, c, height // p, p, width // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (height // p) * (width // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> Tensor:
    """The inverse of ``patchify``: [B, h * w, p * p * C] -> [B, C, h * p, w * p]."""
    b, (h, w), p = patches.shape[0], grid, patch_size
    x = patches.reshape(b, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, h * p, w * p)


def sincos_position_embedding(h: int, w: int, dim: int) -> Tensor:
    """MAE's fixed 2-D sine-cosine position embedding: [1 + h * w, dim], a zero row for the
    class token, then the grid in row-major order. Half the dimensions encode the row, half the
    column, each as sin and cos of position x 10000^(-k / (dim / 4)), k < dim / 4."""
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine position embedding needs dim % 4 == 0, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )

    def encode(positions: Tensor) -> Tensor:
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    grid = torch.cat([encode(cols), encode(rows)], dim=1)  # MAE: the first half holds x (columns)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), grid]).float()
