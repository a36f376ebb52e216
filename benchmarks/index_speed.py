"""How long selfsup's image-folder indexer takes on a generated tree of empty files.

    python benchmarks/index_speed.py [--files 1000000] [--dir DIR] [--repeats 3] [--keep]

Writes ``--files`` empty files under a temporary folder (100 top folders x 10 subfolders,
1,000 files per leaf; mixed-case image extensions, 2 % other files, 0.1 % hidden files),
then times ``index_folder`` (the listing ``load_image_folder`` does), the same with
``check_readable=True`` (one ``access()`` per image), and ``os.walk`` with the same filter
as a baseline. Checks that the indexer found exactly the generated images. The tree was just
written, so the kernel's directory cache is warm: a cold first listing on a slow disk takes
longer. Prints a Markdown table and the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402

from selfsup.data.folders import IMAGE_EXTENSIONS, index_folder  # noqa: E402

FILES_PER_LEAF = 1000
LEAVES_PER_TOP = 10


def file_name(i: int) -> tuple[str, str]:
    """(name, kind) of the i-th generated file; kind is "image", "other" or "hidden"."""
    if i % 1000 == 3:
        return f".f{i}.png", "hidden"
    if i % 50 == 7:
        return f"f{i}.txt", "other"
    ext = (".png", ".JPG", ".jpeg", ".Png", ".webp")[i % 5]
    return f"f{i}{ext}", "image"


def make_tree(root: Path, files: int) -> dict[str, int]:
    """Write ``files`` empty files under ``root``; returns how many of each kind."""
    counts = {"image": 0, "other": 0, "hidden": 0}
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    for start in range(0, files, FILES_PER_LEAF):
        leaf = start // FILES_PER_LEAF
        folder = root / f"d{leaf // LEAVES_PER_TOP:04d}" / f"s{leaf % LEAVES_PER_TOP}"
        folder.mkdir(parents=True)
        for i in range(start, min(files, start + FILES_PER_LEAF)):
            name, kind = file_name(i)
            os.close(os.open(folder / name, flags, 0o644))
            counts[kind] += 1
    return counts


def walk_images(root: str) -> list[str]:
    """The obvious alternative: os.walk, skipping hidden entries, filtering by extension."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, root)
        for name in names:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(name if rel == "." else f"{rel}/{name}")
    found.sort()
    return found


def timed(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(median seconds, last result) of ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None, help="parent folder of the tree (default: temp)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the tree on disk")
    args = parser.parse_args()

    parent = tempfile.mkdtemp(prefix="selfsup-index-", dir=args.dir)
    root = Path(parent) / "tree"
    try:
        start = time.perf_counter()
        counts = make_tree(root, args.files)
        made = time.perf_counter() - start
        print(f"wrote {args.files:,} empty files in {made:.1f} s: {counts}", file=sys.stderr)
        ours, index = timed(lambda: index_folder(root), args.repeats)
        checked, _ = timed(lambda: index_folder(root, check_readable=True), args.repeats)
        walk, walked = timed(lambda: walk_images(str(root)), args.repeats)
        assert index.files == walked, "index_folder and os.walk disagree"
        assert len(index.files) == counts["image"] and index.other == counts["other"]
        assert index.hidden == counts["hidden"] and index.unreadable == 0
    finally:
        if not args.keep:
            shutil.rmtree(parent, ignore_errors=True)
    print(f"| listing | seconds (median of {args.repeats}) | files/s |\n|---|---|---|")
    for label, seconds in (
        ("selfsup `index_folder`", ours),
        ("selfsup `index_folder(check_readable=True)`", checked),
        ("`os.walk` + extension filter + sort", walk),
    ):
        print(f"| {label} | {seconds:.2f} | {args.files / seconds:,.0f} |")
    print(
        f"\n{args.files:,} files ({counts['image']:,} images, {counts['other']:,} other, "
        f"{counts['hidden']:,} hidden) in {args.files // FILES_PER_LEAF:,} folders, "
        f"warm directory cache; {machine_line()}"
    )


if __name__ == "__main__":
    main()
