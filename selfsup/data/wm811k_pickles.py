"""WM-811K wafer maps from pandas pickles, and a pickle-free npz format for them.

Two pickle layouts are read (see shared/research/wafer.md sections 1-2):

- the full dataset, Kaggle ``LSWMD.pkl`` or MIR ``WM811K.pkl``: columns ``waferMap`` (codes
  0/1/2), ``failureType`` and ``trianTestLabel`` (sic, Kaggle) or ``trainTestLabel`` (MIR).
  Labels are nested arrays like ``[['Center']]``; unlabeled rows hold an empty array or
  ``[0, 0]``. The files are 2015-era pandas pickles, hence the compat unpickler below.
- the "clean subset" split files ``*.pkl.xz``: ``waferMap`` re-scaled to 0/128/255,
  ``failureType`` with the no-pattern class spelled ``None``, ``failureCode``.

Everything becomes ``WaferMaps`` with the original codes 0 = off-wafer, 1 = pass, 2 = fail.
Unpickling runs code, so pickles are read only with ``trust_pickle=True``;
``convert_wafers`` turns them once into the npz format that ``load_wafer_subset`` reads.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from selfsup.data.image_dataset import ImageDataset
from selfsup.data.wafers import resize_flat_maps
from selfsup.views.wafer import check_encoding, encode_codes

LOG = logging.getLogger("selfsup.data")

CLASS_NAMES = (
    "Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Random", "Scratch", "none",
)  # fmt: skip
SPLIT_COLUMNS = ("trianTestLabel", "trainTestLabel")  # Kaggle's typo first, then MIR's spelling
MIN_SIDE = 5  # the one known broken map is 15x3
OPENERS: dict[str, Callable[..., IO[bytes]]] = {
    ".xz": lzma.open,
    ".gz": gzip.open,
    ".bz2": bz2.open,
}
NPZ_KEYS = ("maps_flat", "shapes", "offsets", "labels", "class_names")

# (old module, old name) -> where pandas keeps it now; checked before the module renames
_MOVED_CLASSES = {
    ("pandas.indexes.numeric", "Int64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.indexes.numeric", "Float64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.numeric", "Int64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.numeric", "Float64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.numeric", "UInt64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.categorical", "Categorical"): ("pandas.core.arrays", "Categorical"),
    # pandas 0.15-0.17 (2015, when LSWMD.pkl was written) kept the row index here
    ("pandas.core.index", "Int64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.index", "Float64Index"): ("pandas.core.indexes.base", "Index"),
}
# old package -> new one, for the package and every module under it
_MOVED_PACKAGES = {"pandas.indexes": "pandas.core.indexes"}
# old module -> new one (exact names only)
_MOVED_MODULES = {
    "pandas.core.index": "pandas.core.indexes.base",
    "pandas.tseries.index": "pandas.core.indexes.datetimes",
    "pandas.tseries.period": "pandas.core.indexes.period",
    "pandas.tseries.tdi": "pandas.core.indexes.timedeltas",
    "pandas.lib": "pandas._libs.lib",
    "pandas.tslib": "pandas._libs.tslib",
    "pandas.core.internals": "pandas.core.internals.managers",
}


@dataclass
class WaferMaps:
    """Variable-size wafer maps with labels.

    maps: 2-D uint8 arrays of codes 0 off-wafer / 1 pass / 2 fail, any size.
    labels: int64 [N] indices into ``class_names``, -1 = unlabeled.
    split: str [N] ("Training"/"Test"/"" for the full dataset, the file's split name for the
    clean subset) or None. source: where the maps came from. skipped: reason -> rows dropped.
    source_index: int64 [N] row index in the source table (defaults to 0..N-1).
    """

    maps: list[np.ndarray]
    labels: np.ndarray
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    split: np.ndarray | None = None
    source: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    source_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.maps)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.source_index is None:
            self.source_index = np.arange(n, dtype=np.int64)
        self.source_index = np.asarray(self.source_index, dtype=np.int64).reshape(-1)
        if self.split is not None:
            self.split = np.asarray(self.split, dtype=str).reshape(-1)
        for name in ("labels", "split", "source_index"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{self.source}: {len(value)} {name} for {n} maps")

    def __len__(self) -> int:
        return len(self.maps)


# --- pickles --------------------------------------------------------------------------------------


def modern_location(module: str, name: str) -> tuple[str, str]:
    """Where a class pickled by 2015-era pandas lives now (unknown locations pass through)."""
    if (module, name) in _MOVED_CLASSES:
        return _MOVED_CLASSES[(module, name)]
    if module in _MOVED_MODULES:
        return _MOVED_MODULES[module], name
    for old, new in _MOVED_PACKAGES.items():
        if module == old or module.startswith(old + "."):
            return new + module[len(old) :], name
    return module, name


class CompatUnpickler(pickle.Unpickler):
    """Unpickler that redirects old pandas module paths (``pandas.indexes.*`` ...)."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(*modern_location(module, name))


