"""The image-folder indexer: exactly the image files of a generated tree, and what it skipped."""

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import selfsup.data.folders as folders
from selfsup.cli import main
from selfsup.data.check import check_data
from selfsup.data.folders import index_folder, list_image_files, load_image_folder, scan_folder

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def make_tree(root: Path) -> tuple[list[str], int, int]:
    """A nested tree of empty files: (expected image paths, hidden entries, other files)."""
    images = [
        "a.png",
        "b.JPG",
        "c.Jpeg",
        "cls1/x.webp",
        "cls1/deep/er/y.TIFF",
        "cls1/deep/z.bmp",
        "cls2/w.gif",
        "cls2/v.tif",
        "dir.png/inside.jpg",  # a folder named like an image is a folder
        "many.dots.in.name.jpeg",
    ]
    other = ["notes.txt", "cls1/README", "cls2/png", "cls2/archive.png.zip"]
    hidden = [".hidden.png", "cls1/.DS_Store", ".git/objects/img.png", "cls2/.cache/t.jpg"]
    for rel in images + other + hidden:
        touch(root / rel)
    (root / "empty_dir").mkdir()
    # entries named with a leading dot: .hidden.png, .DS_Store, .git, .cache (not descended)
    return sorted(images), 4, len(other)


def test_index_finds_exactly_the_images(tmp_path):
    expected, hidden, other = make_tree(tmp_path)
    index = index_folder(tmp_path)
    assert index.files == expected
    assert (index.hidden, index.other) == (hidden, other)
    assert index.unreadable_dirs == [] and index.unreadable_files == [] and index.unreadable == 0
    assert scan_folder(tmp_path) == (expected, hidden, other)
    assert list_image_files(tmp_path) == (expected, hidden)


def test_index_counts_every_file_of_a_wide_tree(tmp_path):
    expected = []
    for d in range(7):
        for f in range(23):
            ext = (".png", ".JPG", ".jpeg", ".txt")[f % 4]
            rel = f"d{d}/s{f % 3}/f{f:03d}{ext}"
            touch(tmp_path / rel)
            if ext != ".txt":
                expected.append(rel)
    index = index_folder(tmp_path)
    assert index.files == sorted(expected)
    assert index.other == 7 * 23 - len(expected)


def test_symlink_loop_is_not_followed(tmp_path):
    touch(tmp_path / "sub" / "a.png")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    other = tmp_path.parent / f"{tmp_path.name}_elsewhere"
    touch(other / "b.png")
    (tmp_path / "link").symlink_to(other, target_is_directory=True)
    assert index_folder(tmp_path).files == ["link/b.png", "sub/a.png"]


