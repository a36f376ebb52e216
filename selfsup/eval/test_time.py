"""Test-time views (test-time augmentation): a classifier's logits averaged over symmetric
copies of each image, for data whose labels do not change under those symmetries.

    logits(x) = 1/|G| sum_{g in G} f(g x)

``G`` is one of ``TEST_TIME_VIEWS``: "none" (the image alone), "hflip" (the image and its
mirror image: natural photos) or "dihedral" (the 8 turns by 90 degrees and their mirror images:
wafer maps, whose defect classes do not depend on the notch's orientation, and other top-down
images such as micrographs or aerial tiles). Averaging logits (not probabilities) keeps the
output a logit, so temperature scaling calibrates it as any other. The views act on the last
two dimensions of a batch [N, C, H, W]; turns need square images. ``f`` runs in eval mode
(BatchNorm with running statistics), so one pass per view gives the same result as one pass
over the 8N-image batch, with 1/8 of the memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

TEST_TIME_VIEWS = ("none", "hflip", "dihedral")


def check_test_time_views(kind: str, name: str = "test_time_views") -> str:
    """``kind`` when it names a set of test-time views; else a ValueError naming ``name``."""
    if kind not in TEST_TIME_VIEWS:
        raise ValueError(f"{name} must be one of {', '.join(TEST_TIME_VIEWS)}, got {kind!r}")
    return kind


def symmetric_views(images: Tensor, kind: str) -> list[Tensor]:
    """The views of ``kind`` of a batch ``images`` [N, C, H, W]: [x] ("none"), [x, mirror(x)]
    ("hflip"), or x turned by 0, 90, 180 and 270 degrees, each followed by its mirror image
    ("dihedral"; ValueError when H != W)."""
    check_test_time_views(kind)
    if kind == "none":
        return [images]
    if kind == "hflip":
        return [images, images.flip(-1)]
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(
            f"test_time_views='dihedral' turns images by 90 degrees and needs square images, "
            f"got {images.shape[-2]}x{images.shape[-1]}"
        )
    views = []
    for quarter_turns in range(4):
        turned = torch.rot90(images, quarter_turns, dims=(-2, -1))
        views += [turned, turned.flip(-1)]
    return views


def averaged_logits(model: Callable[[Tensor], Tensor], images: Tensor, kind: str) -> Tensor:
    """``model``'s logits [N, K] (float32) averaged over the ``kind`` views of ``images``
    [N, C, H, W] (one pass per view; ``model`` should be in eval mode)."""
    views = symmetric_views(images, kind)
    total = model(views[0]).float()
    for view in views[1:]:
        total = total + model(view).float()
    return total / len(views)