def _open(path: Path) -> IO[bytes]:
    return OPENERS.get(path.suffix.lower(), open)(path, "rb")


def _import_pandas() -> Any:
    try:
        import pandas
    except ImportError as err:
        raise ValueError("reading WM-811K pickles needs pandas: pip install pandas") from err
    return pandas


def _unpickle_frame(path: Path) -> Any:
    pd = _import_pandas()
    try:
        with _open(path) as f:
            frame = pd.read_pickle(f)
    except (ImportError, AttributeError) as first:
        try:
            # py2 pickles hold numpy buffers as str; latin1 maps those bytes 1:1
            with _open(path) as f:
                frame = CompatUnpickler(f, encoding="latin1").load()
        except Exception as err:
            raise ValueError(
                f"cannot unpickle '{path}' with pandas {pd.__version__} ({first}); "
                f"the compat unpickler failed too: {err}"
            ) from err
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"'{path}' holds a {type(frame).__name__}, not a pandas DataFrame")
    return frame


def _unwrap(cell: Any) -> str | None:
    """``[['Center']]`` -> 'Center'; empty array, ``[0, 0]``, None or NaN -> None (unlabeled)."""
    if cell is None or isinstance(cell, str):
        return cell or None
    values = np.asarray(cell, dtype=object).ravel()
    if values.size == 1 and isinstance(values[0], str):
        return values[0] or None
    if all(isinstance(v, (int, float, np.number)) and (v == 0 or v != v) for v in values):
        return None
    raise ValueError(f"unreadable label cell {cell!r}")


def _code_table(raw_values: tuple[int, ...]) -> np.ndarray:
    """uint8 lookup raw value -> code 0/1/2; 255 marks values outside ``raw_values``."""
    table = np.full(256, 255, dtype=np.uint8)
    table[list(raw_values)] = np.arange(len(raw_values), dtype=np.uint8)
    return table


def _to_codes(cell: Any, raw_values: tuple[int, ...], table: np.ndarray) -> tuple[Any, str, str]:
    """(codes, reason, detail): codes is None when the map is bad, reason a stable key."""
    arr = np.asarray(cell)
    if arr.ndim != 2:
        return None, "not 2-D", f"map has shape {arr.shape}, not 2-D"
    if min(arr.shape) < MIN_SIDE:
        shape = "x".join(map(str, arr.shape))
        return None, f"side < {MIN_SIDE}", f"degenerate {shape} map (a side < {MIN_SIDE})"
    allowed = "{" + ",".join(map(str, raw_values)) + "}"
    if arr.dtype != np.uint8:
        ok = np.isin(arr, raw_values) if np.issubdtype(arr.dtype, np.number) else None
        if ok is None or not ok.all():
            bad = np.unique(arr[~ok])[:5].tolist() if ok is not None else str(arr.dtype)
            return None, f"values outside {allowed}", f"values outside {allowed}: {bad}"
        arr = arr.astype(np.uint8)
    codes = table[arr]
    if (codes == 255).any():
        bad = np.unique(arr[codes == 255])[:5].tolist()
        return None, f"values outside {allowed}", f"values outside {allowed}: {bad}"
    return codes, "", ""


