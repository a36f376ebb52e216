"""Images stored as numpy arrays: a .npy of images, or a .npz with ``images`` (+ ``labels``,
``class_names``).

Layouts: [N, H, W] (one channel), [N, H, W, C] (channels-last) or [N, C, H, W], C in 1, 3, 4
(a 4th alpha channel is dropped). When both axis 1 and the last axis could be channels (e.g.
[N, 3, 4, 3]) the array is read as channels-last, numpy's and PIL's convention. Values:
uint8 as they are; floats in [0, 1] scaled to round(x * 255); integers already in 0..255 are
taken as they are (lossless). Single-channel data whose values all lie in {0, 1, 2} is taken
as wafer maps (style "wafer", nearest resize); everything else is "natural" (bilinear).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from selfsup.data.image_dataset import STYLES, ImageDataset
from selfsup.data.wafers import nearest_index

log = logging.getLogger("selfsup.data")

CHANNEL_COUNTS = (1, 3, 4)
_RESIZE_CHUNK = 1024  # images per interpolate call, to bound the float32 working memory


def read_array_file(path: Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False), None, None
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z.files:
            raise ValueError(
                f"'{path}' has no 'images' array (it holds: {', '.join(z.files) or 'nothing'})"
            )
        labels = z["labels"] if "labels" in z.files else None
        names = [str(c) for c in z["class_names"]] if "class_names" in z.files else None
        return z["images"], labels, names


def to_channels_first(images: np.ndarray, source: str) -> np.ndarray:
    """[N,H,W] / [N,H,W,C] / [N,C,H,W] -> [N,C,H,W] (C in 1, 3; alpha dropped)."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        if images.shape[-1] in CHANNEL_COUNTS:
            images = images.transpose(0, 3, 1, 2)
        elif images.shape[1] not in CHANNEL_COUNTS:
            raise ValueError(
                f"'{source}': cannot find the channel axis of shape {images.shape} "
                f"(expected [N,H,W,C] or [N,C,H,W] with C in {CHANNEL_COUNTS})"
            )
    else:
        raise ValueError(
            f"'{source}': images must be [N,H,W], [N,H,W,C] or [N,C,H,W], got shape {images.shape}"
        )
    if images.shape[1] == 4:
        log.info("'%s': dropping the alpha channel of RGBA images", source)
        images = images[:, :3]
    return images


def to_uint8(images: np.ndarray, source: str) -> np.ndarray:
    """uint8 unchanged; floats in [0, 1] -> round(x * 255); integers in 0..255 cast."""
    if images.dtype == np.uint8:
        return images
    if images.size == 0:
        raise ValueError(f"'{source}' holds no images (shape {images.shape})")
    if np.issubdtype(images.dtype, np.floating):
        low, high = float(np.min(images)), float(np.max(images))
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
            raise ValueError(
                f"'{source}': float images must lie in [0, 1], found {images.dtype} values in "
                f"[{low:g}, {high:g}] (scale them, or save uint8)"
            )
        return np.rint(images.astype(np.float32) * 255.0).astype(np.uint8)
    if np.issubdtype(images.dtype, np.integer) and images.dtype != np.bool_:
        low, high = int(np.min(images)), int(np.max(images))
        if low >= 0 and high <= 255:
            return images.astype(np.uint8)
        raise ValueError(
            f"'{source}': {images.dtype} images hold values in [{low}, {high}], outside 0..255 "
            "(expected uint8, or float in [0, 1])"
        )
    raise ValueError(
        f"'{source}': unsupported image dtype {images.dtype} (expected uint8, or float in [0, 1])"
    )


def to_label_indices(
    labels: np.ndarray, class_names: list[str] | None, n: int, source: str
) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels as int64, or string labels mapped to sorted class names."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != n:
        raise ValueError(f"'{source}': {len(labels)} labels for {n} images")
    if labels.dtype.kind in "US":
        names = class_names or sorted({str(v) for v in labels})
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(v) for v in labels} - set(index))
        if unknown:
            raise ValueError(f"'{source}': labels {unknown[:5]} are not in class_names")
        return np.array([index[str(v)] for v in labels], dtype=np.int64), names
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"'{source}': labels must be integers or strings, got {labels.dtype}")
    if n and labels.min() < 0:
        raise ValueError(f"'{source}': labels must be >= 0, found {labels.min()}")
    if class_names is not None and n and labels.max() >= len(class_names):
        raise ValueError(
            f"'{source}': label {labels.max()} but only {len(class_names)} class_names"
        )
    return labels.astype(np.int64), class_names


def resize_bilinear(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N,C,H,W] -> [N,C,size,size]: centre square crop, then antialiased bilinear."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[:, :, top : top + side, left : left + side]
    if side == size:
        return images.contiguous()
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].float()
        resized = F.interpolate(
            chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[start : start + _RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """[N,C,H,W] -> [N,C,size,size] by nearest neighbour (stretch, like the wafer subset)."""
    rows = nearest_index(images.shape[2], size)
    cols = nearest_index(images.shape[3], size)
    return np.ascontiguousarray(images[:, :, rows[:, None], cols[None, :]])


def load_arrays(
    path: str | Path, image_size: int | None = None, *, style: str | None = None
) -> ImageDataset:
    """Load a .npy (images) or .npz (``images``, optional ``labels``, ``class_names``) file.

    image_size: resize to image_size x image_size (None: keep the size; non-square images
    are centre-cropped). style: "natural" or "wafer"; None detects it (module docstring).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"array file '{path}' does not exist")
    if path.suffix.lower() not in (".npy", ".npz"):
        raise ValueError(f"'{path}' is not a .npy or .npz file")
    if style is not None and style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got '{style}'")
    raw, labels, class_names = read_array_file(path)
    images = to_uint8(to_channels_first(raw, str(path)), str(path))
    if style is None:
        style = "wafer" if images.shape[1] == 1 and images.size and images.max() <= 2 else "natural"
    size = image_size or min(images.shape[-2:])
    if style == "wafer":
        if images.shape[-2:] != (size, size):
            images = resize_nearest(images, size)
        tensor = torch.from_numpy(np.ascontiguousarray(images))
    else:
        tensor = resize_bilinear(torch.from_numpy(np.ascontiguousarray(images)), size)
    if labels is not None:
        labels, class_names = to_label_indices(labels, class_names, len(tensor), str(path))
    return ImageDataset(
        tensor,
        labels,
        class_names=class_names if labels is not None else None,
        style=style,
        source=f"arrays '{path}'",
    )
