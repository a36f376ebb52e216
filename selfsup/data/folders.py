"""Image folders: list fast, decode and resize once, cache the uint8 tensor on disk.

Layout rule (``labelled=None``): the folder is *labelled* when no image sits directly in it
and its images live in at least two first-level subfolders; each first-level subfolder is a
class (images deeper down belong to their first-level folder). Otherwise it is *flat*
(unlabelled, any depth). Hidden files and folders (name starting with ".") are skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfsup.data.dataset import ImageDataset

log = logging.getLogger("selfsup.data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_EXTENSION_SET = frozenset(IMAGE_EXTENSIONS)
MODES = {1: "L", 3: "RGB"}
CACHE_ENV = "SELFSUP_CACHE"
_CACHE_VERSION = "selfsup-folder-v1"  # bump when decoding changes, so old caches are not reused
_POOL_MIN_FILES = 256  # below this a process pool costs more than it saves
_SHOWN_PATHS = 5
MMAP_MIN_BYTES = 2**30  # caches above this are memory-mapped, not read (load_image_folder)


@dataclass
class FolderIndex:
    """What ``index_folder`` found under a root.

    files: sorted image paths relative to the root, "/" separators. hidden: entries whose
    name starts with "." (not descended into). other: files without an image extension.
    unreadable_dirs: folders that could not be listed (relative paths; their content is
    unknown). unreadable_files: image files the process may not read (only looked for
    with ``check_readable=True``; they are left out of ``files``).
    """

    files: list[str]
    hidden: int = 0
    other: int = 0
    unreadable_dirs: list[str] = field(default_factory=list)
    unreadable_files: list[str] = field(default_factory=list)

    @property
    def unreadable(self) -> int:
        """Folders and files that could not be read."""
        return len(self.unreadable_dirs) + len(self.unreadable_files)


def _is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in _EXTENSION_SET


def index_folder(root: str | Path, *, check_readable: bool = False) -> FolderIndex:
    """List every image file under ``root`` (any depth), fast.

    An explicit ``os.scandir`` stack: directory entries carry their type, so listing needs
    no stat call per file (a million files list in seconds, see docs/benchmarks.md).
    Hidden entries (".name") are skipped and counted; folders that cannot be listed are
    counted, not fatal. Symlinked folders are followed unless they point back to an
    ancestor. ``check_readable=True`` adds one ``access()`` call per image file and moves
    the files this process may not read to ``unreadable_files`` (without it they are found
    when decoding, and skipped there).
    """
    root = os.fspath(root)
    index = FolderIndex(files=[])
    files = index.files
    stack = [("", os.path.realpath(root))]
    while stack:
        rel, real = stack.pop()
        try:
            entries = os.scandir(os.path.join(root, rel) if rel else root)
        except OSError:  # permission denied, vanished, or not a folder after all
            if not rel:
                raise
            index.unreadable_dirs.append(rel.rstrip("/"))
            continue
        with entries:
            for entry in entries:
                name = entry.name
                if name[0] == ".":
                    index.hidden += 1
                elif entry.is_dir():  # d_type from the listing: no stat call
                    child_real = _child_real(entry, real)
                    if child_real is not None:
                        stack.append((f"{rel}{name}/", child_real))
                elif _is_image_name(name):
                    files.append(rel + name)
                else:
                    index.other += 1
    if check_readable:
        _split_unreadable(root, index)
    files.sort()
    index.unreadable_dirs.sort()
    return index


def _child_real(entry: os.DirEntry, parent_real: str) -> str | None:
    """The real path of a child folder, or None for a symlink back to an ancestor (a loop)."""
    if not entry.is_symlink():
        return os.path.join(parent_real, entry.name)
    child_real = os.path.realpath(entry.path)
    if parent_real == child_real or parent_real.startswith(child_real + os.sep):
        return None
    return child_real


def _split_unreadable(root: str, index: FolderIndex) -> None:
    readable = []
    for rel in index.files:
        if os.access(os.path.join(root, rel), os.R_OK):
            readable.append(rel)
        else:
            index.unreadable_files.append(rel)
    index.files[:] = readable
    index.unreadable_files.sort()


def scan_folder(root: str | Path) -> tuple[list[str], int, int]:
    """(sorted relative image paths, hidden entries skipped, other files ignored).

    ``index_folder`` without the unreadable lists; folders that cannot be listed are logged.
    """
    index = index_folder(root)
    _log_unreadable_dirs(root, index)
    return index.files, index.hidden, index.other


def _log_unreadable_dirs(root: str | Path, index: FolderIndex) -> None:
    if index.unreadable_dirs:
        dirs = index.unreadable_dirs
        shown = ", ".join(dirs[:_SHOWN_PATHS]) + (" ..." if len(dirs) > _SHOWN_PATHS else "")
        log.warning("could not list %d folder(s) in '%s': %s", len(dirs), root, shown)


def list_image_files(root: str | Path) -> tuple[list[str], int]:
    """(sorted image paths relative to ``root`` with "/" separators, hidden entries skipped)."""
    files, hidden, _ = scan_folder(root)
    return files, hidden


def is_labelled_layout(files: Sequence[str]) -> bool:
    """The auto-detection rule: no image at the top and >= 2 first-level folders with images."""
    tops = set()
    for f in files:
        if "/" not in f:
            return False
        tops.add(f.split("/", 1)[0])
    return len(tops) >= 2


def folder_labels(files: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(labels int64 [N], sorted class names) from the first-level folder of each path."""
    tops = [f.split("/", 1)[0] for f in files]
    class_names = sorted(set(tops))
    index = {name: i for i, name in enumerate(class_names)}
    return np.fromiter((index[t] for t in tops), dtype=np.int64, count=len(tops)), class_names


