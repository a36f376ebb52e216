"""What a reconstruction method learned, as a picture: its inputs, their corrupted versions and
its reconstructions side by side (``plots/reconstructions.png``), drawn when training ends.

A method shows reconstructions by having ``reconstruction_examples(images)``: raw uint8 images
[N, C, H, W] in, a dict of displayable uint8 batches [N, C', H', W'] out (C' 1 or 3), one row
of the picture per entry, in order (e.g. inputs, masked inputs, reconstructions).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.eval.embedding_map import new_figure, save_figure

RECONSTRUCTIONS_PLOT = "reconstructions.png"
MAX_EXAMPLES = 8


def reconstructs(method: Any) -> bool:
    """Whether ``method`` can show reconstructions (has ``reconstruction_examples``)."""
    return callable(getattr(method, "reconstruction_examples", None))


def plot_reconstructions(examples: Mapping[str, Tensor], path: Path) -> Path:
    """One row per entry of ``examples`` (its name as the row title), one column per image.
    Each entry: uint8 [N, C, H, W] with C 1 (grey) or 3 (RGB); all entries the same N."""
    if not examples:
        raise ValueError("plot_reconstructions: no examples to draw")
    counts = {name: len(batch) for name, batch in examples.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"plot_reconstructions: entries hold different image counts: {counts}")
    columns = next(iter(counts.values()))
    fig = new_figure(1.3 * columns + 1.2, 1.4 * len(examples), constrained=False)
    axes = np.atleast_2d(fig.subplots(len(examples), columns, squeeze=False))
    for row, (name, batch) in enumerate(examples.items()):
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] not in (1, 3):
            raise ValueError(
                f"plot_reconstructions: '{name}' must be uint8 [N, 1 or 3, H, W], got "
                f"{batch.dtype} {tuple(batch.shape)}"
            )
        pictures = batch.detach().cpu().permute(0, 2, 3, 1).numpy()
        for col, ax in enumerate(axes[row]):
            picture = pictures[col]
            if picture.shape[-1] == 1:
                ax.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(name, fontsize="small")
    fig.subplots_adjust(left=0.08, right=0.99, top=0.97, bottom=0.02, wspace=0.05, hspace=0.1)
    return save_figure(fig, path)


@torch.no_grad()
def save_reconstructions(method: Any, images: Tensor, path: Path) -> Path | None:
    """Draw ``method``'s reconstructions of the first ``MAX_EXAMPLES`` of ``images`` (raw uint8)
    to ``path``, in eval mode; None for a method that reconstructs nothing."""
    if not reconstructs(method) or len(images) == 0:
        return None
    device = next(method.parameters()).device
    was_training = method.training
    method.eval()
    try:
        examples = method.reconstruction_examples(images[:MAX_EXAMPLES].to(device))
    finally:
        method.train(was_training)
    return plot_reconstructions(examples, path)
