"""MAE (He et al. 2022)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from selfsup.losses import mae_loss
from selfsup.losses.mae import NORM_PIX_EPS
from selfsup.methods.base import LossOutput, Method, embedding_std, register
from selfsup.vit import (
    VIT_BUILDERS,
    PatchMask,
    VisionTransformerTrunk,
    patchify,
    random_masking,
    sincos_position_embedding,
    transformer_blocks,
    unpatchify,
)

DECODER_HEAD_DIM = 32  # MAE's decoder: 512 wide with 16 heads
MASKED_GREY = 0.5  # masked patches in reconstruction_examples' "masked" pictures


def decoder_sizes(
    width: int,
    depth: int,
    decoder_dim: int | None = None,
    decoder_depth: int | None = None,
    decoder_heads: int | None = None,
) -> tuple[int, int, int]:
    """(decoder_dim, decoder_depth, decoder_heads) for an encoder ``width`` wide and ``depth``
    deep: each one given, or by MAE's ViT-L ratio (24 blocks of 1024 -> 8 blocks of 512 with
    16 heads): half the width (rounded down to a multiple of 4, for the sine-cosine positions),
    a third of the depth (at least 1), 32 dimensions per head (at least 1 head, a divisor of
    the decoder's width)."""
    dim = max(4, width // 2 // 4 * 4) if decoder_dim is None else decoder_dim
    blocks = max(1, depth // 3) if decoder_depth is None else decoder_depth
    heads = decoder_heads
    if heads is None:
        heads = max(1, dim // DECODER_HEAD_DIM)
        while dim % heads:
            heads -= 1
    return dim, blocks, heads


@register("mae")
class MAE(Method):
    """MAE: mask most patches at random, encode the visible ones, reconstruct the masked pixels.

    He, Chen, Xie, Li, Dollar & Girshick, "Masked Autoencoders Are Scalable Vision Learners",
    CVPR 2022, sec. 3. Each sample masks its own random ``mask_ratio`` (0.75) of the N patches
    (argsort of noise, ``vit.random_masking``); the ViT encoder runs on the visible patches and
    the class token only (``encode_visible``: a quarter of the tokens, where MAE's speed comes
    from); the decoder embeds them linearly, puts one shared learned mask token at every masked
    position, adds fixed 2-D sine-cosine positions and runs ``decoder_depth`` transformer blocks;
    a linear layer predicts each patch's p * p * C values. With t = the per-patch normalised
    pixels (``norm_pix_loss``, default; ``mae_loss``):
        L = mean over masked patches (b, i) of ||pred_bi - t_bi||^2 / (p * p * C).
    Shapes: views 1 x [B, C, H, W] (H, W multiples of the patch size p); N = H W / p^2;
    encoder output [B, 1 + N_visible, D]; decoder tokens [B, 1 + N, decoder_dim]; predictions
    [B, N, p * p * C].

    Defaults (paper): mask ratio 0.75, normalised-pixel targets, views of a random resized crop
    of 0.2-1 and a flip (recipe "mae"), AdamW at lr 1.5e-4 per 256 images, betas (0.9, 0.95),
    weight decay 0.05 (``optimizer_defaults``). The decoder follows the encoder in the paper's
    ViT-L ratio (``decoder_sizes``: half as wide, a third as deep, 32 dimensions per head, MLPs
    4x wide): ViT-L gets the paper's 8 x 512; None sets a size by that rule.
    Departures: MAE's code gives ViT-B and ViT-H the same 8 x 512 decoder (here ViT-B gets
    4 x 384); the trainer's warm-up and schedule are its own (MAE: 40 warm-up epochs of 800);
    the encoder's position embedding is torchvision's learned one (MAE: fixed sine-cosine) and
    its initialisation torchvision's.

    Needs a ViT backbone (a registered ``vit_*`` or a module ``build_backbone`` made of one):
    the encoder must run on a subset of patch tokens, so a conv net or your own module is
    refused. ``encoder`` is the ViT alone (the decoder serves pre-training only);
    ``reconstruction_examples(images)`` gives pictures for a run report.
    """

    view_recipe = "mae"
    optimizer_defaults = {
        "optimizer": "adamw",
        "lr": 1.5e-4,
        "weight_decay": 0.05,
        "adam_betas": [0.9, 0.95],
    }

    def __init__(
        self,
        backbone: str | nn.Module = "vit_base",
        feature_size: int | None = None,
        *,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        decoder_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_heads: int | None = None,
        **kwargs: Any,
    ) -> None:
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mae: mask_ratio must be in (0, 1), got {mask_ratio}")
        super().__init__(backbone, feature_size, **kwargs)
        trunk = self.backbone.trunk
        if not isinstance(trunk, VisionTransformerTrunk):
            raise ValueError(
                f"mae needs a Vision Transformer backbone ({', '.join(VIT_BUILDERS)}): its "
                f"encoder runs on the visible patch tokens only; got '{self.backbone.name}' "
                "(selfsup pretrain: --backbone vit_small)"
            )
        sizes = decoder_sizes(
            self.feature_dim, trunk.depth, decoder_dim, decoder_depth, decoder_heads
        )
        # recorded as built, so hyperparameters() (and a checkpoint) say what the rule chose
        decoder_dim, decoder_depth, decoder_heads = self.head_sizes(
            **dict(zip(("decoder_dim", "decoder_depth", "decoder_heads"), sizes, strict=True))
        ).values()
        if decoder_dim % 4 or decoder_dim % decoder_heads:
            raise ValueError(
                f"mae: decoder_dim {decoder_dim} must be a multiple of 4 (sine-cosine "
                f"positions) and of decoder_heads {decoder_heads}"
            )
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = trunk.patch_size
        self.decoder_embed = nn.Linear(self.feature_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)  # MAE's code
        self.decoder = transformer_blocks(
            decoder_depth, decoder_dim, decoder_heads, 4 * decoder_dim
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        channels = self.backbone.in_channels
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * channels)
        self._decoder_positions: dict[tuple[int, int, str], Tensor] = {}  # not state: fixed

    @property
    def encoder(self) -> nn.Sequential:
        """The ViT alone, images -> [B, D]: the decoder serves pre-training only (sec. 3)."""
        return nn.Sequential(self.backbone)

    def decoder_position(self, h: int, w: int, like: Tensor) -> Tensor:
        """The decoder's fixed sine-cosine positions [1, 1 + h * w, decoder_dim] for an h x w
        grid (computed once per grid and device)."""
        key = (h, w, str(like.device))
        if key not in self._decoder_positions:
            dim = self.mask_token.shape[-1]
            table = sincos_position_embedding(h, w, dim).to(like.device)
            self._decoder_positions[key] = table.unsqueeze(0)
        return self._decoder_positions[key].to(like.dtype)

    def _grid(self, x: Tensor) -> tuple[int, int]:
        p = self.patch_size
        if x.ndim != 4 or x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"mae: images must be [B, C, H, W] with H and W multiples of the patch size "
                f"{p} px, got shape {tuple(x.shape)}"
            )
        return x.shape[-2] // p, x.shape[-1] // p

    def reconstruct(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, PatchMask, Tensor]:
        """(predicted patches [B, N, p * p * C], the random ``PatchMask``, the encoder's output
        tokens [B, 1 + N_visible, D]) of model inputs ``x`` [B, C, H, W]."""
        h, w = self._grid(x)
        mask = random_masking(
            x.shape[0], h * w, self.mask_ratio, device=x.device, generator=generator
        )
        latent = self.backbone.trunk.encode_visible(x, mask.visible)
        y = self.decoder_embed(latent)
        masked = self.mask_token.to(y.dtype).expand(y.shape[0], h * w + 1 - y.shape[1], -1)
        shuffled = torch.cat([y[:, 1:], masked], dim=1)
        index = mask.restore.unsqueeze(-1).expand(-1, -1, y.shape[-1])
        tokens = torch.cat([y[:, :1], torch.gather(shuffled, 1, index)], dim=1)
        tokens = self.decoder_norm(self.decoder(tokens + self.decoder_position(h, w, y)))
        return self.decoder_pred(tokens[:, 1:]), mask, latent

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 1:
            raise ValueError(f"mae needs 1 view, got {len(views)}")
        x = views[0]
        pred, mask, latent = self.reconstruct(x)
        loss = mae_loss(pred, patchify(x, self.patch_size), mask.mask, self.norm_pix_loss)
        features = self.backbone.trunk.pool(latent)
        return LossOutput(loss, logs={"collapse_std": embedding_std(features)})

    # -- pictures for the run report -----------------------------------------------------------
    def _to_unit(self, x: Tensor) -> Tensor:
        """Model inputs back to displayable [0, 1] pixels of 1 or 3 channels: natural views
        un-normalised, wafer views as they are (code / 2); other channel counts averaged into
        grey (wafer maps' 2 fail_mask channels: code / 2 again)."""
        mean, std = getattr(self.views, "mean", None), getattr(self.views, "std", None)
        if mean is not None and std is not None:
            x = x * x.new_tensor(std).view(1, -1, 1, 1) + x.new_tensor(mean).view(1, -1, 1, 1)
        if x.shape[1] not in (1, 3):
            x = x.mean(dim=1, keepdim=True)
        return x.clamp(0, 1)

    @torch.no_grad()
    def reconstruction_examples(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Pictures of what MAE learns (the paper's Fig. 2), each uint8 [B, C, S, S] with S the
        ``image_size``: ``inputs`` (the raw ``images`` preprocessed as for ``embed``),
        ``masked`` (their masked patches grey), ``reconstructions`` (the visible patches of the
        input with the predicted ones in the masked places; normalised-pixel predictions are put
        back in pixel units with each true patch's mean and variance, as MAE's demo does).
        Natural images are un-normalised; wafer maps show code / 2 (0, 128, 255), 1 channel
        (``_to_unit``). Eval mode, a
        new random mask per sample (``generator``, on the images' device, fixes it)."""
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            preprocess = getattr(self.views, "preprocess", None)
            x = images.to(device)
            x = preprocess(x) if preprocess is not None else x.float()
            pred, mask, _ = self.reconstruct(x, generator)
            pred = pred.float()
            target = patchify(x, self.patch_size)
            if self.norm_pix_loss:
                variance = target.var(dim=-1, keepdim=True)
                pred = pred * (variance + NORM_PIX_EPS).sqrt() + target.mean(dim=-1, keepdim=True)
            masked = mask.mask.unsqueeze(-1)
            grid, channels = self._grid(x), x.shape[1]
            pasted = unpatchify(
                target * (1 - masked) + pred * masked, self.patch_size, grid, channels
            )
            patch_area = self.patch_size**2
            pixel_mask = unpatchify(masked.expand(-1, -1, patch_area), self.patch_size, grid, 1)
            inputs = self._to_unit(x)
            pictures = {
                "inputs": inputs,
                "masked": torch.where(pixel_mask.bool(), MASKED_GREY, inputs),
                "reconstructions": self._to_unit(pasted),
            }
            return {k: (v * 255).round().to(torch.uint8).cpu() for k, v in pictures.items()}
        finally:
            self.train(was_training)
