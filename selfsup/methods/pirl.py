"""PIRL (Misra & van der Maaten 2020)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from selfsup.methods.base import LossOutput, Method, embedding_std, register
from selfsup.methods.jigsaw import puzzle_grid
from selfsup.methods.memory_bank import (
    BankContrast,
    MemoryBank,
    check_bank_arguments,
    require_indices,
)
from selfsup.views.jigsaw import TILE_FRACTION, JigsawPuzzle, jigsaw_puzzle


@register("pirl")
class PIRL(Method):
    """PIRL: the representation of an image and of its jigsaw-shuffled tiles are pulled
    together, contrasted against a memory bank of other images.

    Misra & van der Maaten, "Self-Supervised Learning of Pretext-Invariant Representations",
    CVPR 2020. With v = the backbone, f(v_I) = Linear(v(I)) (the image, 128-d) and
    g(v_{I^t}) = Linear(concat_k Linear(v(tile_k))) (the T tiles of the jigsaw transform I^t,
    each projected, concatenated in shuffled order, projected), m_I the memory-bank row of
    image I and s the cosine similarity over temperature t (eq. 5):
        L = lambda L_NCE(m_I, g(v_{I^t})) + (1 - lambda) L_NCE(m_I, f(v_I)),
    each term the binary NCE of eq. 3-4 against N negatives drawn from the bank
    (``BankContrast``). After the loss the bank rows of the batch (every rank's) move towards
    the image features: m_I <- normalise(0.5 m_I + 0.5 f(v_I)).
    Shapes: views 2 x [B, C, H, W] (I, then the base of I^t); tiles [B, T, C, t, t];
    f, g [B, proj_dim]; bank [num_samples, proj_dim].

    Defaults (paper, sec. 3-4, and the official VISSL config): proj_dim 128, lambda 0.5,
    t = 0.07, N = 32,000 negatives (``selfsup pretrain`` caps them at the training set's size),
    bank momentum 0.5; I^t a 3 x 3 jigsaw of a 0.6-1 crop, its tiles shuffled by a permutation
    drawn uniformly from all 9!; I with SimCLR-like augmentation (``pirl`` recipe).
    NCE: the paper's h(m, v) = exp(s(m, v)/t) / (exp(s(m, v)/t) + N/n) is Wu et al.'s binary
    NCE; the official code (VISSL ``nce_loss_with_memory``, by the first author) divides
    exp(s/t) by a normaliser Z estimated on the first batch, as ``BankContrast(kind="nce")``
    does (one Z for both terms, estimated on the tiles' term, as there). ``nce_kind="softmax"``
    uses the cross-entropy over 1 + N logits instead. ``encoder`` is backbone + the image
    projection f; ``embed`` gives whole-image backbone features.

    Departures: the N negatives are drawn once per step per term and shared by the batch,
    uniformly with replacement (the paper: per sample, excluding I); images under 64 px are
    cut 2 x 2 (``grid=None``); the colour jitter of I^t is drawn per image, not per tile as
    VISSL does; tiles are ``tile_fraction`` 64/75 of a cell (Jigsaw's; VISSL's 64 of 85).
    """

    view_recipe = "pirl"
    batch_fields = ("indices",)

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_dim: int = 128,
        grid: int | None = None,
        tile_fraction: float = TILE_FRACTION,
        num_samples: int | None = None,
        num_negatives: int = 32000,
        temperature: float = 0.07,
        bank_momentum: float = 0.5,
        jigsaw_weight: float = 0.5,
        nce_kind: str = "nce",
        **kwargs: Any,
    ) -> None:
        num_samples = check_bank_arguments(
            "pirl", num_samples, num_negatives=num_negatives, temperature=temperature,
            bank_momentum=bank_momentum, nce_kind=nce_kind,
        )  # fmt: skip
        if not 0.0 <= jigsaw_weight <= 1.0:
            raise ValueError(f"pirl: jigsaw_weight must be in [0, 1], got {jigsaw_weight}")
        super().__init__(backbone, feature_size, **kwargs)
        self.grid = puzzle_grid(self, grid, tile_fraction)
        self.tile_fraction = tile_fraction
        (proj_dim,) = self.head_sizes(proj_dim=proj_dim).values()
        self.num_samples = num_samples
        self.bank_momentum = bank_momentum
        self.jigsaw_weight = jigsaw_weight
        self.projector = nn.Linear(self.feature_dim, proj_dim)  # f
        self.tile_projector = nn.Linear(self.feature_dim, proj_dim)  # g, per tile
        self.jigsaw_projector = nn.Linear(self.grid**2 * proj_dim, proj_dim)  # g, the puzzle
        self.bank = MemoryBank(num_samples, proj_dim)
        self.contrast = BankContrast(num_samples, num_negatives, temperature, kind=nce_kind)

    @classmethod
    def data_defaults(cls, num_images: int, global_batch: int) -> dict[str, Any]:
        negatives = min(cls.paper_default("num_negatives"), num_images)
        return {"num_samples": num_images, "num_negatives": negatives}

    def puzzle(self, images: Tensor) -> JigsawPuzzle:
        """The jigsaw transform of ``images``: their tiles, shuffled uniformly over all T!."""
        return jigsaw_puzzle(images, self.grid, tile_fraction=self.tile_fraction)

    def transformed(self, images: Tensor) -> Tensor:
        """g(v_{I^t}) [B, proj_dim]: the shuffled tiles of ``images`` through one backbone
        pass, each projected, concatenated in shuffled order, projected."""
        tiles = self.puzzle(images).tiles
        features = self.tile_projector(self.backbone(tiles.flatten(0, 1)))
        return self.jigsaw_projector(features.reshape(len(images), -1))

    def training_loss(self, views: list[Tensor], *, indices: Tensor | None = None) -> LossOutput:
        if len(views) != 2:
            raise ValueError(f"pirl needs 2 views (I, then the base of I^t), got {len(views)}")
        indices = require_indices("pirl", indices, self.num_samples, views[0].shape[0])
        g = self.transformed(views[1]).float()
        f = self.projector(self.backbone(views[0])).float()
        indices = indices.to(f.device)
        self.bank.fill_unwritten(indices, f)
        jigsaw_loss, jigsaw_logs = self.contrast(g, self.bank, indices)
        image_loss, image_logs = self.contrast(f, self.bank, indices)
        loss = self.jigsaw_weight * jigsaw_loss + (1.0 - self.jigsaw_weight) * image_loss
        self.bank.update(indices, f, self.bank_momentum)
        logs = {
            "collapse_std": embedding_std(f),
            "bank_written": self.bank.written_fraction(),
            "jigsaw_positive_is_top": jigsaw_logs["positive_is_top"],
            "image_positive_is_top": image_logs["positive_is_top"],
        }
        if "log_z" in image_logs:
            logs["log_z"] = image_logs["log_z"]
        return LossOutput(loss, logs=logs)
