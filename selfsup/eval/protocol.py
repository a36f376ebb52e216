"""The evaluation protocol's splits: a validation split carved from train when the data has none.

Model selection (probe weight decay and epoch, fine-tuning epoch) reads validation data only; the
test split is scored once. Data without a validation split (image folders, arrays, IDX folders
such as Fashion-MNIST) gets a seeded, class-stratified ``VAL_FRACTION`` of its training split.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.data.image_dataset import ImageDataset
from selfsup.eval.finetune import stratified_fraction

VAL_FRACTION = 0.1


def validation_indices(
    labels: Tensor, fraction: float = VAL_FRACTION, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """(fit indices, val indices), both sorted: val is a seeded, class-stratified ``fraction``
    of ``labels`` [N] (at least one per class), fit is the rest. Same inputs, same split."""
    val = stratified_fraction(labels, fraction, seed=seed, name="validation fraction")
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[val] = False
    return keep.nonzero()[:, 0], val


def carve_validation(
    train: ImageDataset, fraction: float = VAL_FRACTION, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """(train without val, val) of labelled ``train``, split by ``validation_indices``.

    ValueError when ``train`` has no labels.
    """
    if train.labels is None:
        raise ValueError(f"{train.source} has no labels: cannot carve a stratified validation set")
    fit, val = validation_indices(train.labels, fraction, seed)
    return train.subset(fit), train.subset(val)
