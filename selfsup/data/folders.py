"""Image folders: list fast, decode and resize once, cache the uint8 tensor on disk (the
cache itself: ``selfsup.data.folder_cache``).

Layout rule (``labelled=None``): the folder is *labelled* when no image sits directly in it
and its images live in at least two first-level subfolders; each first-level subfolder is a
class (images deeper down belong to their first-level folder). Otherwise it is *flat*
(unlabelled, any depth). Hidden files and folders (name starting with ".") are skipped.
Entries that cannot be used (folders that cannot be listed, broken or looping links, names
that are not valid UTF-8, files that cannot be decoded) are skipped, counted and named.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from selfsup.data.folder_cache import (
    cache_file,
    default_cache_dir,
    finish_cache_write,
    open_cache_write,
    read_cache,
    remove_stale_temporaries,
)
from selfsup.data.image_dataset import ImageDataset

log = logging.getLogger("selfsup.data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_EXTENSION_SET = frozenset(IMAGE_EXTENSIONS)
MODES = {1: "L", 3: "RGB"}
_POOL_MIN_FILES = 256  # below this a process pool costs more than it saves
_SHOWN_PATHS = 5
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})  # 16/32-bit integer grey


@dataclass
class FolderIndex:
    """What ``index_folder`` found under a root.

    files: sorted image paths relative to the root, "/" separators. hidden: entries whose
    name starts with "." (not descended into). other: files without an image extension.
    unreadable_dirs: folders that could not be listed, and links without an image extension
    that cannot be followed (relative paths; their content is unknown). unreadable_files:
    image names that cannot be read: broken or looping links, names that are not valid
    UTF-8 and, only with ``check_readable=True``, files this process may not read. Both
    are left out of ``files``; a name that is not valid UTF-8 is shown with "\\xff" escapes.
    reasons: why each of them is unreadable, by relative path.
    """

    files: list[str]
    hidden: int = 0
    other: int = 0
    unreadable_dirs: list[str] = field(default_factory=list)
    unreadable_files: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def unreadable(self) -> int:
        """Folders and files that could not be read."""
        return len(self.unreadable_dirs) + len(self.unreadable_files)

    def add_unreadable(self, rel: str, reason: str, *, folder: bool) -> None:
        (self.unreadable_dirs if folder else self.unreadable_files).append(rel)
        self.reasons[rel] = reason


def _is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in _EXTENSION_SET


def index_folder(root: str | Path, *, check_readable: bool = False) -> FolderIndex:
    """List every image file under ``root`` (any depth), fast.

    An explicit ``os.scandir`` stack: directory entries carry their type, so listing needs
    no stat call per file (a million files list in seconds, see docs/benchmarks.md).
    Hidden entries (".name") are skipped and counted; folders that cannot be listed, links
    that cannot be followed (dangling, or a loop) and names that are not valid UTF-8 are
    skipped and counted in ``unreadable_dirs`` / ``unreadable_files``, not fatal. Symlinked
    folders are followed unless they point back to an ancestor. ``check_readable=True`` adds
    one ``access()`` call per image file and moves the files this process may not read to
    ``unreadable_files`` (without it they are found when decoding, and skipped there).
    """
    root = os.fspath(root)
    index = FolderIndex(files=[])
    stack = [("", os.path.realpath(root))]
    while stack:
        rel, real = stack.pop()
        try:
            entries = os.scandir(os.path.join(root, rel) if rel else root)
        except OSError as err:  # permission denied, vanished, or not a folder after all
            if not rel:
                raise
            index.add_unreadable(rel.rstrip("/"), f"cannot list: {err.strerror}", folder=True)
            continue
        with entries:
            for entry in entries:
                name = entry.name
                if name[0] == ".":
                    index.hidden += 1
                elif entry.is_symlink() or not (name.isascii() or _is_valid_utf8(name)):
                    _add_unusual_entry(index, stack, entry, rel, real)
                elif entry.is_dir():  # d_type from the listing: no stat call
                    stack.append((f"{rel}{name}/", os.path.join(real, name)))
                elif _is_image_name(name):
                    index.files.append(rel + name)
                else:
                    index.other += 1
    if check_readable:
        _split_unreadable(root, index)
    index.files.sort()
    index.unreadable_dirs.sort()
    index.unreadable_files.sort()
    return index


def _add_unusual_entry(
    index: FolderIndex, stack: list[tuple[str, str]], entry: os.DirEntry, rel: str, real: str
) -> None:
    """A symlink or a name that is not valid UTF-8 (the slow path of ``index_folder``): into
    ``index``, onto ``stack`` (a folder to descend into), or skipped and named with a reason."""
    name = entry.name
    kind, reason = _entry_kind(entry)
    is_image = _is_image_name(name)
    if kind == "file" and not is_image:
        index.other += 1
        return
    if reason is None and not _is_valid_utf8(name):
        reason = "name is not valid UTF-8"
    if reason is not None:
        index.add_unreadable(rel + _printable(name), reason, folder=kind == "dir" or not is_image)
    elif kind == "dir":
        child_real = _child_real(entry, real)
        if child_real is not None:
            stack.append((f"{rel}{name}/", child_real))
    else:
        index.files.append(rel + name)


def _entry_kind(entry: os.DirEntry) -> tuple[str, str | None]:
    """("dir" | "file", None), or ("link", why) for a link that cannot be followed.

    A symlink to a file costs a stat, to find the dangling ones before they reach the cache
    fingerprint or a decoder.
    """
    try:
        if entry.is_dir():
            return "dir", None
        if entry.is_symlink():
            entry.stat()  # follows the link
    except FileNotFoundError:
        return "link", "broken link: its target does not exist"
    except OSError as err:
        return "link", "symlink loop" if err.errno == errno.ELOOP else f"link: {err.strerror}"
    return "file", None


def _is_valid_utf8(name: str) -> bool:
    # undecodable bytes arrive as lone surrogates ("\udcff"), which cannot be encoded
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str) -> str:
    """A file name safe to print and log: undecodable bytes shown as "\\xff"."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


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
            index.add_unreadable(rel, "no read permission", folder=False)
    index.files[:] = readable


