"""``selfsup data check PATH``: what a data source holds, without decoding it all.

Image folders: by default only file headers are read (PIL opens lazily), so sizes and modes
come cheap; a file whose header cannot be read is listed as unreadable, and so are the entries
the folder listing skips (broken or looping links, names that are not valid UTF-8, folders that
cannot be listed). Files with a readable header but corrupt pixel data (a truncated JPEG) are
found by the full check (``full=True``, ``selfsup data check --full``), which decodes every
image as loading the folder would, or else when the folder is loaded (and then skipped).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from selfsup.data.spec import spec_kind

log = logging.getLogger("selfsup.data")

_TOP_SIZES = 3
_SHOWN_UNREADABLE = 10
_FULL_CHECK_SIZE = 64  # decode size of a full check without image_size (all data is read anyway)
PROGRESS_SECONDS = 5.0  # a full check logs its progress this often
T = TypeVar("T")


def _size_stats(sizes: Counter[tuple[int, int]], image_size: int | None) -> dict[str, Any]:
    """Sizes as (height, width): ranges, most common, and how many would be upscaled."""
    if not sizes:
        return {}
    heights = [h for h, _ in sizes]
    widths = [w for _, w in sizes]
    stats: dict[str, Any] = {
        "distinct": len(sizes),
        "height": [min(heights), max(heights)],
        "width": [min(widths), max(widths)],
        "most_common": [[h, w, c] for (h, w), c in sizes.most_common(_TOP_SIZES)],
    }
    if image_size is not None:
        stats["smaller_than_image_size"] = sum(
            c for (h, w), c in sizes.items() if min(h, w) < image_size
        )
    return stats


def _count_names(values: Iterable[int], names: list[str] | None) -> dict[str, int]:
    counts = Counter(int(v) for v in values)
    if names is None:
        return {str(k): counts[k] for k in sorted(counts)}
    return {name: counts.get(i, 0) for i, name in enumerate(names)}


def _check_wafers(image_size: int | None) -> dict[str, Any]:
    from selfsup.data.wafers import SPLITS, packaged_path, read_wafer_file

    raw = read_wafer_file(str(packaged_path()))
    names = [str(c) for c in raw["class_names"]]
    return {
        "kind": "built-in wafer maps (WM-811K clean subset)",
        "total": int(len(raw["labels"])),
        "splits": {short: int(np.sum(raw["split"] == long)) for short, long in SPLITS.items()},
        "class_counts": _count_names(raw["labels"], names),
        "channels": {"1 (codes 0 off-wafer, 1 pass, 2 fail)": int(len(raw["labels"]))},
        "sizes": _size_stats(Counter(map(tuple, raw["shapes"].tolist())), image_size),
    }


def _wafer_class_counts(labels: np.ndarray, names: list[str]) -> dict[str, int] | None:
    """Counts per class name, plus "unlabeled" (label -1) when there are such maps."""
    if not len(labels) or labels.max() < 0:
        return None
    counts = _count_names(labels[labels >= 0], names)
    if (labels < 0).any():
        counts["unlabeled"] = int(np.sum(labels < 0))
    return counts


def _check_wafer_file(path: Path, image_size: int | None) -> dict[str, Any]:
    """A wafer-map .npz (``selfsup wafers synth``, ``selfsup data wafers convert``): maps per
    split and class, and map sizes, read from the index arrays without decoding the maps."""
    from selfsup.data.wafers import UNLABELED, read_wafer_file

    raw = read_wafer_file(str(path))
    labels = raw["labels"].astype(np.int64)
    names = [str(c) for c in raw["class_names"]]
    split = raw["split"] if "split" in raw else np.full(len(labels), "", dtype=str)
    per_split = {
        str(value) or UNLABELED: _wafer_class_counts(labels[split == value], names)
        for value in np.unique(split)
    }
    return {
        "kind": "wafer maps (.npz of variable-size maps, by split; --data reads it)",
        "total": int(len(labels)),
        "splits": {str(v) or UNLABELED: int(np.sum(split == v)) for v in np.unique(split)},
        "class_counts": _wafer_class_counts(labels, names),
        "split_class_counts": per_split,
        "channels": {"1 (codes 0 off-wafer, 1 pass, 2 fail)": int(len(labels))},
        "sizes": _size_stats(Counter(map(tuple, raw["shapes"].tolist())), image_size),
    }


def _read_headers(
    root: Path, files: Sequence[str]
) -> tuple[Counter[tuple[int, int]], Counter[str], dict[str, str]]:
    """(sizes as (height, width), PIL modes, {file: error}) from the file headers only."""
    sizes: Counter[tuple[int, int]] = Counter()
    modes: Counter[str] = Counter()
    errors: dict[str, str] = {}
    for rel in files:
        try:
            with Image.open(root / rel) as img:  # lazy: reads the header only
                sizes[(img.height, img.width)] += 1
                modes[img.mode] += 1
        except Exception as err:  # any failure means "unreadable"
            errors[rel] = type(err).__name__
    return sizes, modes, errors


def _with_progress(items: Iterable[T], total: int, what: str) -> Iterator[T]:
    """``items``, logging "what: done / total" every ``PROGRESS_SECONDS``."""
    start = last = time.monotonic()
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            last = now
            log.info("%s: %d / %d images (%.0f s)", what, done, total, now - start)


def _decode_errors(root: Path, files: Sequence[str], image_size: int | None) -> dict[str, str]:
    """{file: error} for the files that fail to decode the way ``load_image_folder`` does."""
    from selfsup.data.folders import decode_files

    decoded = decode_files(root, files, image_size or _FULL_CHECK_SIZE, "RGB")
    results = _with_progress(decoded, len(files), f"full decode of '{root}'")
    return {rel: res for rel, res in zip(files, results, strict=True) if isinstance(res, str)}


def _check_folder(root: Path, image_size: int | None, full: bool) -> dict[str, Any]:
    from selfsup.data.folders import folder_labels, index_folder, is_labelled_layout

    index = index_folder(root)
    files = index.files
    sizes, modes, errors = _read_headers(root, files)
    if full:
        errors.update(_decode_errors(root, [f for f in files if f not in errors], image_size))
    errors = dict(sorted({**index.reasons, **errors}.items()))
    labelled = is_labelled_layout(files)
    report: dict[str, Any] = {
        "kind": "image folder, " + ("labelled (one class per subfolder)" if labelled else "flat"),
        "check": "full decode" if full else "header check",
        "total": len(files),
        "class_counts": None,
        "channels": dict(modes.most_common()),
        "sizes": _size_stats(sizes, image_size),
        "unreadable": [f"{rel} ({error})" for rel, error in errors.items()],
        "hidden_skipped": index.hidden,
        "other_files": index.other,
    }
    if labelled:
        labels, names = folder_labels(files)
        report["class_counts"] = _count_names(labels, names)
    return report


def _check_arrays(path: Path, image_size: int | None) -> dict[str, Any]:
    from selfsup.data.arrays import read_array_file, to_channels_first, to_label_indices

    raw, labels, class_names = read_array_file(path)
    report: dict[str, Any] = {
        "kind": f"arrays ({path.suffix.lower()[1:]})",
        "total": int(raw.shape[0]) if raw.ndim else 0,
        "stored_shape": list(raw.shape),
        "dtype": str(raw.dtype),
        "value_range": [raw.min().item(), raw.max().item()] if raw.size else None,
        "class_counts": None,
    }
    images = to_channels_first(raw, str(path))
    report["channels"] = {str(images.shape[1]): int(images.shape[0])}
    report["sizes"] = _size_stats(Counter({tuple(images.shape[-2:]): images.shape[0]}), image_size)
    if labels is not None:
        indices, names = to_label_indices(labels, class_names, len(images), str(path))
        report["class_counts"] = _count_names(indices, names)
    return report


def _check_idx(spec: str, image_size: int | None) -> dict[str, Any]:
    from selfsup.data.idx import find_idx_pair, known_class_names, read_idx
    from selfsup.data.spec import IDX_SPLITS, split_spec

    folder, named = split_spec(spec)
    splits: dict[str, int] = {}
    sizes: Counter[tuple[int, int]] = Counter()
    labels: list[np.ndarray] = []
    for split in [named] if named else IDX_SPLITS:
        try:
            images_path, labels_path = find_idx_pair(folder, split)
        except FileNotFoundError:
            continue
        images = read_idx(images_path)
        splits[split] = int(images.shape[0])
        sizes[tuple(images.shape[1:3])] += int(images.shape[0])
        if labels_path is not None:
            labels.append(read_idx(labels_path))
    names = known_class_names(folder)
    counts = None
    if labels:
        counts = _count_names(np.concatenate(labels), list(names) if names else None)
    total = sum(splits.values())
    return {
        "kind": "IDX folder (MNIST-style files)",
        "total": total,
        "splits": splits,
        "class_counts": counts,
        "channels": {"1": total},
        "sizes": _size_stats(sizes, image_size),
    }


def check_data(spec: str, image_size: int | None = None, *, full: bool = False) -> dict[str, Any]:
    """Counts (total, per class), sizes (height x width: ranges, most common), channels or
    PIL modes, unreadable files and hidden entries skipped. ``image_size`` adds how many
    images are smaller than it (they would be upscaled). ``full`` (image folders) decodes
    every image instead of reading headers only, to find corrupt pixel data; the report's
    "check" says which ran."""
    spec = str(spec)
    kind = spec_kind(spec)
    if kind == "wafers":
        report = _check_wafers(image_size)
    elif kind == "idx":
        report = _check_idx(spec, image_size)
    elif kind == "wafer_file":
        report = _check_wafer_file(Path(spec).expanduser(), image_size)
    elif kind == "folder":
        report = _check_folder(Path(spec).expanduser(), image_size, full)
    else:
        report = _check_arrays(Path(spec).expanduser(), image_size)
    report = {"spec": spec, **report}
    if image_size is not None:
        report["image_size"] = image_size
    return report


def _split_class_lines(per_split: dict[str, dict[str, int] | None]) -> list[str]:
    """One line per split: its maps per class (classes with none left out)."""
    lines = ["  per split:"] if per_split else []
    for split, counts in per_split.items():
        shown = ", ".join(f"{name} {n:,}" for name, n in (counts or {}).items() if n)
        lines.append(f"    {split:<12} {shown or 'unlabelled'}")
    return lines


def format_check(report: dict[str, Any]) -> str:
    """The report as aligned text lines for the terminal."""
    lines = [f"{report['spec']}: {report['kind']}"]
    if report.get("check") == "header check":
        lines.append("  check:        header check (headers only; --full decodes every image)")
    elif report.get("check"):
        lines.append(f"  check:        {report['check']} (every image decoded)")
    lines.append(f"  images:       {report['total']:,}")
    for key in ("stored_shape", "dtype", "value_range"):
        if key in report:
            lines.append(f"  {key + ':':<13} {report[key]}")
    if report.get("splits"):
        lines.append(
            "  splits:       " + ", ".join(f"{k} {v:,}" for k, v in report["splits"].items())
        )
    if report.get("class_counts"):
        total = max(1, sum(report["class_counts"].values()))
        lines.append(f"  classes:      {len(report['class_counts'])}")
        for name, count in report["class_counts"].items():
            lines.append(f"    {name:<20} {count:>9,}  {100 * count / total:5.1f} %")
    elif report.get("class_counts") is None:
        lines.append("  classes:      none (unlabelled)")
    lines.extend(_split_class_lines(report.get("split_class_counts") or {}))
    channels = ", ".join(f"{k} x{v:,}" for k, v in report.get("channels", {}).items())
    lines.append(f"  channels:     {channels or '-'}")
    sizes = report.get("sizes") or {}
    if sizes:
        common = ", ".join(f"{h}x{w} x{c:,}" for h, w, c in sizes["most_common"])
        lines.append(
            f"  sizes (HxW):  {sizes['distinct']} distinct; height {sizes['height'][0]}.."
            f"{sizes['height'][1]}, width {sizes['width'][0]}..{sizes['width'][1]}; "
            f"most common {common}"
        )
        if "smaller_than_image_size" in sizes:
            lines.append(
                f"  below {report['image_size']} px: {sizes['smaller_than_image_size']:,} "
                "(would be upscaled)"
            )
    if "hidden_skipped" in report:
        lines.append(f"  hidden skipped: {report['hidden_skipped']:,}")
        lines.append(f"  other files:  {report['other_files']:,} (not images, ignored)")
    unreadable = report.get("unreadable") or []
    lines.append(f"  unreadable:   {len(unreadable):,}")
    for item in unreadable[:_SHOWN_UNREADABLE]:
        lines.append(f"    {item}")
    if len(unreadable) > _SHOWN_UNREADABLE:
        lines.append(f"    ... and {len(unreadable) - _SHOWN_UNREADABLE:,} more")
    return "\n".join(lines)
