"""The built-in WM-811K "clean subset": 62,248 labelled wafer maps (see builtin/README.md).

Maps keep the original WM-811K codes 0 = off-wafer, 1 = pass die, 2 = fail die in a uint8
tensor [N, 1, S, S]; the wafer view recipe does the float scaling. Maps vary in size
(H 22..212), so each is resized with nearest-neighbour only: any interpolation would invent
values between the codes.
"""

from __future__ import annotations

import functools
import logging
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from selfsup.data.image_dataset import ImageDataset

logger = logging.getLogger(__name__)

PACKAGED_FILE = "wm811k_clean_subset.npz"

# short name -> the name stored in the file's `split` array
SPLITS = {
    "train_1": "train_1_split",
    "train_10": "train_10_split",
    "train_20": "train_20_split",
    "train_29": "train_29_split",
    "val": "val_data",
    "test": "test_data",
}
GROUPS = {
    "train": ("train_1", "train_10", "train_20", "train_29"),
    "all": tuple(SPLITS),
}
# cap on one gather's index array (elements), so 64 px maps do not need gigabytes of indices
_GATHER_CHUNK = 1 << 23


def nearest_index(size_in: int, size_out: int) -> np.ndarray:
    """Source indices of nearest-neighbour resampling: src = floor((dst + 0.5) * in / out).

    Integer form floor((2 dst + 1) in / (2 out)) so no float rounding can move a pixel.
    """
    dst = np.arange(size_out, dtype=np.int64)
    return (2 * dst + 1) * size_in // (2 * size_out)


