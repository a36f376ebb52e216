"""selfsup.data: built-in wafers, image folders, arrays, loaders, check."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup.data.check as check
import selfsup.data.folder_cache as folder_cache
import selfsup.data.folders as folders
from selfsup.cli import main
from selfsup.data import (
    BatchLoader,
    ImageDataset,
    check_data,
    format_check,
    list_image_files,
    load_arrays,
    load_dataset,
    load_image_folder,
    load_wafer_subset,
    make_dataloader,
    nearest_resize,
)
from selfsup.data.folders import decode_image
from selfsup.data.wafers import packaged_path, read_wafer_file

WAFER_CLASSES = [
    "Center",
    "Donut",
    "Edge-Loc",
    "Edge-Ring",
    "Loc",
    "Near-full",
    "Random",
    "Scratch",
    "none",
]
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


# --- built-in wafers ------------------------------------------------------------------------------


def test_nearest_resize_by_hand():
    small = np.arange(16, dtype=np.uint8).reshape(4, 4)
    doubled = nearest_resize(small, 8)
    assert np.array_equal(doubled, np.repeat(np.repeat(small, 2, axis=0), 2, axis=1))
    big = np.arange(64, dtype=np.uint8).reshape(8, 8)
    # src = floor((dst + 0.5) * 8 / 4) = 1, 3, 5, 7
    assert np.array_equal(nearest_resize(big, 4), big[[1, 3, 5, 7]][:, [1, 3, 5, 7]])
    # 3 -> 5: floor((d + 0.5) * 3 / 5) = 0, 0, 1, 2, 2; non-square sizes too
    wide = np.arange(3, dtype=np.uint8)[None, :]
    assert nearest_resize(wide, (2, 5)).tolist() == [[0, 0, 1, 2, 2], [0, 0, 1, 2, 2]]


def test_wafer_split_sizes_classes_and_values():
    sizes = {
        "train_1": 623,
        "train_10": 6225,
        "train_20": 12449,
        "train_29": 18051,
        "val": 12450,
        "test": 12450,
    }
    for split, n in sizes.items():
        assert len(load_wafer_subset(split, image_size=8)) == n
    assert len(load_wafer_subset("train", image_size=8)) == 623 + 6225 + 12449 + 18051
    assert len(load_wafer_subset("val_data", image_size=8)) == 12450
    assert len(load_wafer_subset(["train_1_split", "test"], image_size=8)) == 623 + 12450
    data = load_wafer_subset("all", image_size=8)
    assert len(data) == 62248
    assert data.images.shape == (62248, 1, 8, 8) and data.images.dtype == torch.uint8
    assert data.class_names == WAFER_CLASSES and data.style == "wafer" and data.in_channels == 1
    assert set(torch.unique(data.images).tolist()) == {0, 1, 2}
    counts = data.class_counts()
    assert counts["none"] == 36729 and counts["Near-full"] == 149 and counts["Center"] == 4294


def test_wafer_resize_matches_nearest_on_raw_maps():
    raw = read_wafer_file(str(packaged_path()))
    data = load_wafer_subset("all", image_size=8)  # "all" keeps the file's order
    for k in (0, 1, 2, 1000, 62247):
        start, end = raw["offsets"][k], raw["offsets"][k + 1]
        original = raw["maps_flat"][start:end].reshape(raw["shapes"][k])
        assert np.array_equal(data.images[k, 0].numpy(), nearest_resize(original, 8))
        assert data.labels[k] == raw["labels"][k]


def test_wafer_load_is_cached_in_memory():
    first = load_wafer_subset("all", image_size=32)
    again = load_dataset("wafers", image_size=32, split="all")
    assert again is first  # the same object: nothing was decoded or resized again


def test_wafer_errors():
    with pytest.raises(ValueError, match="unknown wafer split 'training'.*train_1.*val"):
        load_wafer_subset("training", image_size=8)
    with pytest.raises(ValueError, match="in_channels=3.*'wafers' has 1 channel"):
        load_dataset("wafers", image_size=8, in_channels=3, split="train_1")


# --- image folders --------------------------------------------------------------------------------


def save_image(path: Path, color, size=(6, 6), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    target = tmp_path / "cache"
    monkeypatch.setenv("SELFSUP_CACHE", str(target))
    return target


def test_labelled_folder_classes_and_colours(tmp_path, cache_dir):
    root = tmp_path / "imgs"
    save_image(root / "cats" / "a.png", RED)
    save_image(root / "cats" / "deep" / "b.jpg", RED, size=(9, 7))
    save_image(root / "dogs" / "c.PNG", BLUE)
    data = load_image_folder(root, 4)
    assert data.class_names == ["cats", "dogs"]
    assert data.names == ["cats/a.png", "cats/deep/b.jpg", "dogs/c.PNG"]
    assert data.labels.tolist() == [0, 0, 1]
    assert data.images.shape == (3, 3, 4, 4) and data.style == "natural"
    assert data.images[0, :, 0, 0].tolist() == [255, 0, 0]
    assert data.images[2, :, 0, 0].tolist() == [0, 0, 255]


def test_flat_folder_detection(tmp_path, cache_dir):
    root = tmp_path / "flat"
    save_image(root / "top.png", RED)
    save_image(root / "sub" / "x.png", BLUE)
    save_image(root / "other" / "y.png", BLUE)
    assert load_image_folder(root, 4).labels is None  # an image at the top: flat
    one = tmp_path / "one"
    save_image(one / "only" / "x.png", RED)
    save_image(one / "only" / "y.png", RED)
    assert load_image_folder(one, 4).labels is None  # a single subfolder: flat
    forced = load_image_folder(one, 4, labelled=True)
    assert forced.class_names == ["only"] and forced.labels.tolist() == [0, 0]
    with pytest.raises(ValueError, match="not in a class subfolder: top.png"):
        load_image_folder(root, 4, labelled=True)


def test_hidden_files_are_skipped(tmp_path, cache_dir):
    root = tmp_path / "h"
    save_image(root / "a.png", RED)
    save_image(root / ".hidden.png", RED)
    save_image(root / ".git" / "b.png", RED)
    (root / "notes.txt").write_text("not an image")
    files, hidden = list_image_files(root)
    assert files == ["a.png"] and hidden == 2
    assert load_image_folder(root, 4).names == ["a.png"]


def test_centre_crop_and_grayscale(tmp_path, cache_dir):
    image = np.zeros((4, 8, 3), dtype=np.uint8)  # H=4, W=8: red | green x4 | blue
    image[:, :2] = RED
    image[:, 2:6] = GREEN
    image[:, 6:] = BLUE
    root = tmp_path / "crop"
    root.mkdir()
    Image.fromarray(image).save(root / "wide.png")
    rgb = load_image_folder(root, 4)
    assert (rgb.images[0, 1] == 255).all() and (rgb.images[0, [0, 2]] == 0).all()
    gray = load_image_folder(root, 2, in_channels=1)
    assert gray.images.shape == (1, 1, 2, 2) and gray.in_channels == 1
    assert gray.images.flatten().tolist() == [150] * 4  # PIL "L": 587 * 255 // 1000


def test_corrupt_file_skipped_and_logged(tmp_path, cache_dir, caplog):
    root = tmp_path / "c"
    save_image(root / "good.png", GREEN)
    (root / "bad.png").write_bytes(np.random.default_rng(0).bytes(300))
    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        data = load_image_folder(root, 4)
    assert len(data) == 1 and data.names == ["good.png"] and data.skipped == ["bad.png"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 unreadable" in warnings[0].getMessage()
    assert "bad.png" in warnings[0].getMessage()
    again = load_image_folder(root, 4)  # from the cache: still knows what was skipped
    assert again.skipped == ["bad.png"] and torch.equal(again.images, data.images)


def test_folder_errors(tmp_path, cache_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(
        ValueError, match=r"image folder '.*empty' holds no images \(looked for .png"
    ):
        load_image_folder(empty, 8)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere", 8)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(str(tmp_path / "nowhere"), image_size=8)


def test_folder_cache_hit_skips_decoding(tmp_path, monkeypatch):
    root = tmp_path / "cached"
    for i in range(3):
        save_image(root / f"{i}.png", (40 * i, 0, 0))
    cache = tmp_path / "cache"
    first = load_image_folder(root, 4, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("PIL was called on a cache hit")

    monkeypatch.setattr(folders.Image, "open", no_decoding)
    second = load_image_folder(root, 4, cache_dir=cache)
    assert torch.equal(first.images, second.images) and second.names == first.names
    monkeypatch.undo()
    save_image(root / "1.png", (0, 200, 0), size=(7, 7))  # a changed file misses the cache
    third = load_image_folder(root, 4, cache_dir=cache)
    assert third.images[1, :, 0, 0].tolist() == [0, 200, 0]
    assert len(list(cache.glob("*.npy"))) == 2
    uncached = load_image_folder(root, 4, cache=False, cache_dir=tmp_path / "unused")
    assert torch.equal(uncached.images, third.images) and not (tmp_path / "unused").exists()


def test_folder_decoding_in_worker_processes(tmp_path, monkeypatch):
    root = tmp_path / "pool"
    for i in range(6):
        save_image(root / f"{i}.png", (i * 10, 0, 0))
    (root / "broken.png").write_bytes(b"no image")
    monkeypatch.setattr(folders, "_POOL_MIN_FILES", 0)
    data = load_image_folder(root, 4, num_workers=2, cache=False)
    assert data.images[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40, 50]
    assert data.skipped == ["broken.png"]


def grey_gradient(dtype) -> np.ndarray:
    """64 x 64, each row 0 .. 65535 from left to right."""
    return np.tile(np.linspace(0, 65535, 64).round().astype(dtype), (64, 1))


@pytest.mark.parametrize(("name", "dtype"), [("g.png", np.uint16), ("g.tif", np.int32)])
def test_16bit_grey_is_scaled_not_clipped(tmp_path, name, dtype):
    """PNG 16-bit opens as PIL "I;16", the int32 TIFF as "I"; 65535 must map to 255."""
    Image.fromarray(grey_gradient(dtype)).save(tmp_path / name)
    assert Image.open(tmp_path / name).mode in ("I;16", "I")
    grey = decode_image(tmp_path / name, 64, "L")[0]
    assert grey.min() == 0 and grey.max() == 255
    assert abs(grey.mean() - 127.5) < 1  # clipped, it was 251
    assert np.array_equal(grey[0], np.rint(grey_gradient(np.float64)[0] / 257))
    rgb = decode_image(tmp_path / name, 64, "RGB")
    assert np.array_equal(rgb[0], grey) and np.array_equal(rgb[2], grey)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_exif_orientation_is_applied(tmp_path, ext):
    """Stored 32 wide x 16 high, left half red, right half blue, EXIF Orientation 6: shown
    turned 90 degrees clockwise (16 wide x 32 high), red on top. The centre crop then holds
    red rows above blue rows; ignoring the tag gives red columns left of blue columns."""
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, :16] = RED
    stored[:, 16:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / f"phone.{ext}", exif=exif)
    red = decode_image(tmp_path / f"phone.{ext}", 16, "RGB")[0].astype(int)
    assert (red[:7] > 200).all() and (red[9:] < 50).all()  # JPEG blurs the rows at the edge
    assert (np.abs(red[:, :1] - red) < 3).all()  # every row one colour: not sideways


def test_caches_of_the_old_decoding_are_not_reused(tmp_path, monkeypatch):
    """Decoding changed (EXIF, 16-bit): a cache written by the old code must miss."""
    save_image(tmp_path / "imgs" / "a.png", RED)
    monkeypatch.setattr(folder_cache, "_CACHE_VERSION", "selfsup-folder-v1")
    load_image_folder(tmp_path / "imgs", 4, cache_dir=tmp_path / "cache")
    monkeypatch.undo()
    load_image_folder(tmp_path / "imgs", 4, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


# --- arrays ---------------------------------------------------------------------------------------


def test_array_layouts(tmp_path):
    base = np.random.default_rng(0).integers(0, 256, size=(5, 3, 8, 8), dtype=np.uint8)
    layouts = {
        "nchw.npy": base,
        "nhwc.npy": base.transpose(0, 2, 3, 1),
        "nhwc4.npy": np.concatenate([base, base[:, :1]], axis=1).transpose(0, 2, 3, 1),
    }
    for name, array in layouts.items():
        np.save(tmp_path / name, array)
        data = load_arrays(tmp_path / name, image_size=8)
        assert torch.equal(data.images, torch.from_numpy(base)), name
        assert data.labels is None and data.style == "natural"
    gray = base[:, 0] + 3  # values above 2: natural, not wafer maps
    np.save(tmp_path / "nhw.npy", gray)
    np.save(tmp_path / "nhw1.npy", gray[..., None])
    for name in ("nhw.npy", "nhw1.npy"):
        data = load_arrays(tmp_path / name)
        assert data.in_channels == 1 and torch.equal(data.images[:, 0], torch.from_numpy(gray))


def test_array_labels_float_conversion_and_resize(tmp_path):
    images = np.zeros((3, 4, 6), dtype=np.float32)  # [N, H, W], non-square
    images[0] = 0.2
    images[1] = 1.0
    np.savez(tmp_path / "f.npz", images=images, labels=np.array(["b", "a", "b"]))
    data = load_arrays(tmp_path / "f.npz", image_size=2)
    assert data.images.shape == (3, 1, 2, 2)
    assert data.images[:, 0, 0, 0].tolist() == [51, 255, 0]  # round(0.2 * 255) = 51
    assert data.class_names == ["a", "b"] and data.labels.tolist() == [1, 0, 1]


def test_wafer_like_arrays_resize_nearest(tmp_path):
    maps = np.random.default_rng(1).integers(0, 3, size=(4, 4, 4), dtype=np.int64)
    np.savez(tmp_path / "w.npz", images=maps, labels=[0, 1, 0, 1], class_names=["x", "y"])
    data = load_dataset(str(tmp_path / "w.npz"), image_size=8, in_channels=1)
    assert data.style == "wafer" and data.class_names == ["x", "y"]
    assert np.array_equal(data.images[2, 0].numpy(), nearest_resize(maps[2].astype(np.uint8), 8))
    with pytest.raises(ValueError, match="in_channels=3.*has 1 channel"):
        load_dataset(str(tmp_path / "w.npz"), image_size=8, in_channels=3)


def test_array_errors_name_the_file(tmp_path):
    cases = {
        "int16.npy": (np.full((2, 4, 4), 1000, dtype=np.int16), "int16.*1000"),
        "complex.npy": (np.zeros((2, 4, 4), dtype=np.complex64), "unsupported.*complex64"),
        "float.npy": (np.full((2, 4, 4), 2.0), r"float.*\[0, 1\]"),
        "ndim.npy": (np.zeros((2, 4), dtype=np.uint8), r"shape \(2, 4\)"),
        "chan.npy": (np.zeros((2, 5, 6, 7), dtype=np.uint8), "channel axis"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(ValueError, match=message) as err:
            load_arrays(tmp_path / name)
        assert name in str(err.value)
    np.savez(tmp_path / "nokey.npz", x=np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="no 'images' array.*x"):
        load_arrays(tmp_path / "nokey.npz")
    (tmp_path / "table.csv").write_text("1,2")
    with pytest.raises(ValueError, match="table.csv"):
        load_dataset(str(tmp_path / "table.csv"), image_size=8)
    np.save(tmp_path / "ok.npy", np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="split='val'.*wafers only"):
        load_dataset(str(tmp_path / "ok.npy"), image_size=4, split="val")


# --- ImageDataset ---------------------------------------------------------------------------------


def numbered_dataset(n: int, labelled: bool = True) -> ImageDataset:
    """Image i is filled with value i % 256, so batches can be traced back to samples."""
    images = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8)
    images = images.view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    labels = torch.arange(n) % 3 if labelled else None
    return ImageDataset(
        images, labels, class_names=["a", "b", "c"] if labelled else None, source=f"numbers({n})"
    )


def test_image_dataset_indexing_and_subset():
    data = numbered_dataset(10)
    images, labels = data[[1, 4]]
    assert images[:, 0, 0, 0].tolist() == [1, 4] and labels.tolist() == [1, 1]
    image, label = data[5]
    assert image.shape == (1, 2, 2) and int(label) == 2
    sub = data.subset(torch.tensor([9, 0]))
    assert len(sub) == 2 and sub.images[:, 0, 0, 0].tolist() == [9, 0]
    assert sub.num_classes == 3 and sub.labels.tolist() == [0, 0]
    summary = data.summary()
    assert summary["size"] == 10 and summary["class_counts"] == {"a": 4, "b": 3, "c": 3}
    assert data.image_size == 2 and data.in_channels == 1
    unlabelled = numbered_dataset(4, labelled=False)
    assert unlabelled.num_classes is None and unlabelled[0].shape == (1, 2, 2)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4))


# --- loaders --------------------------------------------------------------------------------------


def epoch_order(loader) -> list[int]:
    return [int(v) for batch in loader for v in batch[0][:, 0, 0, 0]]


def test_loader_visits_every_sample_once_per_epoch():
    data = numbered_dataset(50)
    loader = BatchLoader(data, 8, with_labels=True)
    assert len(loader) == 6
    batches = list(loader)
    assert all(b[0].shape == (8, 1, 2, 2) and b[0].dtype == torch.uint8 for b in batches)
    for images, labels in batches:  # labels travel with their images
        assert (images[:, 0, 0, 0].long() % 3).tolist() == labels.tolist()
    seen = epoch_order(batches)
    assert len(set(seen)) == 48
    full = BatchLoader(data, 8, drop_last=False, with_labels=True)
    assert len(full) == 7 and sorted(epoch_order(full)) == list(range(50))
    ordered = BatchLoader(data, 10, shuffle=False, with_labels=True)
    assert epoch_order(ordered) == list(range(50))


def test_loader_epochs_and_seeds():
    data = numbered_dataset(40)
    loader = BatchLoader(data, 10, with_labels=True)
    epoch0 = epoch_order(loader)
    assert epoch_order(loader) == epoch0  # same epoch, same order
    loader.set_epoch(1)
    epoch1 = epoch_order(loader)
    assert epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0) == list(range(40))
    assert epoch_order(BatchLoader(data, 10, with_labels=True)) == epoch0
    assert epoch_order(BatchLoader(data, 10, seed=5, with_labels=True)) != epoch0


def test_loader_shards_disjoint_and_equal():
    data = numbered_dataset(51)
    shards = [
        epoch_order(BatchLoader(data, 5, rank=r, world_size=2, drop_last=False, with_labels=True))
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 25
    assert not set(shards[0]) & set(shards[1])
    assert len(BatchLoader(data, 5, rank=1, world_size=2)) == 5


def test_loader_batch_too_large():
    data = numbered_dataset(300)
    with pytest.raises(ValueError, match="batch size 512 is larger than the 300 images of numbers"):
        BatchLoader(data, 512)
    with pytest.raises(ValueError, match="larger than the 150 images per rank"):
        BatchLoader(data, 200, world_size=2)
    with pytest.raises(ValueError, match="no labels"):
        BatchLoader(numbered_dataset(8, labelled=False), 4, with_labels=True)


def test_make_dataloader_matches_batch_loader():
    data = numbered_dataset(30)
    dataloader = make_dataloader(data, 6, seed=3, with_labels=True)
    reference = BatchLoader(data, 6, seed=3, with_labels=True)
    assert len(dataloader) == len(reference) == 5
    assert epoch_order(dataloader) == epoch_order(reference)
    dataloader.set_epoch(2)
    reference.set_epoch(2)
    assert epoch_order(dataloader) == epoch_order(reference)
    dataloader.sampler.set_epoch(3)  # what Lightning calls at each epoch start
    reference.set_epoch(3)
    assert epoch_order(dataloader) == epoch_order(reference)
    plain = make_dataloader(numbered_dataset(12, labelled=False), 4)
    assert all(isinstance(b, torch.Tensor) and b.shape == (4, 1, 2, 2) for b in plain)


# --- check ----------------------------------------------------------------------------------------


def test_check_folder(tmp_path):
    root = tmp_path / "chk"
    save_image(root / "a" / "1.png", RED, size=(10, 20))
    save_image(root / "a" / "2.png", RED, size=(10, 20))
    save_image(root / "b" / "3.png", 100, size=(30, 30), mode="L")
    (root / "b" / "4.png").write_bytes(b"garbage")
    save_image(root / "b" / ".5.png", BLUE)
    report = check_data(str(root), image_size=16)
    assert report["total"] == 4 and report["class_counts"] == {"a": 2, "b": 2}
    assert report["sizes"]["height"] == [20, 30] and report["sizes"]["width"] == [10, 30]
    assert report["sizes"]["most_common"][0] == [20, 10, 2]
    assert report["sizes"]["smaller_than_image_size"] == 2
    assert report["channels"] == {"RGB": 2, "L": 1}
    assert len(report["unreadable"]) == 1 and "b/4.png" in report["unreadable"][0]
    assert report["hidden_skipped"] == 1
    text = format_check(report)
    assert "labelled" in text and "unreadable:   1" in text and "b/4.png" in text


def test_check_wafers_and_arrays(tmp_path):
    report = check_data("wafers")
    assert report["total"] == 62248 and report["splits"]["train_1"] == 623
    assert report["class_counts"]["none"] == 36729
    assert report["sizes"]["height"] == [22, 212]
    assert report["sizes"]["most_common"][0] == [25, 27, 15905]
    assert "Edge-Ring" in format_check(report)
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 8, 8, 3), np.uint8), labels=[0, 1, 1, 1])
    arrays = check_data(str(tmp_path / "a.npz"))
    assert arrays["total"] == 4 and arrays["channels"] == {"3": 4}
    assert arrays["class_counts"] == {"0": 1, "1": 3}
    assert "unlabelled" not in format_check(arrays)


def save_truncated_jpeg(path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header survives, half the pixels do not


def test_full_check_finds_truncated_jpeg(tmp_path, monkeypatch, caplog):
    save_image(tmp_path / "good.jpg", GREEN)
    save_truncated_jpeg(tmp_path / "cut.jpg")
    headers = check_data(str(tmp_path))
    assert headers["check"] == "header check" and headers["unreadable"] == []
    assert "header check (headers only; --full" in format_check(headers)
    monkeypatch.setattr(check, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="selfsup.data"):
        full = check_data(str(tmp_path), full=True)
    assert full["check"] == "full decode" and full["total"] == 2
    assert len(full["unreadable"]) == 1
    assert full["unreadable"][0].startswith("cut.jpg (OSError: image file is truncated")
    assert "full decode of" in caplog.text and "2 / 2 images" in caplog.text
    text = format_check(full)
    assert "full decode (every image decoded)" in text and "unreadable:   1" in text


def test_data_check_cli_full(tmp_path, capsys):
    save_image(tmp_path / "good.jpg", GREEN)
    save_truncated_jpeg(tmp_path / "cut.jpg")
    assert main(["data", "check", str(tmp_path)]) == 0
    assert "unreadable:   0" in capsys.readouterr().out
    assert main(["data", "check", "--full", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "full decode" in out and "unreadable:   1" in out and "cut.jpg (OSError" in out


def test_data_check_reports_wafer_files_the_tool_writes(tmp_path, capsys):
    from selfsup.data.synthetic_wafers import generate_wafer_maps
    from selfsup.data.wm811k_pickles import WaferMaps, write_wafer_npz

    synthetic = write_wafer_npz(generate_wafer_maps(90, size=(20, 21), seed=0), tmp_path / "s.npz")
    report = check_data(str(synthetic))
    assert report["total"] == 90 and report["splits"] == {"test": 9, "train": 72, "val": 9}
    assert report["class_counts"]["Center"] == 10
    assert report["split_class_counts"]["val"]["Scratch"] == 1
    assert report["sizes"]["height"][0] >= 20 and report["sizes"]["height"][1] <= 21
    codes = [np.ones((3, 4), np.uint8), np.ones((5, 5), np.uint8), np.zeros((3, 4), np.uint8)]
    converted = WaferMaps(
        codes, [0, -1, 1], ["none", "Scratch"], np.array(["Training", "", "Test"])
    )
    report = check_data(str(write_wafer_npz(converted, tmp_path / "c.npz")))
    assert report["splits"] == {"unlabeled": 1, "Test": 1, "Training": 1}
    assert report["class_counts"] == {"none": 1, "Scratch": 1, "unlabeled": 1}
    assert report["split_class_counts"]["unlabeled"] is None
    assert report["sizes"]["most_common"][0] == [3, 4, 2]
    assert main(["data", "check", str(synthetic)]) == 0
    out = capsys.readouterr().out
    assert "wafer maps" in out and "splits:       test 9, train 72, val 9" in out
    assert "    val          Center 1, Donut 1, " in out
