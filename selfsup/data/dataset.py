"""``ImageDataset``: images decoded once to a fixed-size uint8 tensor, plus ``load_dataset``.

Every source (built-in wafer maps, an IDX folder, an image folder, a .npy/.npz file) ends up
as one ``ImageDataset`` holding ``images`` uint8 [N, C, S, S]. Loaders only index it;
augmentation happens later on whole batches, on the training device.

Data specs (strings, as ``--data`` takes them):

- ``wafers`` / ``wm811k``: the built-in WM-811K subset (``split`` picks train_1 ... test);
- a wafer-map ``.npz`` from ``selfsup data wafers convert`` (``split``: the file's own split
  names, e.g. Training / Test / unlabeled, "train" = all but Test, default all);
- an IDX folder (MNIST-style ``train-images-idx3-ubyte[.gz]``, ``t10k-...``), with an optional
  split suffix: ``DIR`` or ``DIR:train`` is the train split, ``DIR:test`` the test split;
- an image folder (class subfolders or flat), or a ``.npy`` / ``.npz`` file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

STYLES = ("natural", "wafer")
WAFER_SPECS = ("wafers", "wm811k")
# data handed over as an object (``pretrain(dataset=...)``) is recorded as "memory:<what>"
MEMORY_PREFIX = "memory:"
ARRAY_SUFFIXES = (".npy", ".npz")
IDX_SPLITS = ("train", "test")
SPEC_HELP = (
    "'wafers' (built-in), an IDX folder (DIR or DIR:test), an image folder, or a .npy/.npz file"
)
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
    skipped: files that could not be read (image folders only).
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
        skipped: Sequence[str] | None = None,
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


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"DIR:test"`` -> ``("DIR", "test")``: a data spec and the IDX split its suffix names.

    Only the suffixes ``:train`` and ``:test`` count, and never on a path that exists as written
    (a folder may have a colon in its name). Anything else comes back as ``(spec, None)``.
    """
    base, sep, split = spec.rpartition(":")
    if sep and base and split in IDX_SPLITS and not Path(spec).expanduser().exists():
        return base, split
    return spec, None


def absolute_spec(spec: str) -> str:
    """The spec with its path made absolute (``data/x`` -> ``/home/u/data/x``, ``DIR:test`` ->
    ``/abs/DIR:test``), so a saved run finds its data from any working directory. Built-in
    names and paths that do not exist come back unchanged."""
    if spec.lower() in WAFER_SPECS:
        return spec
    base, split = split_spec(spec)
    path = Path(base).expanduser()
    if not path.exists():
        return spec
    return str(path.resolve()) + (f":{split}" if split else "")


def spec_kind(spec: str) -> str:
    """What a data spec names: "wafers", "idx", "folder" or "arrays" (errors name the spec)."""
    if spec.lower() in WAFER_SPECS:
        return "wafers"
    if spec.startswith(MEMORY_PREFIX):
        return "memory"
    base, split = split_spec(spec)
    path = Path(base).expanduser()
    if path.is_dir():
        from selfsup.data.idx import is_idx_folder

        if is_idx_folder(path):
            return "idx"
        if split is not None:
            raise ValueError(
                f"data '{spec}': ':{split}' picks a split of an IDX folder, but '{base}' holds "
                "no IDX images (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz])"
            )
        return "folder"
    if split is not None:
        problem = "is a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"data '{spec}': the IDX folder '{base}' {problem}")
    if path.suffix.lower() in ARRAY_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"data file '{spec}' does not exist")
        return "wafer_file" if is_wafer_npz(path) else "arrays"
    if not path.exists():
        raise FileNotFoundError(f"data '{spec}' not found: expected {SPEC_HELP}")
    raise ValueError(f"data '{spec}' is a file but not .npy/.npz: expected {SPEC_HELP}")


def is_wafer_npz(path: Path) -> bool:
    """True for an .npz of variable-size wafer maps (``maps_flat``, written by
    ``selfsup data wafers convert`` or packaged), which loads by split, not as ``images``."""
    if path.suffix.lower() != ".npz":
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "maps_flat" in z.files
    except (OSError, ValueError):
        return False  # load_arrays names the problem


def idx_split(spec: str, split: str | None = None) -> tuple[str, str]:
    """(folder, split) of an IDX spec: the ``split`` argument, else the spec's suffix, else
    "train". A suffix and a different ``split`` argument contradict each other: ValueError."""
    folder, named = split_spec(spec)
    if split is not None and named is not None and split != named:
        raise ValueError(f"data '{spec}' names the split '{named}' but split='{split}' was asked")
    chosen = split or named or "train"
    if chosen not in IDX_SPLITS:
        raise ValueError(
            f"IDX folder '{folder}' has the splits {', '.join(IDX_SPLITS)}, not '{chosen}' "
            "(a validation split is carved from train by the evaluation protocol)"
        )
    return folder, chosen


def load_dataset(
    spec: str,
    *,
    image_size: int,
    in_channels: int | None = None,
    split: str | list[str] | None = None,
) -> ImageDataset:
    """Load any data source at ``image_size`` x ``image_size``.

    spec: "wafers"/"wm811k" (built-in WM-811K subset; ``split`` defaults to "train"), an IDX
    folder (``split`` "train" (default) or "test", or a ``DIR:test`` suffix), an image folder
    (``in_channels`` picks the decode mode: 1 grayscale, 3 RGB; default 3), or a .npy/.npz
    file. For wafers, IDX and arrays, an ``in_channels`` that differs from the data's raises
    ValueError naming both (``ImageDataset.with_channels`` converts grey <-> RGB explicitly).
    """
    spec = str(spec)
    kind = spec_kind(spec)
    if kind == "memory":
        raise ValueError(
            f"data '{spec}' was handed over as an object: pass it again as dataset=... "
            "(e.g. selfsup.pretrain(resume=RUN, dataset=...))"
        )
    if split is not None and kind not in ("wafers", "wafer_file", "idx"):
        raise ValueError(
            f"split='{split}' applies to the built-in wafers only (or to an IDX folder: "
            f"{', '.join(IDX_SPLITS)}), not to the {kind} '{spec}'"
        )
    if kind == "wafers":
        from selfsup.data.wafers import load_wafer_subset

        dataset = load_wafer_subset(split or "train", image_size=image_size)
    elif kind == "wafer_file":
        from selfsup.data.wafers import load_wafer_subset

        dataset = load_wafer_subset(split or "all", image_size=image_size, path=spec)
    elif kind == "idx":
        from selfsup.data.idx import load_idx_folder

        if isinstance(split, list):
            raise ValueError(f"IDX folder '{spec}': give one split, not {split}")
        folder, chosen = idx_split(spec, split)
        dataset = load_idx_folder(folder, chosen, image_size=image_size)
    elif kind == "folder":
        from selfsup.data.folders import load_image_folder

        return load_image_folder(spec, image_size, in_channels=in_channels or 3)
    else:
        from selfsup.data.arrays import load_arrays

        dataset = load_arrays(spec, image_size=image_size)
    if in_channels is not None and in_channels != dataset.in_channels:
        raise ValueError(
            f"in_channels={in_channels} but the data '{spec}' has {dataset.in_channels} channel(s)"
        )
    return dataset