def scan_folder(root: str | Path) -> tuple[list[str], int, int]:
    """(sorted relative image paths, hidden entries skipped, other files ignored).

    ``index_folder`` without the unreadable lists; the unreadable entries are logged.
    """
    index = index_folder(root)
    _log_unreadable_dirs(root, index)
    _log_skipped_files(root, index.unreadable_files, _reasons(index))
    return index.files, index.hidden, index.other


def _reasons(index: FolderIndex) -> list[str]:
    return [index.reasons[rel] for rel in index.unreadable_files]


def _shown(paths: Sequence[str]) -> str:
    return ", ".join(paths[:_SHOWN_PATHS]) + (" ..." if len(paths) > _SHOWN_PATHS else "")


def _log_unreadable_dirs(root: str | Path, index: FolderIndex) -> None:
    dirs = index.unreadable_dirs
    if dirs:
        shown = _shown([f"{rel} ({index.reasons.get(rel, '?')})" for rel in dirs])
        log.warning("could not list %d folder(s) or link(s) in '%s': %s", len(dirs), root, shown)


def _log_skipped_files(root: str | Path, skipped: Sequence[str], errors: Sequence[str]) -> None:
    """One warning for image files left out: how many, the first few, the first error."""
    if skipped:
        reason = f" (first error: {errors[0]})" if errors else ""
        log.warning(
            "skipped %d unreadable image file(s) in '%s': %s%s",
            len(skipped),
            root,
            _shown(skipped),
            reason,
        )


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

    The image is decoded as displayed: its EXIF orientation is applied (phone photos are
    often stored sideways). 16-bit grey (PIL modes "I;16", "I") is scaled to 8 bits.
    The central square is cropped first and then resized: the same result as "resize the
    shorter side, then centre-crop", with less work. (``resize(box=...)`` would let the
    filter reach pixels outside the box.)
    """
    with Image.open(path) as img:
        img.draft(mode, (image_size, image_size))  # JPEG: decode at a reduced DCT scale
        ImageOps.exif_transpose(img, in_place=True)
        img = convert_mode(img, mode)
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        if (w, h) != (side, side):
            img = img.crop((left, top, left + side, top + side))
        if side != image_size:
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def convert_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img.convert(mode)``, except that 16-bit grey is scaled: 65535 -> 255.

    PIL's own conversion clips those values at 255, so 16-bit images come out almost white.
    """
    if img.mode in _WIDE_GREY_MODES:
        wide = np.clip(np.asarray(img, dtype=np.float32), 0, 65535)  # "I" is int32
        img = Image.fromarray(np.rint(wide / 257).astype(np.uint8))
    return img.convert(mode)


_CACHED_FAILURE = "could not be decoded (an earlier load found it so; its decode cache says)"


def _try_decode(job: tuple[str, int, str]) -> np.ndarray | str:
    try:
        return decode_image(*job)
    except Exception as err:  # any unreadable file is skipped, whatever the decoder raised
        return f"{type(err).__name__}: {err}"


def decode_files(
    root: str | Path, files: Sequence[str], image_size: int, mode: str, num_workers: int = 0
) -> Iterator[np.ndarray | str]:
    """``decode_image`` of each file (paths relative to ``root``), in order; an unreadable
    file yields its error as a string ("OSError: image file is truncated ...")."""
    jobs = [(os.path.join(root, rel), image_size, mode) for rel in files]
    return _decoded(jobs, num_workers)


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


