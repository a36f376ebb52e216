"""Exemplar-CNN (Dosovitskiy et al. 2014): every training image is its own surrogate class."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.methods.base import LossOutput, Method, check_positive, embedding_std, register
from selfsup.methods.memory_bank import require_indices, require_num_samples

FLOAT_BYTES = 4
DEFAULT_MAX_CLASSES = 200_000


def classifier_megabytes(num_classes: int, width: int) -> float:
    """Weights of a bias-free Linear(width, num_classes) in float32, in MB (10**6 bytes)."""
    return num_classes * width * FLOAT_BYTES / 1e6


@register("exemplar")
class Exemplar(Method):
    """Exemplar-CNN: a parametric classifier over the training images, each image a class seen
    through strong augmentation.

    Dosovitskiy, Springenberg, Riedmiller & Brox, "Discriminative Unsupervised Feature
    Learning with Convolutional Neural Networks", NIPS 2014, eq. 1: with T_k x_i the k-th
    random transformation of image i and W the classifier over the N = ``num_samples`` images,
        L = -(1/(B V)) sum_i sum_k log softmax(W g(f(T_k x_i)))_i,
    i.e. cross-entropy with the sample's dataset position as its class. Shapes: views
    V x [B, C, H, W]; features [V B, feature_dim]; g(f) [V B, proj_dim]; logits [V B, N].

    Design: the paper's network ends with a fully connected layer (128 to 1024 units, with
    dropout) before the N-way softmax; here ``projector`` is Linear(feature_dim, proj_dim) +
    ReLU (proj_dim 128 by default, no dropout; ``proj_dim=None`` classifies the backbone's
    features directly) and ``classifier`` a bias-free Linear(proj_dim, N) (each class is seen
    equally often, a bias learns nothing). ``encoder`` is backbone + projector: an N-way output
    is no embedding. The small projection is what keeps N classes affordable:
    the classifier holds N x D float32 weights, 512 MB per million images at D = 128 (8 GB at
    D = 2048, a ResNet-50's features classified directly); its gradient is dense (rows of
    images not in the batch get gradient through the softmax denominator) and as large, SGD
    momentum adds one more copy, Adam two; a step's logits are V B x N floats (410 MB at
    V = 2, B = 256, N = 200,000), and under DDP every step all-reduces the N x D gradient.
    So more than ``max_classes`` (200,000) images are refused with the memory they would take;
    raise it, or train on a subset, as the paper did (at most 32,000 surrogate classes, from
    STL-10's unlabelled images): ``selfsup pretrain --set train_max_images=N`` draws N of them.

    Surrogate classes and budget: each class is seen once per epoch, so a short run over many
    images leaves every classifier row near its start (on the 37,348 wafer maps, 3.2 epochs in
    10 minutes: loss ln N and training accuracy 0 throughout; docs/benchmarks.md). The paper
    draws N of 50 to 32,000 seed patches and many transformed samples of each;
    ``train_max_images`` makes the same trade of classes for samples per class.

    Views (departure): the paper draws translation, scaling, rotation (+-20 degrees), contrast
    and colour transformations of 32x32 patches; here SimCLR's views (random resized crop =
    translation and scaling, flip, colour jitter = contrast and colour, grayscale; rotation via
    ``views={"rotation_degrees": 20}``) on the whole image, ``num_views`` (2) of each image per
    step, all classified (two of the paper's K samples of a surrogate class in each batch; 1
    halves the backbone's work). Wafer maps: the wafer recipe's turns, flips and die noise.
    """

    view_recipe = "fastsiam"  # SimCLR's pipeline, ``num_views`` views
    batch_fields = ("indices",)

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_dim: int | None = 128,
        num_views: int = 2,
        num_samples: int | None = None,
        max_classes: int = DEFAULT_MAX_CLASSES,
        **kwargs: Any,
    ) -> None:
        num_samples = require_num_samples("exemplar", num_samples)
        check_positive("exemplar", num_views=num_views, max_classes=max_classes)
        super().__init__(backbone, feature_size, **kwargs)
        if proj_dim is None:
            width = self.feature_dim
            self.projector: nn.Module = nn.Identity()
        else:
            (width,) = self.head_sizes(proj_dim=proj_dim).values()
            self.projector = nn.Sequential(nn.Linear(self.feature_dim, width), nn.ReLU())
        if num_samples > max_classes:
            size = classifier_megabytes(num_samples, width)
            raise ValueError(
                f"exemplar: num_samples={num_samples:,} surrogate classes exceed "
                f"max_classes={max_classes:,}: the classifier would hold {num_samples:,} x "
                f"{width} float32 weights = {size:,.0f} MB, its gradient as much again and "
                f"the optimizer's state 1-2 times more; pass max_classes={num_samples} to allow "
                "it, or train on a subset of the images (selfsup pretrain --set "
                "train_max_images=N)"
            )
        self.num_samples = num_samples
        self.num_views = num_views
        self.classifier = nn.Linear(width, num_samples, bias=False)

    @classmethod
    def view_overrides(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        return {"num_views": arguments["num_views"]}

    @classmethod
    def data_defaults(cls, num_images: int, global_batch: int) -> dict[str, Any]:
        return {"num_samples": num_images}

    def training_loss(self, views: list[Tensor], *, indices: Tensor | None = None) -> LossOutput:
        if len(views) != self.num_views:
            raise ValueError(
                f"exemplar needs num_views={self.num_views} views of each image, got {len(views)}"
            )
        indices = require_indices("exemplar", indices, self.num_samples, views[0].shape[0])
        z = self.projector(torch.cat(self.backbone_forward(views)))
        logits = self.classifier(z).float()
        targets = indices.to(logits.device).repeat(len(views))
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.detach().argmax(dim=1) == targets).float().mean()
        return LossOutput(loss, logs={"collapse_std": embedding_std(z), "accuracy": accuracy})
