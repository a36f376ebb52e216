"""CPC v2 (Henaff et al. 2020): contrastive predictive coding over a grid of image patches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.losses import cpc_infonce_with_accuracy
from selfsup.methods.base import LossOutput, Method, check_positive, embedding_std, register
from selfsup.views.patches import augment_patches, extract_patches, patch_geometry
from selfsup.views.sampling import check_probability

# direction (context side _ predicted side) -> quarter turns (torch.rot90) that make it top-down
DIRECTIONS = {"top_down": 0, "right_left": 1, "bottom_up": 2, "left_right": 3}
ALL_DIRECTIONS = ("top_down", "bottom_up", "left_right", "right_left")


def direction_shift(turns: int, offset: int) -> tuple[int, int]:
    """(rows, columns) from a context position to the patch it predicts ``offset`` steps away,
    for the direction that ``turns`` quarter turns (``torch.rot90``) make top-down."""
    return [(offset, 0), (0, -offset), (-offset, 0), (0, offset)][turns % 4]


class CausalContextNetwork(nn.Module):
    """CPC v2's context network: a PixelCNN-style stack in which the context c_{i,j} sees only
    the encodings of rows <= i (any column within reach), never a row below.

    The paper's pseudo-code (Henaff et al. 2020, appendix): ``num_blocks`` (5) residual
    blocks of 1x1 conv (to ``hidden_dim``, 256) - ReLU - (1, 3) conv along the row - (2, 1)
    conv over the row above and the row itself (one zero row padded on top: the masked,
    causal step) - ReLU - 1x1 conv (back to ``dim``), then a final ReLU.
    z [B, dim, H, W] -> c [B, dim, H, W].
    """

    def __init__(self, dim: int, hidden_dim: int = 256, num_blocks: int = 5) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, hidden_dim, 1),
                nn.ReLU(),
                nn.Conv2d(hidden_dim, hidden_dim, (1, 3), padding=(0, 1)),
                nn.ZeroPad2d((0, 0, 1, 0)),
                nn.Conv2d(hidden_dim, hidden_dim, (2, 1)),
                nn.ReLU(),
                nn.Conv2d(hidden_dim, dim, 1),
            )
            for _ in range(num_blocks)
        )

    def forward(self, z: Tensor) -> Tensor:
        c = z
        for block in self.blocks:
            c = c + block(c)
        return F.relu(c)


@register("cpc")
class CPC(Method):
    """CPC v2: predict the encodings of patches further down the image from the context of the
    patches above them, and pick each out of all the patches of the batch.

    Henaff, Srinivas, De Fauw, Razavi, Doersch, Eslami & van den Oord, "Data-Efficient Image
    Recognition with Contrastive Predictive Coding", ICML 2020 (CPC v1: van den Oord, Li &
    Vinyals 2018). The view is cut into a ``grid_size`` x ``grid_size`` grid of patches that
    overlap by half (``selfsup.views.patches``: 7x7 patches of 8 px every 4 px at 32 px, of
    64 px every 32 px at 256 px), each augmented on its own (horizontal flip with
    ``patch_flip_p``; colour dropping with ``color_drop_p``: two of three channels set to 0;
    wafer maps: flips only). All B G G patches go through the backbone in ONE pass, giving
    z [B, D, G, G]; the context network (``CausalContextNetwork``) gives c_{i,j} from the rows
    <= i; for every offset k the prediction is linear (a 1x1 conv W_k) and scored by a dot
    product with the targets t = ``target_head``(z) (a linear map to ``target_dim``):
        zhat_{i+k,j} = emb_scale * W_k c_{i,j},
        L = -mean log exp(zhat_{i+k,j} . t_{i+k,j}) / sum_l exp(zhat_{i+k,j} . t_l),
    with t_l every patch of every image of the global batch (``losses.cpc_infonce``, eq. 1-2).
    Shapes: view [B, C, S, S]; patches [B G G, C, p, p]; z [B G G, D]; predictions
    [B, len(directions) x K, target_dim, G, G]; targets [B, target_dim, G, G].

    Defaults (the paper's appendix pseudo-code): context 5 blocks of width 256; targets
    and predictions of 64 dims; predictions scaled by ``emb_scale`` 0.1 (no temperature
    otherwise: plain dot products, i.e. a temperature of 10 on them); offsets
    k = ``steps_to_ignore`` + 1 .. ``steps_to_predict`` = 3 only (with half-overlapping patches
    the patch 1 row below shares pixels with the context's own row). ``directions``: the paper
    adds bottom-up and horizontal predictions to CPC v1's top-down ones (Fig. 3's BU and HP
    steps); each is the top-down task on the grid rotated by quarter turns, with one shared
    context network and its own predictors. ``encoder`` is backbone + ``target_head`` (what
    the loss scores). Logs: accuracy (predictions whose own patch scores highest), collapse_std
    (of z).

    Departures: our backbones keep their BatchNorm (the paper swaps it for layer norm, since
    batch statistics over the patches of one image let it share information across the
    receptive-field mask); the grid is CPC v1's 7x7 with half overlap (v2's final model uses
    larger patches), and of v2's patch augmentations only flips and colour dropping are done;
    dropped channels become 0 after normalisation (the dataset mean). The paper evaluates on
    the mean-pooled patch features; ``embed`` gives whole-image backbone features, as every
    method here.
    """

    view_recipe = "cpc"
    encoder_head = "target_head"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        grid_size: int = 7,
        steps_to_ignore: int = 2,
        steps_to_predict: int = 3,
        directions: Sequence[str] = ALL_DIRECTIONS,
        target_dim: int = 64,
        context_hidden_dim: int = 256,
        context_blocks: int = 5,
        emb_scale: float = 0.1,
        patch_flip_p: float = 0.5,
        color_drop_p: float = 1.0,
        **kwargs: Any,
    ) -> None:
        check_positive("cpc", emb_scale=emb_scale, context_blocks=context_blocks)
        check_probability(patch_flip_p, "patch_flip_p")
        check_probability(color_drop_p, "color_drop_p")
        if not 0 <= steps_to_ignore < steps_to_predict < grid_size:
            raise ValueError(
                "cpc: needs 0 <= steps_to_ignore < steps_to_predict < grid_size, got "
                f"steps_to_ignore={steps_to_ignore}, steps_to_predict={steps_to_predict}, "
                f"grid_size={grid_size}"
            )
        directions = tuple(directions)
        unknown = [d for d in directions if d not in DIRECTIONS]
        if not directions or unknown or len(set(directions)) != len(directions):
            raise ValueError(
                f"cpc: directions must be distinct names from {ALL_DIRECTIONS}, got {directions}"
            )
        super().__init__(backbone, feature_size, **kwargs)
        try:
            patch_geometry(self.image_size, grid_size)
        except ValueError as err:
            raise ValueError(f"cpc: {err}") from None
        target_dim, context_hidden_dim = self.head_sizes(
            target_dim=target_dim, context_hidden_dim=context_hidden_dim
        ).values()
        self.grid_size = grid_size
        self.offsets = tuple(range(steps_to_ignore + 1, steps_to_predict + 1))
        self.directions = directions
        self.emb_scale = emb_scale
        self.patch_flip_p = patch_flip_p
        self.color_drop_p = color_drop_p
        self.target_dim = target_dim
        self.target_head = nn.Linear(self.feature_dim, target_dim)
        self.context = CausalContextNetwork(self.feature_dim, context_hidden_dim, context_blocks)
        self.predictors = nn.ModuleList(
            nn.Conv2d(self.feature_dim, len(self.offsets) * target_dim, 1) for _ in directions
        )

    def encode_patches(self, images: Tensor) -> Tensor:
        """Cut, augment and encode the patch grid of ``images`` [B, C, S, S]: the backbone
        features of all B G G patches from one pass, [B G G, D] (image-major, then rows)."""
        patches = extract_patches(images, self.grid_size)
        flat = patches.reshape(-1, *patches.shape[3:])
        flat = augment_patches(
            flat, self.view_style, flip_p=self.patch_flip_p, color_drop_p=self.color_drop_p
        )
        return self.backbone(flat)

    def predict(self, z: Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
        """Predictions [B, S, target_dim, G, G] from the encoded grid z [B, D, G, G], with the
        (rows, columns) shift from each position to its target, for the S = directions x
        offsets predictions (``emb_scale`` applied)."""
        turns = [DIRECTIONS[d] for d in self.directions]
        rotated = torch.cat([torch.rot90(z, t, dims=(-2, -1)) for t in turns])
        contexts = self.context(rotated).chunk(len(turns))  # one pass for every direction
        predictions, shifts = [], []
        for t, context, predictor in zip(turns, contexts, self.predictors, strict=True):
            made = torch.rot90(predictor(context), -t, dims=(-2, -1))
            predictions.append(made.unflatten(1, (len(self.offsets), self.target_dim)))
            shifts += [direction_shift(t, k) for k in self.offsets]
        return torch.cat(predictions, dim=1) * self.emb_scale, shifts

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        if len(views) != 1:
            raise ValueError(f"cpc needs 1 view (it cuts its patch grid from it), got {len(views)}")
        batch, grid = views[0].shape[0], self.grid_size
        z = self.encode_patches(views[0])
        targets = self.target_head(z).unflatten(0, (batch, grid, grid)).permute(0, 3, 1, 2)
        predictions, shifts = self.predict(z.unflatten(0, (batch, grid, grid)).permute(0, 3, 1, 2))
        out = cpc_infonce_with_accuracy(predictions, targets, shifts)
        return LossOutput(
            out.loss, logs={"accuracy": out.accuracy, "collapse_std": embedding_std(z)}
        )
