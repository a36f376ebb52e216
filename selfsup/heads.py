"""Projection / prediction heads shared by the methods."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

# Head widths scale with the backbone: every width a user did not set is at most this many times
# the backbone's feature size (16 x 128 = 2048 keeps SimCLR's, SimSiam's and FastSiam's heads on
# every backbone of 128-d and more, so published runs reproduce; Barlow Twins' 8192-8192-8192
# projector, 135 M parameters, becomes 1024-wide on a 64-d backbone).
HEAD_WIDTH_FACTOR = 16
HEAD_WIDTH_MODES = ("scaled", "paper")


def scaled_width(width: int, feature_dim: int, mode: str = "scaled") -> int:
    """A head width for a backbone of ``feature_dim`` features: ``mode`` "paper" keeps the
    paper's ``width``; "scaled" caps it at ``HEAD_WIDTH_FACTOR * feature_dim``."""
    if mode not in HEAD_WIDTH_MODES:
        raise ValueError(f"head_widths must be one of {HEAD_WIDTH_MODES}, got '{mode}'")
    return width if mode == "paper" else min(width, HEAD_WIDTH_FACTOR * feature_dim)


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    *,
    num_layers: int = 2,
    batch_norm: bool = True,
    last_norm: bool = False,
    last_norm_affine: bool = True,
    bias: bool | None = None,
) -> nn.Sequential:
    """An MLP ``in -> hidden -> ... -> out`` with Linear [+ BN] + ReLU between layers.

    ``num_layers`` counts Linear layers. ``last_norm`` adds BatchNorm1d after the last Linear
    (SimSiam/FastSiam projector; Barlow Twins normalises its output in the loss instead).
    Hidden Linear layers carry no bias when followed by BN (the BN shift replaces it).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    for i in range(num_layers):
        last = i == num_layers - 1
        norm_after = batch_norm and (not last or last_norm)
        use_bias = (not norm_after) if bias is None else bias
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=use_bias))
        if norm_after:
            affine = last_norm_affine if last else True
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=affine))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO projection head (Caron et al. 2021): 3-layer MLP with GELU, bottleneck, L2 norm,
    then a weight-normalised linear layer to ``out_dim`` prototypes, W_k = g_k v_k / |v_k|.

    ``norm_last_layer`` (the official code's flag, default True): the norms g_k stay frozen at
    1, so every logit is a cosine in [-1, 1]; False trains them (the DINO README: better and
    less stable; what its authors use for ViT-S/16). x [B, in_dim] -> [B, out_dim]."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        *,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim, hidden_dim, hidden_dim]
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers.append(nn.Linear(a, b))
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.GELU())
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.apply(self._init)
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False)
        )
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad = not norm_last_layer

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(x)
