"""IDX (MNIST-style) files: exact round trips, error messages, standard file names, IDX folders
as data specs (``DIR``, ``DIR:test``), grey <-> RGB conversion."""

import gzip

import numpy as np
import pytest
import torch
from conftest import make_idx_folder, write_idx

from selfsup.data import check_data, load_dataset
from selfsup.data.idx import (
    FASHION_MNIST_CLASSES,
    find_idx_pair,
    is_idx_folder,
    load_idx_dataset,
    load_idx_folder,
    read_idx,
)
from selfsup.data.image_dataset import ImageDataset
from selfsup.data.spec import spec_kind, split_spec


@pytest.mark.parametrize("gz", [False, True])
def test_ubyte_images_and_labels_read_back_exactly(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 4), dtype=np.uint8)
    labels = np.array([3, 0, 9, 1, 1], dtype=np.uint8)
    suffix = ".gz" if gz else ""
    ipath = write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz=gz)
    lpath = write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz=gz)
    assert np.array_equal(read_idx(ipath), images)
    assert read_idx(lpath).tolist() == [3, 0, 9, 1, 1]

    data = load_idx_dataset(ipath, lpath, class_names=FASHION_MNIST_CLASSES)
    assert data.images.shape == (5, 1, 4, 4) and data.images.dtype == torch.uint8
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.labels.tolist() == [3, 0, 9, 1, 1]
    assert data.class_names[9] == "Ankle boot" and data.style == "natural"


def test_bigendian_values_of_every_dtype(tmp_path):
    arrays = {
        "f4": np.array([[0.5, -1.25], [3.0e8, 1e-3]], dtype=np.float32),
        "f8": np.array([1.0 / 3.0, -2.5e-300], dtype=np.float64),
        "i2": np.array([-32768, 258, 32767], dtype=np.int16),
        "i4": np.array([-(2**31), 65536 + 2, 2**31 - 1], dtype=np.int32),
        "i1": np.array([-128, -1, 127], dtype=np.int8),
    }
    for kind, array in arrays.items():
        back = read_idx(write_idx(tmp_path / f"x-{kind}", array))
        assert back.dtype == np.dtype(kind) and back.dtype.isnative
        assert np.array_equal(back, array), kind
    # 258 stored big-endian is 0x01 0x02: checks the byte order, not just the round trip
    raw = (tmp_path / "x-i2").read_bytes()
    assert raw[4 + 4 + 2 : 4 + 4 + 4] == b"\x01\x02"


def test_float_images_are_scaled_and_resized(tmp_path):
    images = np.zeros((2, 8, 8), dtype=np.float32)
    images[0] = 1.0  # a white image stays white after bilinear resizing
    images[1, :, :4] = 0.5
    data = load_idx_dataset(write_idx(tmp_path / "imgs", images), image_size=4)
    assert data.images.shape == (2, 1, 4, 4) and data.labels is None
    assert data.images[0].unique().tolist() == [255]
    assert data.images[1, 0, :, 0].tolist() == [128] * 4  # round(0.5 * 255)
    assert data.images[1, 0, :, 3].tolist() == [0] * 4


def test_bad_magic_names_the_file(tmp_path):
    bad = tmp_path / "not-idx.bin"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match=r"not-idx\.bin.*magic"):
        read_idx(bad)


def test_unknown_dtype_code_names_the_file(tmp_path):
    path = write_idx(tmp_path / "odd.idx", np.zeros(3, np.uint8), code=0x0A)
    with pytest.raises(ValueError, match=r"odd\.idx.*dtype code 0x0A"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data_names_the_file(tmp_path, gz):
    path = write_idx(tmp_path / "cut", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    payload = path.read_bytes()[:-5]
    path.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(ValueError, match=r"'.*cut' is truncated.*24 data bytes, found 19"):
        read_idx(path)


def test_truncated_gzip_stream_names_the_file(tmp_path):
    path = write_idx(tmp_path / "cut.gz", np.arange(2000, dtype=np.int32), gz=True)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"cut\.gz.*gzip"):
        read_idx(path)


def test_label_count_mismatch_names_both_files(tmp_path):
    ipath = write_idx(tmp_path / "i", np.zeros((3, 2, 2), np.uint8))
    lpath = write_idx(tmp_path / "l", np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match=r"'.*l' holds 2 labels but '.*i' holds 3 images"):
        load_idx_dataset(ipath, lpath)


def test_find_idx_pair_recognises_standard_names(tmp_path):
    images = np.full((2, 3, 3), 7, np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([1, 0], np.uint8), gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:1])
    (tmp_path / "README").write_text("not an IDX file")
    assert is_idx_folder(tmp_path)
    assert find_idx_pair(tmp_path, "train") == (
        tmp_path / "train-images-idx3-ubyte.gz",
        tmp_path / "train-labels-idx1-ubyte.gz",
    )
    assert find_idx_pair(tmp_path, "test") == (tmp_path / "t10k-images-idx3-ubyte", None)
    test = load_idx_folder(tmp_path, "test")
    assert len(test) == 1 and test.labels is None
    train = load_idx_folder(tmp_path, "train", image_size=3)
    assert train.labels.tolist() == [1, 0]


