"""``ImageDataset``: images decoded once to a fixed-size uint8 tensor, with optional labels.

Every source (built-in wafer maps, an IDX folder, an image folder, a .npy/.npz file, a torch
Dataset) ends up as one ``ImageDataset`` holding ``images`` uint8 [N, C, S, S]. Loaders only
index it; augmentation happens later on whole batches, on the training device. This module is
the bottom of ``selfsup.data``: the sources import it, it imports none of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.views.ops import STYLES

# Channel conversions a backbone's input may need (e.g. transfer from RGB to grey data).
CHANNEL_CONVERSIONS = {
    (1, 3): "grey -> RGB, the channel repeated",
    (3, 1): "RGB -> grey, luminance 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, as PIL's 'L')",
}
LUMINANCE = (0.299, 0.587, 0.114)
WAFER_AS_GREY = "wafer die codes 0/1/2 -> grey levels 0/128/255"

Index = int | slice | Sequence[int] | np.ndarray | Tensor


class ImageDataset:
    """Fixed-size uint8 images with optional integer labels.

    images: uint8 [N, C, S, S] (contiguous; may be backed by a memory-mapped cache file).
    labels: int64 [N] indices into ``class_names``, or None for unlabelled data.
    names: one path or id per image, or None. style: "natural" or "wafer" (which view
    recipe fits the data). source: a human description ("image folder 'data/x'").
    skipped: files that could not be read (image folders only); a mapping also gives each
    one's reason (kept in ``skip_reasons``).
    """

    def __init__(
        self,
        images: Tensor | np.ndarray,
        labels: Tensor | np.ndarray | Sequence[int] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        style: str = "natural",
        source: str = "arrays",
        skipped: Sequence[str] | Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"{source}: images must be a uint8 tensor [N, C, S, S], "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if images.shape[2] != images.shape[3]:
            raise ValueError(f"{source}: images must be square, got {tuple(images.shape)}")
        if style not in STYLES:
            raise ValueError(f"{source}: style must be one of {STYLES}, got '{style}'")
        n = images.shape[0]
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
            if labels.shape != (n,):
                raise ValueError(
                    f"{source}: labels must have shape ({n},), got {tuple(labels.shape)}"
                )
        if names is not None and len(names) != n:
            raise ValueError(f"{source}: {len(names)} names for {n} images")
        self.images: Tensor = images.contiguous()
        self.labels: Tensor | None = labels
        self.class_names: list[str] | None = list(class_names) if class_names is not None else None
        self.names: list[str] | None = list(names) if names is not None else None
        self.style = style
        self.source = source
        self.skipped: list[str] = list(skipped or [])
        self.skip_reasons: dict[str, str] = dict(skipped) if isinstance(skipped, Mapping) else {}

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: Index) -> Tensor | tuple[Tensor, Tensor]:
        """``images[index]``, or ``(images[index], labels[index])`` when the data is labelled."""
        if isinstance(index, (list, tuple, np.ndarray)):
            index = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        images = self.images[index]
        if self.labels is None:
            return images
        return images, self.labels[index]

    def subset(self, indices: Index) -> ImageDataset:
        """A new dataset holding the images at ``indices`` (copied), same classes and style."""
        if isinstance(indices, slice):
            index = torch.arange(len(self))[indices]
        else:
            index = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
        names = [self.names[i] for i in index.tolist()] if self.names is not None else None
        return ImageDataset(
            self.images.index_select(0, index),
            self.labels.index_select(0, index) if self.labels is not None else None,
            class_names=self.class_names,
            names=names,
            style=self.style,
            source=f"{self.source} (subset of {len(index)})",
        )

    def with_channels(self, in_channels: int) -> ImageDataset:
        """The same images with ``in_channels`` channels (``self`` when they already have them).

        grey -> RGB repeats the channel; RGB -> grey is the luminance of
        ``CHANNEL_CONVERSIONS``. Other pairs raise ValueError naming the data.
        """
        if in_channels == self.in_channels:
            return self
        if (self.in_channels, in_channels) not in CHANNEL_CONVERSIONS:
            raise ValueError(
                f"{self.source}: cannot convert {self.in_channels} channel(s) to {in_channels} "
                "(only grey <-> RGB)"
            )
        if in_channels == 3:
            images = self.images.expand(-1, 3, -1, -1)
        else:
            weights = torch.tensor(LUMINANCE).view(1, 3, 1, 1)
            grey = (self.images.float() * weights).sum(dim=1, keepdim=True)
            images = grey.round().clamp(0, 255).to(torch.uint8)
        return self._converted(images, CHANNEL_CONVERSIONS[(self.in_channels, in_channels)])

    def as_natural(self) -> ImageDataset:
        """Wafer maps as natural grey images (``WAFER_AS_GREY``); natural images unchanged."""
        if self.style == "natural":
            return self
        grey = (self.images.float() * 127.5).round().clamp(0, 255).to(torch.uint8)
        return self._converted(grey, WAFER_AS_GREY, style="natural")

    def _converted(self, images: Tensor, how: str, style: str | None = None) -> ImageDataset:
        """The same samples (labels, names) as other ``images``; ``how`` joins the source."""
        return ImageDataset(
            images,
            self.labels,
            class_names=self.class_names,
            names=self.names,
            style=style or self.style,
            source=f"{self.source} [{how}]",
        )

    @property
    def num_classes(self) -> int | None:
        """len(class_names), else max label + 1, else None (unlabelled)."""
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is not None and len(self.labels):
            return int(self.labels.max()) + 1
        return None

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    def class_counts(self) -> dict[str, int]:
        """Images per class name (class index as a string when there are no names).

        Label -1 marks an unlabeled image (e.g. most of the full WM-811K); those are counted
        under "unlabeled".
        """
        if self.labels is None:
            return {}
        labelled = self.labels[self.labels >= 0]
        counts = torch.bincount(labelled, minlength=self.num_classes or 0).tolist()
        names = self.class_names or [str(i) for i in range(len(counts))]
        out = {name: int(c) for name, c in zip(names, counts, strict=True)}
        unlabeled = int((self.labels < 0).sum())
        if unlabeled:
            out["unlabeled"] = unlabeled
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "style": self.style,
            "size": len(self),
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "class_counts": self.class_counts(),
            "skipped": len(self.skipped),
            "megabytes": round(self.images.numel() / 2**20, 1),
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"ImageDataset({s['source']}: {s['size']} x {s['in_channels']}x{s['image_size']}"
            f"x{s['image_size']} uint8, style={s['style']}, classes={s['num_classes']})"
        )