def test_unlistable_folder_is_counted_not_fatal(tmp_path, monkeypatch, caplog):
    """Monkeypatched, so it runs as root too (root may list any folder)."""
    for rel in ("ok/a.png", "locked/b.png", "locked/inner/c.png"):
        touch(tmp_path / rel)
    real_scandir = os.scandir
    locked = os.path.join(str(tmp_path), "locked/")

    def scandir(path):
        if os.fspath(path).rstrip("/") == locked.rstrip("/"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(folders.os, "scandir", scandir)
    index = index_folder(tmp_path)
    assert index.files == ["ok/a.png"]
    assert index.unreadable_dirs == ["locked"] and index.unreadable == 1
    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        assert scan_folder(tmp_path)[0] == ["ok/a.png"]
    assert "could not list 1 folder(s)" in caplog.text and "locked" in caplog.text


def test_root_that_cannot_be_listed_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        index_folder(tmp_path / "missing")


def test_check_readable_moves_unreadable_files(tmp_path, monkeypatch):
    for rel in ("a.png", "b.png", "sub/c.png"):
        touch(tmp_path / rel)
    real_access = os.access
    monkeypatch.setattr(
        folders.os,
        "access",
        lambda path, mode: not os.fspath(path).endswith("b.png") and real_access(path, mode),
    )
    index = index_folder(tmp_path, check_readable=True)
    assert index.files == ["a.png", "sub/c.png"]
    assert index.unreadable_files == ["b.png"] and index.unreadable == 1
    assert index_folder(tmp_path).files == ["a.png", "b.png", "sub/c.png"]  # no check: listed


@pytest.mark.skipif(IS_ROOT or os.name != "posix", reason="root reads files whatever their mode")
def test_chmod_000_file_and_folder_are_counted(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "good.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "secret.png")
    touch(tmp_path / "closed" / "c.png")
    os.chmod(tmp_path / "secret.png", 0)
    os.chmod(tmp_path / "closed", 0)
    try:
        index = index_folder(tmp_path, check_readable=True)
        assert index.files == ["good.png"]
        assert index.unreadable_files == ["secret.png"] and index.unreadable_dirs == ["closed"]
        data = load_image_folder(tmp_path, 4, cache=False)  # decoding skips it as well
        assert data.names == ["good.png"] and data.skipped == ["secret.png"]
    finally:
        os.chmod(tmp_path / "closed", 0o755)
        os.chmod(tmp_path / "secret.png", 0o644)


# --- entries that cannot be used: skipped, counted and named -------------------------------------


def save_images(root: Path, count: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (6, 6), (40 * i, 0, 0)).save(root / f"ok{i}.png")


def test_symlink_loops_are_counted_not_fatal(tmp_path, caplog):
    save_images(tmp_path, 2)
    (tmp_path / "loop.png").symlink_to("loop.png")  # a file link to itself
    (tmp_path / "a").symlink_to("b")  # two folder-like links pointing at each other
    (tmp_path / "b").symlink_to("a")
    index = index_folder(tmp_path)
    assert index.files == ["ok0.png", "ok1.png"]
    assert index.unreadable_files == ["loop.png"] and index.unreadable_dirs == ["a", "b"]
    assert index.unreadable == 3 and index.reasons["loop.png"] == "symlink loop"
    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        data = load_image_folder(tmp_path, 4, cache=False)
    assert data.names == ["ok0.png", "ok1.png"] and data.skipped == ["loop.png"]
    assert "could not list 2 folder(s) or link(s)" in caplog.text
    assert "a (symlink loop), b (symlink loop)" in caplog.text
    assert "skipped 1 unreadable image file(s)" in caplog.text and "loop.png" in caplog.text


def test_dangling_link_is_skipped_by_load_and_check(tmp_path, caplog):
    root = tmp_path / "imgs"
    save_images(root, 2)
    (root / "gone.png").symlink_to(tmp_path / "deleted.png")
    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        data = load_image_folder(root, 4, cache_dir=tmp_path / "cache")  # hashing stats files
    assert len(data) == 2 and data.skipped == ["gone.png"]
    assert "gone.png" in caplog.text and "broken link" in caplog.text
    again = load_image_folder(root, 4, cache_dir=tmp_path / "cache")  # cache hit: still named
    assert again.skipped == ["gone.png"]
    report = check_data(str(root))
    assert report["total"] == 2
    assert report["unreadable"] == ["gone.png (broken link: its target does not exist)"]


def make_undecodable_name(root: Path) -> None:
    """An image whose file name holds the byte 0xff, which is not valid UTF-8."""
    path = os.fsencode(root) + b"/bad\xff.png"
    try:
        with open(path, "wb") as file:
            Image.new("RGB", (6, 6)).save(file, format="PNG")
    except OSError:  # file systems that insist on UTF-8 names (macOS)
        pytest.skip("this file system refuses names that are not valid UTF-8")


def test_name_not_valid_utf8_is_skipped_and_named(tmp_path, caplog):
    root = tmp_path / "imgs"
    save_images(root, 2)
    make_undecodable_name(root)
    index = index_folder(root)
    assert index.files == ["ok0.png", "ok1.png"] and index.unreadable_files == ["bad\\xff.png"]
    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        data = load_image_folder(root, 4, cache_dir=tmp_path / "cache")
    assert len(data) == 2 and data.skipped == ["bad\\xff.png"]
    assert "bad\\xff.png" in caplog.text and "not valid UTF-8" in caplog.text
    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        assert scan_folder(root)[0] == ["ok0.png", "ok1.png"]  # logged there too, not silent
    assert caplog.text.count("bad\\xff.png") == 2


def test_data_check_cli_names_every_skipped_entry(tmp_path, capsys):
    save_images(tmp_path, 2)
    (tmp_path / "loop.png").symlink_to("loop.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")
    make_undecodable_name(tmp_path)
    assert main(["data", "check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "images:       2" in out and "unreadable:   3" in out
    assert "loop.png (symlink loop)" in out and "gone.png (broken link" in out
    assert "bad\\xff.png (name is not valid UTF-8)" in out


# --- cache temporaries ----------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="pids are only probed on POSIX")
def test_stale_temporary_cache_files_are_removed(tmp_path, caplog):
    save_images(tmp_path / "imgs", 2)
    cache = tmp_path / "cache"
    cache.mkdir()
    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()  # its pid now belongs to no process
    dead = cache / f"{'a' * 32}.{finished.pid}.tmp.npy"  # a killed run's memmap
    dead_json = cache / f"{'b' * 32}.json.{finished.pid}@{socket.gethostname()}.tmp"
    live = cache / f"{'c' * 32}.{os.getpid()}.tmp.npy"  # a run still decoding
    other_host = cache / f"{'d' * 32}.{finished.pid}@some-other-host.tmp.npy"
    not_ours = cache / f"notes.{finished.pid}.tmp.npy"
    for path in (dead, dead_json, live, other_host, not_ours):
        path.write_bytes(b"partial")
    with caplog.at_level(logging.INFO, logger="selfsup.data"):
        load_image_folder(tmp_path / "imgs", 4, cache_dir=cache)
    assert not dead.exists() and not dead_json.exists()
    assert live.exists() and other_host.exists() and not_ours.exists()
    assert "removed 2 stale temporary file(s)" in caplog.text
    assert not list(cache.glob(f"*{os.getpid()}@*"))  # this run's own temporaries are gone
