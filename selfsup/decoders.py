"""Decoders: a conv backbone's last feature map back to the image grid (autoencoder methods).

```
decoder = decoder_for(backbone, image_size=32, out_channels=3)   # any registered conv backbone
fmap = backbone.feature_map(x)              # [B, D, h, w]  (Backbone.feature_map)
out = decoder(fmap, (32, 32))               # [B, 3, 32, 32]
```

``ConvDecoder`` is the small decoder Super-Selfish's reconstruction methods use (an
"upsampling ConvNet", Wagner & Mukhopadhyay 2020), sized to the backbone: ``num_blocks``
blocks of

    2x nearest upsampling -> 3x3 conv (no bias) -> BatchNorm -> ReLU,

each doubling the resolution and halving the width (D/2, D/4, ..., at least ``min_width``),
then a 3x3 conv to ``out_channels`` (values or logits, no activation) and an exact bilinear
resize to the asked size when the doublings do not land on it (h 2^n != H: 7 px maps of a
225 px image). Nearest upsampling + conv rather than a transposed conv: the same
resolution gain without the transposed conv's checkerboard artefacts (Odena et al. 2016).
``decoder_for`` counts the doublings from ``h`` to the output size (until h 2^n >= size)
with one probe of the backbone at ``image_size``, so it fits any registered conv backbone
(ResNets, convnet_*, timm conv nets, ``channel_split`` trunks) and a user's module whose
feature map is known (``Backbone.feature_map`` refuses the others with a message).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.backbones import Backbone


class ConvDecoder(nn.Module):
    """Feature map [B, in_channels, h, w] -> [B, out_channels, H, W] (see the module docstring).

    ``num_blocks`` doubling blocks (0: only the final conv and resize), widths halving from
    ``in_channels`` down to ``min_width`` (never below it). ``forward(x, size)`` resizes the
    result to ``size`` = (H, W) exactly (bilinear) when the blocks' output differs from it.
    """

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: int, *, min_width: int = 16
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value < 1:
                raise ValueError(f"decoder: {name} must be >= 1, got {value}")
        if num_blocks < 0:
            raise ValueError(f"decoder: num_blocks must be >= 0, got {num_blocks}")
        if min_width < 1:
            raise ValueError(f"decoder: min_width must be >= 1, got {min_width}")
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(num_blocks):
            out = max(min(width, min_width), width // 2)
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(width, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            width = out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, out_channels, 3, padding=1)
        self.num_blocks = num_blocks
        self.out_channels = out_channels

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"decoder expects a feature map [B, D, h, w], got {tuple(x.shape)}")
        out = self.head(self.blocks(x))
        if size is not None and tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
        return out


def doublings(feature_size: int, output_size: int) -> int:
    """The number of 2x upsamplings that take ``feature_size`` to at least ``output_size``."""
    if feature_size < 1 or output_size < 1:
        raise ValueError(f"sizes must be >= 1, got {feature_size} and {output_size}")
    return max(0, math.ceil(math.log2(output_size / feature_size) - 1e-9))


@torch.no_grad()
def feature_map_size(backbone: Backbone, image_size: int) -> int:
    """The height of ``backbone.feature_map`` on one ``image_size`` square image: one probe
    in eval mode (BatchNorm statistics untouched), on the backbone's device."""
    parameter = next(backbone.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = backbone.training
    backbone.eval()
    try:
        probe = torch.zeros(1, backbone.in_channels, image_size, image_size, device=device)
        return int(backbone.feature_map(probe).shape[-2])
    finally:
        backbone.train(was_training)


def decoder_for(
    backbone: Backbone,
    image_size: int,
    out_channels: int,
    *,
    output_size: int | None = None,
    in_channels: int | None = None,
    min_width: int = 16,
) -> ConvDecoder:
    """A ``ConvDecoder`` from ``backbone``'s last feature map (its ``feature_dim`` channels, or
    ``in_channels``) on ``image_size`` images to ``out_channels`` maps of ``output_size``
    (default ``image_size``): as many doubling blocks as take the feature map's height there."""
    height = feature_map_size(backbone, image_size)
    blocks = doublings(height, output_size or image_size)
    channels = backbone.feature_dim if in_channels is None else in_channels
    return ConvDecoder(channels, out_channels, blocks, min_width=min_width)