def _pickle_split_name(path: Path) -> str:
    """``train_1_split.pkl.xz`` -> ``train_1_split``."""
    name = path.name
    for suffix in (*OPENERS, ".pkl", ".pickle"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def read_wafer_pickle(
    path: str | Path, *, trust_pickle: bool = False, on_bad: str = "error"
) -> WaferMaps:
    """Read a WM-811K pickle (full LSWMD.pkl / WM811K.pkl or a clean-subset split file).

    The layout is detected from the columns; compression from the suffix (.xz, .gz, .bz2,
    else plain). Clean-subset rows get the file's name as split (``train_1_split``).
    on_bad: "error" raises ValueError naming the file, row and problem for a map that is not
    2-D, has a side < 5 or values outside the code set, or an unknown failure type; "skip"
    drops such rows, counts them in ``skipped`` and logs one warning for the file.
    """
    path = Path(path)
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got '{on_bad}'")
    if not trust_pickle:
        raise ValueError(
            f"'{path}' is a pickle, and loading a pickle can run arbitrary code: pass "
            "trust_pickle=True (CLI: --trust-pickle) if you trust it, or convert it once with "
            "`selfsup data wafers convert SRC DST --trust-pickle` and use the .npz"
        )
    if not path.is_file():
        raise FileNotFoundError(f"wafer pickle '{path}' does not exist")
    frame = _unpickle_frame(path)
    split_column = _split_column(frame, path)
    rows = _PickleRows(clean=split_column is None)
    splits = frame[split_column].tolist() if split_column else None
    cells = (frame.index.tolist(), frame["waferMap"].tolist(), frame["failureType"].tolist())
    for position, (row, cell, failure) in enumerate(zip(*cells, strict=True)):
        reason, detail = rows.add(cell, failure, int(row) if _is_int(row) else position)
        if reason and on_bad == "error":
            raise ValueError(f"'{path}', row {row}: {detail} (on_bad='skip' drops such rows)")
        if not reason and splits is not None:
            rows.splits.append(_unwrap(splits[position]) or "")
    if rows.skipped:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(rows.skipped.items()))
        LOG.warning(
            "%s: skipped %d of %d rows (%s)", path, sum(rows.skipped.values()), len(frame), counts
        )
    if splits is None:
        rows.splits = [_pickle_split_name(path)] * len(rows.maps)
    return WaferMaps(
        rows.maps,
        np.asarray(rows.labels, dtype=np.int64),
        split=np.asarray(rows.splits, dtype=str),
        source=str(path),
        skipped=rows.skipped,
        source_index=np.asarray(rows.source_rows, dtype=np.int64),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer))


def _split_column(frame: Any, path: Path) -> str | None:
    """The train/test column of a full WM-811K pickle, None for a clean-subset file; a frame
    that is neither is an error naming the columns it has."""
    columns = set(map(str, frame.columns))
    split_column = next((c for c in SPLIT_COLUMNS if c in columns), None)
    for column in ("waferMap", "failureType"):
        if column not in columns:
            raise ValueError(f"'{path}' has no column '{column}' (columns: {sorted(columns)})")
    if split_column is None and "failureCode" not in columns:
        raise ValueError(
            f"'{path}' has no column 'trainTestLabel' (or 'trianTestLabel'; full WM-811K) "
            f"nor 'failureCode' (clean subset); columns: {sorted(columns)}"
        )
    return split_column


