"""COCO detection boxes -> one image per box, in per-class folders (a labelled image folder).

A detection export (COCO json: ``images`` [{id, file_name, width, height}], ``annotations``
[{id, image_id, category_id, bbox [x, y, w, h]}], ``categories`` [{id, name}]) becomes
``out/<class>/<image stem>_<annotation id>.png``, which ``load_image_folder`` reads as a
labelled dataset. Roboflow exports hold ``train/``, ``valid/`` and ``test/`` folders, each with
its own ``_annotations.coco.json``: ``convert_coco_export`` converts each into ``out/<split>/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger("selfsup.data")

ANNOTATIONS_FILE = "_annotations.coco.json"
SKIP_REASONS = (
    "degenerate_box",  # w or h < min_size after clamping, or the box lies outside the image
    "bad_bbox",  # missing, not 4 finite numbers
    "missing_image",  # the image file does not exist
    "unreadable_image",  # the image file exists but cannot be decoded
    "unknown_image",  # image_id not listed in ``images``
    "unknown_category",  # category_id not listed in ``categories``
)
# characters that Windows, macOS or Linux refuse in a file name, plus control characters
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
_KEPT_MODES = ("L", "RGB", "RGBA")


def safe_name(name: str, fallback: str) -> str:
    """``name`` usable as one path component on every OS; ``fallback`` when nothing is left."""
    cleaned = _UNSAFE.sub("_", str(name)).strip().strip(".").strip()
    return cleaned or fallback


def class_folder_names(categories: list[dict[str, Any]], source: str) -> dict[int, str]:
    """category id -> sanitised, unique folder name (a clash gets ``_<id>`` appended)."""
    names: dict[int, str] = {}
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or "id" not in cat:
            raise ValueError(f"'{source}': categories[{i}] has no 'id'")
        cid = int(cat["id"])
        names[cid] = safe_name(cat.get("name", ""), f"class_{cid}")
    counts = Counter(names.values())
    return {cid: f"{n}_{cid}" if counts[n] > 1 else n for cid, n in names.items()}


def crop_box(
    bbox: Any, width: int, height: int, *, min_size: float, padding: float
) -> tuple[int, int, int, int] | str:
    """Pixel box (left, top, right, bottom) of a COCO ``[x, y, w, h]``, or a skip reason.

    The box grows by ``padding`` x its width (height) on each side, is clamped to the image,
    and must then be at least ``min_size`` wide and high. Fractional edges round outwards, so
    every pixel the box touches is kept.
    """
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return "bad_bbox"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "bad_bbox"
    x0, y0 = x - padding * w, y - padding * h
    x1, y1 = x + w + padding * w, y + h + padding * h
    x0, x1 = max(x0, 0.0), min(x1, float(width))
    y0, y1 = max(y0, 0.0), min(y1, float(height))
    if x1 - x0 < min_size or y1 - y0 < min_size:
        return "degenerate_box"
    return math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)


def _atomic_save_png(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _open_image(path: Path) -> Image.Image | str:
    if not path.is_file():
        return "missing_image"
    try:
        with Image.open(path) as im:
            # boxes are drawn on the image as a viewer shows it, i.e. after EXIF rotation
            image = ImageOps.exif_transpose(im)
            image.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return "unreadable_image"
    return image if image.mode in _KEPT_MODES else image.convert("RGB")


def read_coco(annotations: Path) -> dict[str, Any]:
    """The parsed json, checked for the three lists a detection file needs."""
    if not annotations.is_file():
        raise FileNotFoundError(f"COCO annotation file '{annotations}' does not exist")
    try:
        coco = json.loads(annotations.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"'{annotations}' is not valid JSON: {err}") from err
    if not isinstance(coco, dict):
        raise ValueError(f"'{annotations}' must hold a JSON object (a COCO detection file)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"'{annotations}' has no '{key}' list: not a COCO detection file")
    return coco


def _image_table(coco: dict[str, Any], annotations: Path) -> dict[int, dict[str, Any]]:
    """{image id: its ``images`` entry}; an entry without id or file_name is an error."""
    table: dict[int, dict[str, Any]] = {}
    for i, info in enumerate(coco["images"]):
        if not isinstance(info, dict) or "id" not in info or "file_name" not in info:
            raise ValueError(f"'{annotations}': images[{i}] needs 'id' and 'file_name'")
        table[int(info["id"])] = info
    return table


def _annotations_by_image(
    coco: dict[str, Any],
    folders: dict[int, str],
    image_info: dict[int, dict[str, Any]],
    annotations: Path,
    skipped: Counter[str],
) -> dict[int, list[dict[str, Any]]]:
    """{image id: its annotations}; unknown categories and images are counted in ``skipped``."""
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for i, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict):
            raise ValueError(f"'{annotations}': annotations[{i}] is not an object")
        cid, iid = ann.get("category_id"), ann.get("image_id")
        if cid not in folders:
            skipped["unknown_category"] += 1
        elif iid not in image_info:
            skipped["unknown_image"] += 1
        else:
            by_image[iid].append(ann)
    return by_image


def _write_image_crops(
    image: Any,
    anns: list[dict[str, Any]],
    stem: str,
    folders: dict[int, str],
    out_dir: Path,
    classes: Counter[str],
    skipped: Counter[str],
    *,
    min_size: float,
    padding: float,
) -> None:
    """One PNG per box of one image, counted per class; degenerate boxes counted as skipped."""
    for n, ann in enumerate(anns):
        box = crop_box(
            ann.get("bbox"), image.width, image.height, min_size=min_size, padding=padding
        )
        if isinstance(box, str):
            skipped[box] += 1
            continue
        folder = out_dir / folders[ann["category_id"]]
        folder.mkdir(parents=True, exist_ok=True)
        ann_id = safe_name(str(ann.get("id", f"n{n}")), f"n{n}")
        _atomic_save_png(image.crop(box), folder / f"{stem}_{ann_id}.png")
        classes[folders[ann["category_id"]]] += 1


def coco_to_crops(
    annotations: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    split_name: str | None = None,
    min_size: float = 2,
    padding: float = 0.0,
) -> dict[str, Any]:
    """Write one PNG per annotation box to ``out_dir/<class>/<image stem>_<ann id>.png``.

    Boxes are clamped to the image; degenerate boxes, unknown ids and missing or unreadable
    images are skipped and counted. ``split_name`` only names the split in the log line and
    the result. Every PNG is written to a temporary file and renamed, so a crash leaves no
    partial file. Returns ``{"split", "classes": {class: crops}, "skipped": {reason: count},
    "crops", "images"}`` (``classes`` lists every class with at least one annotation).
    """
    annotations, images_dir, out_dir = Path(annotations), Path(images_dir), Path(out_dir)
    if min_size < 0 or padding < 0:
        raise ValueError(f"min_size and padding must be >= 0, got {min_size} and {padding}")
    coco = read_coco(annotations)
    folders = class_folder_names(coco["categories"], str(annotations))
    image_info = _image_table(coco, annotations)
    skipped: Counter[str] = Counter()
    by_image = _annotations_by_image(coco, folders, image_info, annotations, skipped)
    classes: Counter[str] = Counter(
        {folders[a["category_id"]]: 0 for anns in by_image.values() for a in anns}
    )
    images_read = 0
    for iid in sorted(by_image, key=lambda i: str(image_info[i]["file_name"])):
        file_name = str(image_info[iid]["file_name"])
        image = _open_image(images_dir / file_name)
        if isinstance(image, str):
            skipped[image] += len(by_image[iid])
            continue
        images_read += 1
        stem = safe_name(Path(file_name).stem, f"image_{iid}")
        _write_image_crops(image, by_image[iid], stem, folders, out_dir, classes, skipped,
                           min_size=min_size, padding=padding)  # fmt: skip
    result = {
        "split": split_name,
        "classes": dict(sorted(classes.items())),
        "skipped": {reason: skipped[reason] for reason in SKIP_REASONS if skipped[reason]},
        "crops": sum(classes.values()),
        "images": images_read,
    }
    log.info(summary_line(result, annotations, out_dir))
    return result


def summary_line(result: dict[str, Any], annotations: Path, out_dir: Path) -> str:
    split = f" [{result['split']}]" if result.get("split") else ""
    skipped = result["skipped"]
    why = ", ".join(f"{reason} {count}" for reason, count in skipped.items())
    return (
        f"coco-crops{split} '{annotations}': {result['crops']} crops of "
        f"{len(result['classes'])} classes from {result['images']} images -> '{out_dir}'; "
        f"skipped {sum(skipped.values())} annotation(s)" + (f" ({why})" if why else "")
    )


def find_export_splits(root: str | Path) -> dict[str, Path]:
    """split name -> folder, for every subfolder of ``root`` holding ``_annotations.coco.json``.

    A ``root`` that itself holds the file (a single-split export) is the split "all".
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"COCO export folder '{root}' does not exist")
    splits = {
        sub.name: sub
        for sub in sorted(root.iterdir())
        if sub.is_dir() and (sub / ANNOTATIONS_FILE).is_file()
    }
    if not splits and (root / ANNOTATIONS_FILE).is_file():
        splits = {"all": root}
    if not splits:
        raise FileNotFoundError(
            f"COCO export folder '{root}' has no {ANNOTATIONS_FILE}, neither itself nor in "
            "a split subfolder (train/, valid/, test/)"
        )
    return splits


def convert_coco_export(
    root: str | Path, out: str | Path, *, min_size: float = 2, padding: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Convert every split folder of a Roboflow COCO export into ``out/<split>/<class>/``.

    Returns ``{split: coco_to_crops result}``. Images are looked up next to each split's
    ``_annotations.coco.json``.
    """
    out = Path(out)
    return {
        split: coco_to_crops(
            folder / ANNOTATIONS_FILE,
            folder,
            out / split,
            split_name=split,
            min_size=min_size,
            padding=padding,
        )
        for split, folder in find_export_splits(root).items()
    }


def format_crop_counts(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per class, one column per split, and the skip counts below."""
    splits = list(results)
    classes = sorted({c for r in results.values() for c in r["classes"]})
    lines = ["| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for name in classes:
        counts = [str(results[s]["classes"].get(name, 0)) for s in splits]
        lines.append(f"| {name} | " + " | ".join(counts) + " |")
    lines.append("| **total** | " + " | ".join(str(results[s]["crops"]) for s in splits) + " |")
    for s in splits:
        if results[s]["skipped"]:
            why = ", ".join(f"{k} {v}" for k, v in results[s]["skipped"].items())
            lines.append(f"\n{s}: skipped {why}")
    return "\n".join(lines)
