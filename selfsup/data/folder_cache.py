"""The on-disk cache of decoded image folders: where it lives, its file names and version,
reading and writing it atomically, and removing the temporaries of runs that were killed.

A folder decoded at one size and channel count is kept as ``<cache dir>/<hash>.npy`` (uint8
[rows, C, S, S]) beside ``<hash>.json`` (rows, skipped paths, root). The hash covers the
decode settings and every file's path, size and mtime, so a changed folder misses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("selfsup.data")

CACHE_ENV = "SELFSUP_CACHE"
_CACHE_VERSION = "selfsup-folder-v2"  # bump when decoding changes, so old caches are not reused
MMAP_MIN_BYTES = 2**30  # caches above this are memory-mapped, not read (load_image_folder)
# "<hash>.<pid>@<host>.tmp.npy" and "<hash>.json.<pid>@<host>.tmp" (older files: no "@<host>")
_TEMPORARY_NAME = re.compile(r"[0-9a-f]+(?:\.json)?\.(\d+)(?:@(.*))?\.tmp(?:\.npy)?")


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


def cache_file(
    cache_dir: Path, root: str | Path, files: Sequence[str], image_size: int, in_channels: int
) -> Path:
    """``<cache_dir>/<fingerprint>.npy``: where a folder decoded with these settings is kept."""
    return cache_dir / f"{fingerprint(root, files, image_size, in_channels)}.npy"


def read_cache(npy: Path, mmap: bool | None = None) -> tuple[np.ndarray, list[str]] | None:
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


def open_cache_write(
    cache_npy: Path | None, shape: tuple[int, ...]
) -> tuple[np.ndarray, Path | None]:
    """(uint8 rows of ``shape`` to decode into, their temporary file or None).

    With ``cache_npy`` the rows are memory-mapped in a temporary file beside it, so a folder
    larger than RAM still decodes; ``finish_cache_write`` renames it into place once complete.
    Without it, or when the cache folder cannot be written (a warning), the rows are in memory.
    """
    if cache_npy is not None:
        tmp = cache_npy.with_name(f"{cache_npy.stem}.{_writer_tag()}.tmp.npy")
        try:
            cache_npy.parent.mkdir(parents=True, exist_ok=True)
            return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape), tmp
        except OSError as err:
            log.warning(
                "cannot write the image cache in '%s' (%s); decoding in memory",
                cache_npy.parent,
                err,
            )
    return np.empty(shape, dtype=np.uint8), None


def finish_cache_write(
    cache_npy: Path, tmp: Path, rows: int, skipped: list[str], root: Path, mmap: bool | None
) -> np.ndarray:
    """Put the flushed and closed temporary ``tmp`` in place as ``cache_npy``, its first
    ``rows`` rows the data, and return them as ``read_cache`` reads them."""
    meta = {"rows": rows, "skipped": skipped, "root": str(root)}
    _atomic_write_text(cache_npy.with_suffix(".json"), json.dumps(meta))
    os.replace(tmp, cache_npy)
    cached = read_cache(cache_npy, mmap)
    assert cached is not None
    return cached[0]


def _writer_tag() -> str:
    """The "<pid>@<host>" of temporary file names (a cache folder may be shared by hosts)."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _atomic_write_text(path: Path, text: str) -> None:
    # not selfsup.runtime.files.atomic_write_text: its temporary name carries no
    # "<pid>@<host>", so remove_stale_temporaries could not tell whose it is
    tmp = path.with_name(f"{path.name}.{_writer_tag()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OverflowError:  # not a pid any process can have
        return False
    return True


def remove_stale_temporaries(cache_dir: Path) -> int:
    """Delete the temporary files of cache writes whose process is gone; returns how many.

    A run killed while it decodes a folder leaves "<hash>.<pid>@<host>.tmp.npy" behind. Only
    files written on this host are considered (a pid says nothing about another host's
    processes; names without a host are older files, taken as this host's). POSIX only:
    on Windows ``os.kill(pid, 0)`` would send a console event instead of asking.
    """
    if os.name != "posix" or not cache_dir.is_dir():
        return 0
    host = socket.gethostname()
    removed = 0
    for path in cache_dir.glob("*.tmp*"):
        match = _TEMPORARY_NAME.fullmatch(path.name)
        if match and match[2] in (None, host) and not _pid_alive(int(match[1])):
            try:
                path.unlink()
            except FileNotFoundError:  # another process removed it first
                continue
            except OSError as err:
                log.warning("cannot remove the stale cache file '%s' (%s)", path, err)
                continue
            removed += 1
    if removed:
        log.info("removed %d stale temporary file(s) from the cache '%s'", removed, cache_dir)
    return removed