class _PickleRows:
    """The maps, labels and source rows kept from a pickle, and the count of skipped rows by
    reason. Clean-subset files code dies 0/128/255, full WM-811K 0/1/2."""

    def __init__(self, clean: bool) -> None:
        self.raw_values = (0, 128, 255) if clean else (0, 1, 2)
        self.table = _code_table(self.raw_values)
        self.class_index = {name: i for i, name in enumerate(CLASS_NAMES)}
        if clean:
            self.class_index["None"] = self.class_index["none"]
        self.maps: list[np.ndarray] = []
        self.labels: list[int] = []
        self.source_rows: list[int] = []
        self.splits: list[str] = []
        self.skipped: dict[str, int] = {}

    def add(self, cell: Any, failure: Any, source_row: int) -> tuple[str | None, str | None]:
        """Keep one row, or count it as skipped; returns (reason, detail) when it is bad."""
        codes, reason, detail = _to_codes(cell, self.raw_values, self.table)
        name = None
        if codes is not None:
            try:
                name = _unwrap(failure)
            except ValueError as err:
                reason, detail = "unknown failure type", str(err)
            if name is not None and name not in self.class_index:
                reason, detail = "unknown failure type", f"unknown failure type '{name}'"
        if reason:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1
            return reason, detail
        self.maps.append(codes)
        self.labels.append(-1 if name is None else self.class_index[name])
        self.source_rows.append(source_row)
        return None, None


# --- pickle-free npz ------------------------------------------------------------------------------


def flatten_maps(maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps_flat uint8, shapes int32 [N, 2], offsets int64 [N+1]): maps stored back to back."""
    shapes = np.asarray([m.shape for m in maps], dtype=np.int32).reshape(len(maps), 2)
    offsets = np.zeros(len(maps) + 1, dtype=np.int64)
    np.cumsum(shapes.prod(axis=1, dtype=np.int64), out=offsets[1:])
    flat = np.concatenate([m.ravel() for m in maps]) if maps else np.zeros(0, np.uint8)
    return flat.astype(np.uint8, copy=False), shapes, offsets


def read_wafer_npz(path: str | Path) -> WaferMaps:
    """Read the packaged npz format (maps_flat, shapes, offsets, labels, class_names, and
    optionally split and source_index); no pickle is loaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"wafer map file '{path}' does not exist")
    with np.load(path, allow_pickle=False) as z:
        raw = {k: z[k] for k in z.files}
    for key in NPZ_KEYS:
        if key not in raw:
            raise ValueError(f"'{path}' has no array '{key}' (has: {sorted(raw)})")
    shapes, offsets = raw["shapes"].astype(np.int64), raw["offsets"].astype(np.int64)
    n = len(shapes)
    sizes = shapes.prod(axis=1) if n else np.zeros(0, np.int64)
    if len(offsets) != n + 1 or offsets[0] != 0 or not np.array_equal(np.diff(offsets), sizes):
        raise ValueError(f"'{path}': offsets do not match shapes ({n} maps)")
    if offsets[-1] != raw["maps_flat"].size:
        raise ValueError(
            f"'{path}': maps_flat holds {raw['maps_flat'].size} values, shapes need {offsets[-1]}"
        )
    flat = raw["maps_flat"]
    maps = [flat[offsets[k] : offsets[k + 1]].reshape(shapes[k]) for k in range(n)]
    return WaferMaps(
        maps,
        raw["labels"],
        class_names=[str(c) for c in raw["class_names"]],
        split=raw.get("split"),
        source=str(path),
        source_index=raw.get("source_index"),
    )