def _decode_all(
    root: Path,
    files: list[str],
    image_size: int,
    in_channels: int,
    num_workers: int,
    cache_npy: Path | None,
    mmap: bool | None = None,
) -> tuple[np.ndarray, list[str], list[str]]:
    """(images [kept, C, S, S], skipped paths, first errors). Writes the cache when asked
    (``cache_npy``), decoding straight into it (see ``open_cache_write``)."""
    shape = (len(files), in_channels, image_size, image_size)
    out, tmp = open_cache_write(cache_npy, shape)
    if len(files) > 1000:
        log.info("decoding %d images from '%s' at %d px (once)", len(files), root, image_size)
    skipped: list[str] = []
    errors: list[str] = []
    rows = 0
    try:
        decoded = decode_files(root, files, image_size, MODES[in_channels], num_workers)
        # rows are packed: a skipped file leaves no gap, so the first `rows` rows are the data
        for rel, result in zip(files, decoded, strict=True):
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
        images = finish_cache_write(cache_npy, tmp, rows, skipped, root, mmap)
        return images, skipped, errors
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
    Files that cannot be read (see ``index_folder`` and ``decode_image``) are skipped, listed
    in ``dataset.skipped`` and reported in one warning. cache: keep the decoded tensor in
    ``<cache_dir>/<hash>.npy`` (default ``$SELFSUP_CACHE`` or ``~/.cache/selfsup``) and
    memory-map it on the next load; the hash covers file paths, sizes, mtimes, image_size
    and in_channels; temporary files of killed runs are removed. num_workers > 0 decodes
    in that many processes. mmap (with a cache): True memory-maps the cache file (batches
    read only their rows, for folders larger than RAM), False reads it into memory, None
    memory-maps caches larger than ``folder_cache.MMAP_MIN_BYTES`` (1 GiB).
    """
    root = _folder_root(path, image_size, in_channels)
    index = _indexed(path, root)
    files = index.files
    labelled = _labelled(path, files, labelled)
    if cache:
        folder_cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        images, skipped, errors = _cached_or_decoded(
            root, files, image_size, in_channels, folder_cache, num_workers, mmap
        )
    else:
        images, skipped, errors = _decode_all(
            root, files, image_size, in_channels, num_workers, None, mmap
        )
    unreadable_files = index.unreadable_files + skipped
    _log_skipped_files(path, unreadable_files, _reasons(index) + errors)
    # a cache hit knows which files failed, not why (errors is empty then)
    decode_reasons = errors if len(errors) == len(skipped) else [_CACHED_FAILURE] * len(skipped)
    reasons = dict(zip(unreadable_files, _reasons(index) + decode_reasons, strict=True))
    if len(images) == 0:
        raise ValueError(f"none of the {len(files)} image files in '{path}' could be read")
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
        skipped=reasons,
    )


def _indexed(path: str | Path, root: Path) -> FolderIndex:
    """The folder's listing, its unreadable folders logged; no image at all is an error."""
    index = index_folder(root)
    _log_unreadable_dirs(path, index)
    if index.hidden:
        log.debug("image folder '%s': skipped %d hidden entries", path, index.hidden)
    if not index.files:
        _log_skipped_files(path, index.unreadable_files, _reasons(index))
        unreadable = f"; {index.unreadable} unreadable entries skipped" if index.unreadable else ""
        raise ValueError(
            f"image folder '{path}' holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
            + unreadable
        )
    return index


def _folder_root(path: str | Path, image_size: int, in_channels: int) -> Path:
    """The folder as a Path, after checking it and the decode settings."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder '{path}' does not exist")
    if not root.is_dir():
        raise ValueError(f"'{path}' is not a folder (expected an image folder)")
    if in_channels not in MODES:
        raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return root


def _labelled(path: str | Path, files: Sequence[str], labelled: bool | None) -> bool:
    """``labelled`` resolved by the layout rule when None; True needs every file in a class."""
    if labelled is None:
        return is_labelled_layout(files)
    if labelled:
        at_top = [f for f in files if "/" not in f]
        if at_top:
            raise ValueError(
                f"image folder '{path}' is labelled=True but {len(at_top)} image(s) are not in "
                f"a class subfolder: {', '.join(at_top[:_SHOWN_PATHS])}"
            )
    return labelled


def _cached_or_decoded(
    root: Path,
    files: list[str],
    image_size: int,
    in_channels: int,
    cache_dir: Path,
    num_workers: int,
    mmap: bool | None,
) -> tuple[np.ndarray, list[str], list[str]]:
    """``_decode_all``'s (images, skipped, errors), read from ``cache_dir`` when it holds them."""
    remove_stale_temporaries(cache_dir)
    cache_npy = cache_file(cache_dir, root, files, image_size, in_channels)
    cached = read_cache(cache_npy, mmap)
    if cached is None:
        return _decode_all(root, files, image_size, in_channels, num_workers, cache_npy, mmap)
    log.debug("image folder '%s': cache hit %s", root, cache_npy)
    return cached[0], cached[1], []