def nearest_resize(map2d: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a 2-D map to ``size`` (int: square) by nearest neighbour; values are unchanged."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    rows = nearest_index(map2d.shape[0], out_h)
    cols = nearest_index(map2d.shape[1], out_w)
    return map2d[rows[:, None], cols[None, :]]


def resize_flat_maps(
    maps_flat: np.ndarray, shapes: np.ndarray, offsets: np.ndarray, size: int
) -> np.ndarray:
    """Nearest-resize variable-size maps stored back to back to uint8 [N, size, size].

    Map k is ``maps_flat[offsets[k]:offsets[k+1]].reshape(shapes[k])``. Maps of one shape
    share their source pixel positions, so each shape group is one index gather straight
    from the flat buffer (no per-map Python work).
    """
    n = len(shapes)
    out = np.empty((n, size * size), dtype=np.uint8)
    if n == 0:
        return out.reshape(0, size, size)
    unique, group_of = np.unique(shapes, axis=0, return_inverse=True)
    group_of = group_of.reshape(-1)
    order = np.argsort(group_of, kind="stable")
    bounds = np.searchsorted(group_of[order], np.arange(len(unique) + 1))
    per_chunk = max(1, _GATHER_CHUNK // (size * size))
    for g, (h, w) in enumerate(unique.tolist()):
        members = order[bounds[g] : bounds[g + 1]]
        pixels = (nearest_index(h, size)[:, None] * w + nearest_index(w, size)[None, :]).ravel()
        for start in range(0, len(members), per_chunk):
            chunk = members[start : start + per_chunk]
            out[chunk] = maps_flat[offsets[chunk][:, None] + pixels[None, :]]
    return out.reshape(n, size, size)


def canonical_splits(splits: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """File split names for ``splits`` (short, long or group names), in file order."""
    requested = [splits] if isinstance(splits, str) else list(splits)
    if not requested:
        raise ValueError("splits is empty; " + _valid_splits())
    long_to_short = {v: k for k, v in SPLITS.items()}
    chosen: set[str] = set()
    for name in requested:
        if name in GROUPS:
            chosen.update(GROUPS[name])
        elif name in SPLITS:
            chosen.add(name)
        elif name in long_to_short:
            chosen.add(long_to_short[name])
        else:
            raise ValueError(f"unknown wafer split '{name}'; " + _valid_splits())
    return tuple(SPLITS[s] for s in SPLITS if s in chosen)


def _display_name(splits: tuple[str, ...]) -> str:
    for group, members in GROUPS.items():
        if splits == tuple(SPLITS[m] for m in members):
            return group
    long_to_short = {v: k for k, v in SPLITS.items()}
    return "+".join(long_to_short.get(s, s or UNLABELED) for s in splits)


UNLABELED = "unlabeled"  # the split of rows a converted full WM-811K file has no split for


def file_splits(
    available: np.ndarray, splits: str | list[str] | tuple[str, ...], path: str
) -> tuple[str, ...]:
    """The file's split values that ``splits`` asks for.

    Files with the clean subset's splits take its short, long and group names
    (``canonical_splits``). Other files, such as a full LSWMD.pkl converted by
    ``selfsup data wafers convert``, take their own split names ("Training", "Test"),
    "unlabeled" for rows without one, "train" for every row but the Test split (unless the file
    has a split named "train", as synthetic files do), and "all".
    """
    present = {str(v) for v in np.unique(available)}
    if present & set(SPLITS.values()):
        return canonical_splits(splits)
    requested = [splits] if isinstance(splits, str) else list(splits)
    chosen: set[str] = set()
    for name in requested:
        if name == "all":
            chosen |= present
        elif name in present and name != "":  # a split the file names exactly ("train" too)
            chosen.add(name)
        elif name == "train":  # everything a model may learn from: all but the Test split
            chosen |= present - {"Test"}
        elif name == UNLABELED and "" in present:
            chosen.add("")
        else:
            names = sorted(v or UNLABELED for v in present)
            raise ValueError(
                f"wafer file '{path}' has no split '{name}'; it has: {', '.join(names)} (and 'all')"
            )
    if not chosen:
        raise ValueError(f"splits is empty for wafer file '{path}'")
    return tuple(sorted(chosen))


def _valid_splits() -> str:
    names = [*SPLITS, *GROUPS, *SPLITS.values()]
    return "valid splits: " + ", ".join(names)


def packaged_path() -> Path:
    return Path(str(resources.files("selfsup.data").joinpath("builtin").joinpath(PACKAGED_FILE)))


@functools.lru_cache(maxsize=2)
def read_wafer_file(path: str) -> dict[str, np.ndarray]:
    # decompressing the file costs ~0.6 s; the kNN monitor and training both read it
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, image_size: int, splits: tuple[str, ...]) -> ImageDataset:
    raw = read_wafer_file(path)
    keep = np.flatnonzero(np.isin(raw["split"], np.asarray(splits)))
    maps = resize_flat_maps(raw["maps_flat"], raw["shapes"][keep], raw["offsets"][keep], image_size)
    short = _display_name(splits)
    labels = raw["labels"][keep].astype(np.int64)
    if (labels < 0).any():  # unlabeled rows (full WM-811K): a pretraining set, no labels
        logger.info(
            "wafer file '%s' (%s): %d of %d maps are unlabeled; the dataset has no labels",
            path, short, int((labels < 0).sum()), len(labels),
        )  # fmt: skip
    return ImageDataset(
        torch.from_numpy(maps).unsqueeze(1),
        None if (labels < 0).any() else labels,
        class_names=[str(c) for c in raw["class_names"]],
        names=[f"wm811k:{i}" for i in raw["source_index"][keep].tolist()],
        style="wafer",
        source=f"wm811k {short}",
    )


def load_wafer_subset(
    splits: str | list[str] = "train", image_size: int = 32, path: str | Path | None = None
) -> ImageDataset:
    """The built-in WM-811K clean subset, nearest-resized to ``image_size`` x ``image_size``.

    splits: train_1 (623), train_10 (6,225), train_20 (12,449), train_29 (18,051), val (12,450),
    test (12,450); "train" = the four train splits (37,348), "all" = everything (62,248). The
    file's long names (train_1_split, val_data, test_data, ...) work too. ``path`` reads another
    npz of the same format instead of the packaged one, e.g. a full LSWMD.pkl converted by
    ``selfsup data wafers convert``, whose splits are "Training", "Test", "unlabeled" and
    "all" (see ``file_splits``); a selection with unlabeled maps has no labels.

    Returns style="wafer", 1 channel, values 0/1/2, 9 classes (Center ... Scratch, none). The
    result is cached per (path, image_size, splits) for the process, so the same object comes
    back on the next call: treat it as read-only (``subset`` copies).
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    file = Path(path) if path is not None else packaged_path()
    if not file.is_file():
        raise FileNotFoundError(f"wafer map file '{file}' does not exist")
    path_str = str(file.resolve())
    chosen = file_splits(read_wafer_file(path_str)["split"], splits, str(file))
    return _load_cached(path_str, int(image_size), chosen)