def decode_image(path: str | Path, image_size: int, mode: str) -> np.ndarray:
    """One file -> uint8 [C, S, S]: shorter side to ``image_size``, centre crop, bilinear.

    The central square is cropped first and then resized: the same result as "resize the
    shorter side, then centre-crop", with less work. (``resize(box=...)`` would let the
    filter reach pixels outside the box.)
    """
    with Image.open(path) as img:
        img.draft(mode, (image_size, image_size))  # JPEG: decode at a reduced DCT scale
        img = img.convert(mode)
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        if (w, h) != (side, side):
            img = img.crop((left, top, left + side, top + side))
        if side != image_size:
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _try_decode(job: tuple[str, int, str]) -> np.ndarray | str:
    try:
        return decode_image(*job)
    except Exception as err:  # any unreadable file is skipped, whatever the decoder raised
        return f"{type(err).__name__}: {err}"


def _decoded(jobs: list[tuple[str, int, str]], num_workers: int) -> Iterator[np.ndarray | str]:
    if num_workers <= 0 or len(jobs) < _POOL_MIN_FILES:
        yield from map(_try_decode, jobs)
        return
    # fork: workers start instantly and scripts without a __main__ guard still work
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    chunk = max(1, min(256, len(jobs) // (num_workers * 8)))
    with context.Pool(num_workers) as pool:
        yield from pool.imap(_try_decode, jobs, chunksize=chunk)


def default_cache_dir() -> Path:
    """``$SELFSUP_CACHE`` or ``~/.cache/selfsup``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "selfsup").expanduser()


def fingerprint(root: str | Path, files: Sequence[str], image_size: int, in_channels: int) -> str:
    """Hash of the decode settings and every file's relative path, size and mtime."""
    digest = hashlib.sha256(f"{_CACHE_VERSION}|{image_size}|{in_channels}\n".encode())
    for rel in files:
        st = os.stat(os.path.join(root, rel))
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _read_cache(npy: Path, mmap: bool | None = None) -> tuple[np.ndarray, list[str]] | None:
    """(images, skipped paths) from a cache file, or None when there is no usable cache.

    mmap: True memory-maps the file, False reads it into memory, None memory-maps it when
    it is larger than ``MMAP_MIN_BYTES``. A memory-mapped cache is read page by page as
    batches gather their rows, so a folder larger than RAM trains without loading it whole.
    """
    meta_file = npy.with_suffix(".json")
    if not (npy.is_file() and meta_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if mmap is None:
            mmap = npy.stat().st_size > MMAP_MIN_BYTES
        # copy-on-write map: torch gets a writable array (no warning) while the cache file
        # itself is never modified (a read-only map would crash on an in-place write)
        images = np.load(npy, mmap_mode="c" if mmap else None)[: meta["rows"]]
    except (OSError, ValueError, KeyError) as err:
        log.warning("ignoring unreadable cache '%s' (%s)", npy, err)
        return None
    return images, list(meta["skipped"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _decode_all(
    root: Path,
    files: list[str],
    image_size: int,
    in_channels: int,
    num_workers: int,
    cache_npy: Path | None,
    mmap: bool | None = None,
) -> tuple[np.ndarray, list[str], list[str]]:
    """(images [kept, C, S, S], skipped paths, first errors). Writes the cache when asked.

    With a cache the rows are decoded straight into a memory-mapped temporary file, so a
    folder larger than RAM still works; the file is renamed into place only when complete.
    """
    shape = (len(files), in_channels, image_size, image_size)
    out: np.ndarray | None = None
    tmp: Path | None = None
    if cache_npy is not None:
        tmp = cache_npy.with_name(f"{cache_npy.stem}.{os.getpid()}.tmp.npy")
        try:
            cache_npy.parent.mkdir(parents=True, exist_ok=True)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        except OSError as err:
            log.warning(
                "cannot write the image cache in '%s' (%s); decoding in memory",
                cache_npy.parent,
                err,
            )
            tmp = None
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    if len(files) > 1000:
        log.info("decoding %d images from '%s' at %d px (once)", len(files), root, image_size)
    mode = MODES[in_channels]
    jobs = [(str(root / rel), image_size, mode) for rel in files]
    skipped: list[str] = []
    errors: list[str] = []
    rows = 0
    try:
        # rows are packed: a skipped file leaves no gap, so the first `rows` rows are the data
        for rel, result in zip(files, _decoded(jobs, num_workers), strict=True):
            if isinstance(result, str):
                skipped.append(rel)
                errors.append(result)
            else:
                out[rows] = result
                rows += 1
    except BaseException:
        if tmp is not None:
            del out
            tmp.unlink(missing_ok=True)
        raise
    if tmp is not None and cache_npy is not None:
        out.flush()
        del out
        meta = {"rows": rows, "skipped": skipped, "root": str(root)}
        _atomic_write_text(cache_npy.with_suffix(".json"), json.dumps(meta))
        os.replace(tmp, cache_npy)
        cached = _read_cache(cache_npy, mmap)
        assert cached is not None
        return cached[0], skipped, errors
    return out[:rows], skipped, errors


def load_image_folder(
    path: str | Path,
    image_size: int,
    in_channels: int = 3,
    labelled: bool | None = None,
    *,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    mmap: bool | None = None,
) -> ImageDataset:
    """Decode every image of a folder once to uint8 [N, C, image_size, image_size].

    in_channels: 1 decodes as grayscale ("L"), 3 as "RGB". labelled: True (first-level
    subfolders are classes), False (unlabelled), None (the rule in this module's docstring).
    Files that cannot be read are skipped, listed in ``dataset.skipped`` and reported in one
    warning. cache: keep the decoded tensor in ``<cache_dir>/<hash>.npy`` (default
    ``$SELFSUP_CACHE`` or ``~/.cache/selfsup``) and memory-map it on the next load; the hash
    covers file paths, sizes, mtimes, image_size and in_channels. num_workers > 0 decodes
    in that many processes. mmap (with a cache): True memory-maps the cache file (batches
    read only their rows, for folders larger than RAM), False reads it into memory, None
    memory-maps caches larger than ``MMAP_MIN_BYTES`` (1 GiB).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder '{path}' does not exist")
    if not root.is_dir():
        raise ValueError(f"'{path}' is not a folder (expected an image folder)")
    if in_channels not in MODES:
        raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    index = index_folder(root)
    _log_unreadable_dirs(path, index)
    files, hidden = index.files, index.hidden
    if not files:
        raise ValueError(
            f"image folder '{path}' holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    if labelled is None:
        labelled = is_labelled_layout(files)
    elif labelled:
        at_top = [f for f in files if "/" not in f]
        if at_top:
            raise ValueError(
                f"image folder '{path}' is labelled=True but {len(at_top)} image(s) are not in "
                f"a class subfolder: {', '.join(at_top[:_SHOWN_PATHS])}"
            )

    cached = None
    cache_npy = None
    if cache:
        key = fingerprint(root, files, image_size, in_channels)
        cache_npy = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        cache_npy = cache_npy / f"{key}.npy"
        cached = _read_cache(cache_npy, mmap)
    if cached is not None:
        images, skipped = cached
        errors: list[str] = []
        log.debug("image folder '%s': cache hit %s", path, cache_npy)
    else:
        images, skipped, errors = _decode_all(
            root, files, image_size, in_channels, num_workers, cache_npy, mmap
        )
    if skipped:
        shown = ", ".join(skipped[:_SHOWN_PATHS]) + (" ..." if len(skipped) > _SHOWN_PATHS else "")
        reason = f" (first error: {errors[0]})" if errors else ""
        log.warning(
            "skipped %d unreadable image file(s) in '%s': %s%s", len(skipped), path, shown, reason
        )
    if len(images) == 0:
        raise ValueError(f"none of the {len(files)} image files in '{path}' could be read")
    if hidden:
        log.debug("image folder '%s': skipped %d hidden entries", path, hidden)
    skipped_set = set(skipped)
    keep = np.array([f not in skipped_set for f in files], dtype=bool)
    kept = [f for f, k in zip(files, keep, strict=True) if k] if skipped else files
    labels, class_names = None, None
    if labelled:
        # classes come from every listed file, so a class whose files all failed keeps its index
        labels, class_names = folder_labels(files)
        labels = labels[keep]
    return ImageDataset(
        torch.from_numpy(images),
        labels,
        class_names=class_names,
        names=kept,
        style="natural",
        source=f"image folder '{path}'",
        skipped=skipped,
    )