def write_wafer_npz(maps: WaferMaps, path: str | Path) -> Path:
    """Write ``maps`` in the packaged npz format, atomically (temp file + os.replace).

    ``load_wafer_subset(path=...)`` reads the result when the split names are the clean
    subset's (train_1_split ... test_data); ``read_wafer_npz`` reads any split names.
    A missing split is written as "" for every row.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"wafer output '{path}' must end in .npz")
    for k, m in enumerate(maps.maps):
        if m.ndim != 2 or m.dtype != np.uint8 or (m.size and m.max() > 2):
            raise ValueError(f"{maps.source}: map {k} is not a 2-D uint8 map of codes 0/1/2")
    if len(maps.class_names) > 127 or maps.labels.min(initial=-1) < -1:
        raise ValueError(f"{maps.source}: labels must be -1..126 to fit the int8 format")
    flat, shapes, offsets = flatten_maps(maps.maps)
    split = maps.split if maps.split is not None else np.full(len(maps), "", dtype=str)
    arrays = {
        "maps_flat": flat,
        "shapes": shapes,
        "offsets": offsets,
        "labels": maps.labels.astype(np.int8),
        "split": np.asarray(split, dtype=str),
        "class_names": np.asarray(maps.class_names, dtype=str),
        "source_index": maps.source_index,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def concat_wafer_maps(parts: list[WaferMaps], source: str) -> WaferMaps:
    """One WaferMaps from several with the same class names; skip counts add up."""
    skipped: dict[str, int] = {}
    for part in parts:
        if part.class_names != parts[0].class_names:
            raise ValueError(f"{part.source}: class names differ from {parts[0].source}")
        for reason, count in part.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
    return WaferMaps(
        [m for part in parts for m in part.maps],
        np.concatenate([p.labels for p in parts]),
        class_names=list(parts[0].class_names),
        split=np.concatenate([p.split if p.split is not None else [""] * len(p) for p in parts]),
        source=source,
        skipped=skipped,
        source_index=np.concatenate([p.source_index for p in parts]),
    )


def convert_wafers(
    src: str | Path, dst: str | Path, *, trust_pickle: bool = False, on_bad: str = "error"
) -> dict[str, Any]:
    """``selfsup data wafers convert``: one pickle, or a folder of clean-subset ``*.pkl.xz``
    split files (split = file name), to one npz. Returns counts for the CLI to print."""
    src = Path(src)
    if src.is_dir():
        files = sorted(
            p
            for p in src.iterdir()
            if p.name.lower().endswith((".pkl", ".pkl.xz", ".pkl.gz", ".pkl.bz2", ".pickle"))
        )
        if not files:
            raise ValueError(f"folder '{src}' holds no .pkl / .pkl.xz / .pkl.gz / .pkl.bz2 files")
        parts = [read_wafer_pickle(f, trust_pickle=trust_pickle, on_bad=on_bad) for f in files]
        maps = concat_wafer_maps(parts, str(src))
    else:
        maps = read_wafer_pickle(src, trust_pickle=trust_pickle, on_bad=on_bad)
    write_wafer_npz(maps, dst)
    labeled = maps.labels >= 0
    counts = np.bincount(maps.labels[labeled], minlength=len(maps.class_names))
    return {
        "source": str(src),
        "output": str(dst),
        "maps": len(maps),
        "labeled": int(labeled.sum()),
        "unlabeled": int((~labeled).sum()),
        "splits": {
            str(s): int(c) for s, c in zip(*np.unique(maps.split, return_counts=True), strict=True)
        },
        "class_counts": dict(zip(maps.class_names, counts.tolist(), strict=True)),
        "skipped": dict(maps.skipped),
    }


# --- to ImageDataset ------------------------------------------------------------------------------


def to_dataset(maps: WaferMaps, image_size: int, encoding: str = "codes") -> ImageDataset:
    """Nearest-resize every map to ``image_size`` x ``image_size`` as an ImageDataset.

    encoding "codes": 1 channel of codes 0/1/2, style "wafer" (the wafer view recipe).
    encoding "fail_mask": 2 channels, (fail die, on-wafer die) as 0/1 (WaPIRL's input), for
    custom models and pipelines. It is tagged style "wafer" so nothing colour-jitters it, but
    the wafer recipe's die-flip noise computes 3 - code, which turns a 1 into a 2: turn die-flip
    noise off (p=0) for this encoding.
    Labels: int64 with -1 for unlabeled rows; None when no row is labeled.
    """
    check_encoding(encoding)
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    flat, shapes, offsets = flatten_maps(maps.maps)
    codes = torch.from_numpy(resize_flat_maps(flat, shapes, offsets, int(image_size)))
    images = encode_codes(codes.unsqueeze(1), encoding)
    labeled = bool((maps.labels >= 0).any())
    return ImageDataset(
        images,
        maps.labels if labeled else None,
        class_names=maps.class_names,
        names=[f"wm811k:{i}" for i in maps.source_index.tolist()],
        style="wafer",
        source=f"wafer maps '{maps.source}' ({encoding})",
    )
