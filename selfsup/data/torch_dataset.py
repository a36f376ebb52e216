"""Any ``torch.utils.data.Dataset`` (or list of samples) decoded once to an ``ImageDataset``.

```
data = as_image_dataset(torchvision.datasets.CIFAR10(root), image_size=32)
data.images            # uint8 [N, 3, 32, 32]; data.labels int64 [N]; data.class_names
```

A sample is an image, an ``(image, label, ...)`` tuple or list (items after the label are
ignored), or a mapping with an ``"image"`` (or ``"img"``) and an optional ``"label"``. An image is

- a PIL image: grey modes ("L", "1", "I", "I;16", "F", "LA") give 1 channel, others RGB;
  16-bit grey is scaled to 8 bits as for image folders;
- a tensor [C, H, W] (channels first, as ``ToTensor`` makes it), [H, W, C] or [H, W];
- a numpy array [H, W, C] (channels last, as numpy and PIL have it), [C, H, W] or [H, W];

with C in 1, 3, 4 (an alpha channel is dropped); uint8 (or integers in 0..255) as they are,
floats in [0, 1] to round(x * 255). Labels are ints or integer 0-d tensors; -1 marks an
unlabelled sample, and a dataset whose labels are all -1 (or absent) is unlabelled. Class names
come from ``dataset.classes`` (also through ``Subset``-style ``.dataset`` wrappers).

Every image becomes uint8 [C, S, S] by the rule of the other sources (image folders, IDX,
arrays): the central square is cropped, then resized with antialiased bilinear filtering
(``selfsup.data.arrays.resize_bilinear``). Grey and RGB are converted to ``in_channels``
(default: the first sample's) as ``ImageDataset.with_channels`` does. Random augmentation does
not belong in the dataset's ``transform``: it would be frozen into the decoded images.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from selfsup.data.arrays import CHANNEL_COUNTS, resize_bilinear, resize_nearest, to_uint8
from selfsup.data.folders import MODES, convert_mode
from selfsup.data.image_dataset import ImageDataset
from selfsup.runtime.progress import Progress, resolve_progress

log = logging.getLogger("selfsup.data")

GREY_BANDS = frozenset({"L", "1", "I", "F"})  # first band of PIL's grey modes (incl. "LA")
IMAGE_TYPES = "a PIL image, a tensor or a numpy array"


def as_image_dataset(
    dataset: Any,
    *,
    image_size: int | None,
    in_channels: int | None = None,
    progress: bool | Progress = True,
) -> ImageDataset:
    """Decode every sample of ``dataset`` once to uint8 [N, C, image_size, image_size].

    dataset: a map-style dataset (``len`` and ``[i]``), an iterable dataset, a list of samples,
    or an ``ImageDataset`` (resized and channel-converted when needed). image_size: the side S;
    None keeps the first sample's shorter side. in_channels: 1 (grey) or 3 (RGB); None keeps
    the first sample's. progress: a line on stderr every few seconds on long conversions
    (``Progress.from_env()``; False: quiet). A sample that is not an image raises ValueError
    naming its index and type. See the module docstring for the accepted samples.
    """
    if in_channels is not None and in_channels not in MODES:
        raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels!r}")
    if image_size is not None and (isinstance(image_size, bool) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
    if isinstance(dataset, ImageDataset):
        return _resized_dataset(dataset, image_size, in_channels)
    source = f"torch dataset {type(dataset).__name__}"
    samples, total = _samples(dataset)
    task = _reporter(progress).task(f"decoding {source}", total=total, unit="images")
    images: list[Tensor] = []
    labels: list[int | None] = []
    for index, sample in enumerate(samples):
        image, label = _split_sample(sample, index)
        if not images:
            in_channels = in_channels or _channels_of(image, index)
        x = _to_uint8_chw(image, index, in_channels)
        image_size = image_size or min(x.shape[-2:])
        images.append(_fitted(x, image_size, in_channels, index))
        labels.append(_label_value(label, index))
        task.update(index + 1)
    task.close()
    if not images:
        raise ValueError(f"{source} holds no samples")
    label_array = _label_array(labels)
    return ImageDataset(
        torch.stack(images),
        label_array,
        class_names=_class_names(dataset, label_array),
        style="natural",
        source=source,
    )


def _reporter(progress: bool | Progress) -> Progress:
    if isinstance(progress, Progress):
        return progress
    return resolve_progress(None) if progress else Progress(enabled=False)


def _samples(dataset: Any) -> tuple[Iterator[Any], int]:
    """(the samples in order, how many: 0 when an iterable dataset does not say)."""
    iterable = isinstance(dataset, torch.utils.data.IterableDataset)
    if iterable or not hasattr(dataset, "__getitem__"):
        if not hasattr(dataset, "__iter__"):
            raise ValueError(
                f"dataset: expected a torch Dataset, a list of samples or an iterable, "
                f"got {type(dataset).__name__}"
            )
        try:
            total = len(dataset)
        except TypeError:
            total = 0
        return iter(dataset), total
    try:
        total = len(dataset)
    except TypeError:
        raise ValueError(
            f"dataset {type(dataset).__name__}: a map-style dataset needs __len__ "
            "(or make it a torch.utils.data.IterableDataset)"
        ) from None
    return (dataset[i] for i in range(total)), total


def _split_sample(sample: Any, index: int) -> tuple[Any, Any]:
    """(image, label or None) of one sample."""
    if isinstance(sample, (tuple, list)):
        if not sample:
            raise ValueError(f"sample {index}: an empty {type(sample).__name__}")
        return sample[0], sample[1] if len(sample) > 1 else None
    if isinstance(sample, Mapping):
        key = "image" if "image" in sample else "img"
        if key not in sample:
            raise ValueError(
                f"sample {index}: a mapping needs an 'image' (or 'img') key, "
                f"found {sorted(map(str, sample))}"
            )
        return sample[key], sample.get("label")
    return sample, None


def _channels_of(image: Any, index: int) -> int:
    """1 or 3: the channels the first sample has (which the others are converted to)."""
    if isinstance(image, Image.Image):
        return 1 if image.getbands()[0] in GREY_BANDS else 3
    return int(_chw_array(image, index).shape[0])


def _to_uint8_chw(image: Any, index: int, channels: int) -> Tensor:
    """One image -> uint8 [c, h, w] (c = ``channels`` for PIL images, else its own 1 or 3)."""
    if isinstance(image, Image.Image):
        array = np.array(convert_mode(image, MODES[channels]), dtype=np.uint8)  # writable copy
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array))
    array = _chw_array(image, index)
    where = f"sample {index}"
    if np.issubdtype(array.dtype, np.floating) and array.size:
        low, high = float(array.min()), float(array.max())
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
            raise ValueError(
                f"{where}: float images must lie in [0, 1], found values in [{low:g}, {high:g}] "
                "(a transforms.Normalize? selfsup normalises the views itself: drop it)"
            )
    return torch.from_numpy(np.ascontiguousarray(to_uint8(array, where)))


def _chw_array(image: Any, index: int) -> np.ndarray:
    """A tensor or numpy image as a numpy array [C, H, W], C in 1 or 3 (alpha dropped).

    A 3-D tensor is read channels first when its first axis can be channels; a 3-D numpy
    array channels last when its last axis can be.
    """
    if isinstance(image, Tensor):
        tensor = image.detach().cpu()
        tensor = tensor.float() if tensor.dtype == torch.bfloat16 else tensor  # numpy has none
        array, channels_first = tensor.numpy(), True
    elif isinstance(image, np.ndarray):
        array, channels_first = image, False
    else:
        raise ValueError(
            f"sample {index}: expected {IMAGE_TYPES} (or an (image, label) pair), "
            f"got {type(image).__module__}.{type(image).__qualname__}"
        )
    if array.ndim == 2:
        return array[None]
    first = array.ndim == 3 and array.shape[0] in CHANNEL_COUNTS
    last = array.ndim == 3 and array.shape[-1] in CHANNEL_COUNTS
    if not (first or last):
        raise ValueError(
            f"sample {index}: a {type(image).__name__} image must be [C, H, W], [H, W, C] or "
            f"[H, W] with C in {CHANNEL_COUNTS}, got shape {tuple(array.shape)}"
        )
    if last and not (first and channels_first):
        array = array.transpose(2, 0, 1)
    return array[:3] if array.shape[0] == 4 else array


def _fitted(x: Tensor, image_size: int, channels: int, index: int) -> Tensor:
    """uint8 [c, h, w] -> [channels, S, S]: centre square, bilinear resize, grey <-> RGB."""
    x = resize_bilinear(x[None], image_size)
    if x.shape[1] != channels:
        x = ImageDataset(x, source=f"sample {index}").with_channels(channels).images
    return x[0]


def _label_value(label: Any, index: int) -> int | None:
    """An integer class index (-1: unlabelled), or None for a sample without a label."""
    if label is None:
        return None
    if isinstance(label, Tensor) and label.numel() == 1 and not label.is_floating_point():
        label = label.item()
    if isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)):
        if label >= -1:
            return int(label)
    raise ValueError(
        f"sample {index}: expected an integer class index >= -1 as its label (or none), "
        f"got {type(label).__name__} {label!r:.60}"
    )


def _label_array(labels: Sequence[int | None]) -> np.ndarray | None:
    """int64 [N], or None when no sample is labelled (absent, or all -1)."""
    given = [label is not None for label in labels]
    if not any(given):
        return None
    if not all(given):
        first, missing = given.index(True), given.index(False)
        raise ValueError(
            f"sample {missing} has no label but sample {first} has one: label every sample, or none"
        )
    array = np.asarray(labels, dtype=np.int64)
    return None if (array == -1).all() else array


def _class_names(dataset: Any, labels: np.ndarray | None) -> list[str] | None:
    """``dataset.classes`` (or a wrapped ``dataset.dataset``'s) when they cover the labels."""
    if labels is None:
        return None
    holder, depth = dataset, 0
    while not hasattr(holder, "classes") and hasattr(holder, "dataset") and depth < 8:
        holder, depth = holder.dataset, depth + 1
    classes = getattr(holder, "classes", None)
    if not isinstance(classes, Sequence) or isinstance(classes, str):
        return None
    if int(labels.max()) >= len(classes):
        log.warning(
            "%s: label %d but only %d classes in dataset.classes; class names left out",
            type(dataset).__name__,
            int(labels.max()),
            len(classes),
        )
        return None
    return [str(c) for c in classes]


def _resized_dataset(
    data: ImageDataset, image_size: int | None, in_channels: int | None
) -> ImageDataset:
    """An ImageDataset at ``image_size`` with ``in_channels`` (itself when it already is)."""
    if in_channels is not None:
        data = data.with_channels(in_channels)
    if image_size is None or image_size == data.image_size:
        return data
    if data.style == "wafer":  # codes 0/1/2 must stay codes: nearest neighbour only
        images = torch.from_numpy(resize_nearest(data.images.numpy(), image_size))
    else:
        images = resize_bilinear(data.images, image_size)
    return ImageDataset(
        images,
        data.labels,
        class_names=data.class_names,
        names=data.names,
        style=data.style,
        source=f"{data.source} [resized to {image_size} px]",
    )
