"""Data specs -> ``ImageDataset``: what a ``--data`` string names, and ``load_dataset``.

The type itself lives in ``selfsup.data.image_dataset`` (imported by every source); this module
sits above the sources and picks one. Data specs (strings, as ``--data`` takes them):

- ``wafers`` / ``wm811k``: the built-in WM-811K subset (``split`` picks train_1 ... test);
- a wafer-map ``.npz`` from ``selfsup data wafers convert`` (``split``: the file's own split
  names, e.g. Training / Test / unlabeled, "train" = all but Test, default all);
- an IDX folder (MNIST-style ``train-images-idx3-ubyte[.gz]``, ``t10k-...``), with an optional
  split suffix: ``DIR`` or ``DIR:train`` is the train split, ``DIR:test`` the test split;
- an image folder (class subfolders or flat), or a ``.npy`` / ``.npz`` file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selfsup.data.image_dataset import ImageDataset

WAFER_SPECS = ("wafers", "wm811k")
# data handed over as an object (``pretrain(dataset=...)``) is recorded as "memory:<what>"
MEMORY_PREFIX = "memory:"
ARRAY_SUFFIXES = (".npy", ".npz")
IDX_SPLITS = ("train", "test")
SPEC_HELP = (
    "'wafers' (built-in), an IDX folder (DIR or DIR:test), an image folder, or a .npy/.npz file"
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