def test_find_idx_pair_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        find_idx_pair(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        find_idx_pair(tmp_path, "val")
    assert not is_idx_folder(tmp_path)
    images = np.zeros((1, 2, 2), np.uint8)
    write_idx(tmp_path / "emnist-letters-train-images-idx3-ubyte", images)
    write_idx(tmp_path / "emnist-digits-train-images-idx3-ubyte", images)
    with pytest.raises(ValueError, match="several train images"):
        find_idx_pair(tmp_path, "train")


# --- IDX folders as data specs ------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_is_a_data_spec_with_train_and_test_splits(tmp_path, gz):
    folder = make_idx_folder(tmp_path / "digits", n_train=60, n_test=30, size=12, gz=gz)
    (tmp_path / "digits" / "README").write_text("an IDX folder may hold other files")
    assert spec_kind(str(folder)) == "idx" and spec_kind(f"{folder}:test") == "idx"
    train = load_dataset(str(folder), image_size=12)
    assert len(train) == 60 and train.images.shape == (60, 1, 12, 12)
    assert train.labels.tolist()[:4] == [0, 1, 2, 0] and train.class_names is None
    assert "train-images-idx3-ubyte" in train.source
    for test in (
        load_dataset(str(folder), image_size=16, split="test"),
        load_dataset(f"{folder}:test", image_size=16),
        load_dataset(f"{folder}:test", image_size=16, split="test"),
    ):
        assert len(test) == 30 and test.images.shape == (30, 1, 16, 16)
        assert "t10k-images-idx3-ubyte" in test.source
    assert len(load_dataset(f"{folder}:train", image_size=8, in_channels=1)) == 60


def test_idx_split_errors_name_the_spec(tmp_path, idx_folder):
    with pytest.raises(ValueError, match=r"names the split 'test' but split='train'"):
        load_dataset(f"{idx_folder}:test", image_size=8, split="train")
    with pytest.raises(ValueError, match=r"'.*idx' has the splits train, test, not 'val'"):
        load_dataset(str(idx_folder), image_size=8, split="val")
    with pytest.raises(ValueError, match=r"in_channels=3 but the data '.*idx' has 1 channel"):
        load_dataset(str(idx_folder), image_size=8, in_channels=3)
    with pytest.raises(FileNotFoundError, match=r"data '.*nowhere:test'.*does not exist"):
        spec_kind(str(tmp_path / "nowhere:test"))
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(ValueError, match=r"':test' picks a split of an IDX folder.*'.*images'"):
        load_dataset(f"{images}:test", image_size=8)
    assert spec_kind(str(images)) == "folder"


def test_only_train_and_test_suffixes_split_and_never_an_existing_path(tmp_path):
    assert split_spec("data/fmnist:test") == ("data/fmnist", "test")
    assert split_spec("data/fmnist:val") == ("data/fmnist:val", None)
    assert split_spec("wafers") == ("wafers", None)
    odd = make_idx_folder(tmp_path / "run:test", n_train=6, n_test=3, size=6)
    assert split_spec(str(odd)) == (str(odd), None)  # a real folder called 'run:test'
    assert len(load_dataset(str(odd), image_size=6)) == 6


def test_fashion_mnist_folder_gets_its_class_names(tmp_path):
    folder = make_idx_folder(tmp_path / "fashion-mnist", n_train=9, n_test=3, size=6)
    data = load_dataset(f"{folder}:test", image_size=6)
    assert data.class_names == list(FASHION_MNIST_CLASSES)
    assert data.class_counts()["T-shirt/top"] == 1


def test_data_check_reports_idx_splits_and_classes(idx_folder):
    report = check_data(str(idx_folder), image_size=16)
    assert report["kind"].startswith("IDX folder") and report["total"] == 90
    assert report["splits"] == {"train": 60, "test": 30}
    assert report["class_counts"] == {"0": 30, "1": 30, "2": 30}
    assert report["sizes"]["smaller_than_image_size"] == 90
    assert check_data(f"{idx_folder}:test")["splits"] == {"test": 30}


def test_with_channels_repeats_grey_and_takes_the_luminance_of_rgb():
    grey = ImageDataset(torch.tensor([[[[0, 100], [200, 255]]]], dtype=torch.uint8), [1])
    rgb = grey.with_channels(3)
    assert rgb.images.shape == (1, 3, 2, 2) and rgb.labels.tolist() == [1]
    assert all(torch.equal(rgb.images[:, c], grey.images[:, 0]) for c in range(3))
    assert "grey -> RGB" in rgb.source and grey.with_channels(1) is grey
    # pure red, green, blue, white: round(255 * 0.299), round(255 * 0.587), round(255 * 0.114)
    pixels = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]])
    colours = ImageDataset(pixels.T.reshape(1, 3, 2, 2).to(torch.uint8))
    assert colours.with_channels(1).images.flatten().tolist() == [76, 150, 29, 255]
    assert torch.equal(rgb.with_channels(1).images, grey.images)  # exact round trip
    two = ImageDataset(torch.zeros(1, 2, 2, 2, dtype=torch.uint8), source="two-channel data")
    with pytest.raises(ValueError, match="two-channel data: cannot convert 2 channel"):
        two.with_channels(3)
