"""as_image_dataset: torch datasets, PIL images, tensors and arrays decoded once to uint8."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, Subset
from torchvision.datasets import FakeData
from torchvision.transforms import Normalize, ToTensor

from selfsup.data.image_dataset import ImageDataset
from selfsup.data.torch_dataset import as_image_dataset
from selfsup.runtime.progress import Progress


class Samples(Dataset):
    """A map-style dataset over a list of samples, with optional ``classes``."""

    def __init__(self, samples, classes=None):
        self.samples = samples
        if classes is not None:
            self.classes = classes

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


def test_fakedata_pil_images_give_uint8_batch_and_labels():
    fake = FakeData(size=12, image_size=(3, 20, 24), num_classes=4)
    data = as_image_dataset(fake, image_size=16, progress=False)
    assert data.images.shape == (12, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [fake[i][1] for i in range(12)]
    assert data.class_names is None and data.style == "natural"
    assert "FakeData" in data.source


def test_to_tensor_floats_decode_to_the_same_bytes_as_pil():
    pil = as_image_dataset(FakeData(size=6, image_size=(3, 16, 16)), image_size=16, progress=False)
    fake = FakeData(size=6, image_size=(3, 16, 16), transform=ToTensor())
    tensors = as_image_dataset(fake, image_size=16, progress=False)
    assert torch.equal(tensors.images, pil.images)
    assert torch.equal(tensors.labels, pil.labels)


def test_float_tensors_in_unit_range_become_rounded_bytes():
    image = torch.empty(3, 4, 4)
    for channel, value in enumerate((0.0, 0.25, 1.0)):  # 0.25 * 255 = 63.75
        image[channel] = value
    data = as_image_dataset([image], image_size=4, progress=False)
    assert data.images[0, :, 0, 0].tolist() == [0, 64, 255]
    assert data.labels is None


def test_normalised_floats_are_refused_naming_the_sample():
    fake = FakeData(size=3, image_size=(3, 8, 8), transform=ToTensor())
    normalised = [(Normalize([0.5] * 3, [0.25] * 3)(x), y) for x, y in fake]
    with pytest.raises(ValueError, match=r"sample 0: float images must lie in \[0, 1\].*Normalize"):
        as_image_dataset(normalised, image_size=8, progress=False)


def test_varying_sizes_are_centre_cropped_then_resized():
    wide = np.zeros((8, 12), dtype=np.uint8)
    wide[:, 2:10] = 200  # the central 8x8 square
    big = np.full((30, 20), 90, dtype=np.uint8)
    data = as_image_dataset([wide, big], image_size=8, progress=False)
    assert data.images.shape == (2, 1, 8, 8)
    assert (data.images[0] == 200).all()  # cropped, not squeezed: no black border left
    assert (data.images[1] == 90).all()  # a flat image stays flat through the resize


def test_image_size_none_keeps_the_first_samples_shorter_side():
    data = as_image_dataset([torch.zeros(3, 10, 14), torch.zeros(3, 20, 20)], image_size=None)
    assert data.images.shape == (2, 3, 10, 10)


def test_grey_samples_become_rgb_and_rgb_becomes_grey():
    grey = torch.arange(16, dtype=torch.uint8).reshape(4, 4)  # [H, W]
    rgb = as_image_dataset([grey], image_size=4, in_channels=3, progress=False)
    assert rgb.images.shape == (1, 3, 4, 4)
    for channel in range(3):
        assert torch.equal(rgb.images[0, channel], grey)
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    grey_pil = Image.new("L", (4, 4), 7)
    # the first sample (grey) sets 1 channel; the red one is converted by luminance
    mixed = as_image_dataset([grey_pil, red, red.convert("P")], image_size=4, progress=False)
    assert mixed.images.shape == (3, 1, 4, 4)
    assert mixed.images[:, 0, 0, 0].tolist() == [7, 76, 76]  # round(0.299 * 255) = 76
    as_rgb = as_image_dataset([grey_pil, red], image_size=4, in_channels=3, progress=False)
    assert as_rgb.images[0, :, 0, 0].tolist() == [7, 7, 7]
    assert as_rgb.images[1, :, 0, 0].tolist() == [255, 0, 0]


def test_numpy_is_channels_last_and_tensors_channels_first():
    array = np.zeros((6, 6, 3), dtype=np.uint8)
    array[..., 1] = 50  # channels last: green
    tensor = torch.zeros(3, 6, 6, dtype=torch.uint8)
    tensor[2] = 70  # channels first: blue
    rgba = np.zeros((6, 6, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 30, 255  # alpha dropped
    data = as_image_dataset([array, tensor, rgba], image_size=6, progress=False)
    assert data.images[:, :, 0, 0].tolist() == [[0, 50, 0], [0, 0, 70], [30, 0, 0]]


def test_a_sample_of_another_type_is_named_by_index_and_type():
    samples = [(torch.zeros(3, 8, 8), 0), (torch.zeros(3, 8, 8), 1), ("cat.png", 2)]
    with pytest.raises(ValueError, match=r"sample 2: expected a PIL image.*got builtins\.str"):
        as_image_dataset(Samples(samples), image_size=8, progress=False)
    with pytest.raises(ValueError, match=r"sample 1: .*got shape \(2, 5, 5\)"):
        as_image_dataset([torch.zeros(1, 5, 5), torch.zeros(2, 5, 5)], image_size=5)


def test_bad_labels_are_named():
    with pytest.raises(ValueError, match="sample 1: expected an integer class index.*float"):
        as_image_dataset([(torch.zeros(8, 8), 0), (torch.zeros(8, 8), 0.5)], image_size=8)
    with pytest.raises(ValueError, match="sample 1 has no label but sample 0 has one"):
        as_image_dataset([(torch.zeros(8, 8), 0), torch.zeros(8, 8)], image_size=8)


def test_labels_absent_or_all_unlabelled_give_none():
    plain = as_image_dataset([torch.zeros(8, 8)] * 3, image_size=8, progress=False)
    assert plain.labels is None and plain.class_names is None
    stl_unlabelled = [(torch.zeros(8, 8), -1)] * 3  # STL10's "unlabeled" split: label -1
    assert as_image_dataset(stl_unlabelled, image_size=8, progress=False).labels is None


def test_tensor_labels_and_class_names_through_a_subset():
    samples = [(torch.zeros(3, 8, 8), torch.tensor(i % 3)) for i in range(6)]
    wrapped = Subset(Samples(samples, classes=["ant", "bee", "cat"]), [5, 4, 3])
    data = as_image_dataset(wrapped, image_size=8, progress=False)
    assert data.labels.tolist() == [2, 1, 0]
    assert data.class_names == ["ant", "bee", "cat"]


def test_mapping_samples_and_iterable_datasets():
    class Stream(IterableDataset):
        def __iter__(self):
            for i in range(4):
                yield {"image": torch.full((8, 8), i, dtype=torch.uint8), "label": i % 2}

    data = as_image_dataset(Stream(), image_size=8, progress=False)
    assert data.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert data.labels.tolist() == [0, 1, 0, 1]


def test_image_dataset_is_resized_and_converted():
    source = ImageDataset(torch.full((2, 1, 12, 12), 40, dtype=torch.uint8), [0, 1])
    assert as_image_dataset(source, image_size=12) is source
    data = as_image_dataset(source, image_size=6, in_channels=3)
    assert data.images.shape == (2, 3, 6, 6) and (data.images == 40).all()
    assert data.labels.tolist() == [0, 1]


def test_long_conversions_report_progress_on_the_stream():
    stream = io.StringIO()
    progress = Progress(every=0, stream=stream)
    as_image_dataset([torch.zeros(8, 8)] * 3, image_size=8, progress=progress)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("decoding torch dataset list: 1/3 images")
    assert "3/3 images (100 %)" in lines[-1] and "done in" in lines[-1]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="in_channels must be 1 .* or 3"):
        as_image_dataset([torch.zeros(8, 8)], image_size=8, in_channels=2)
    with pytest.raises(ValueError, match="holds no samples"):
        as_image_dataset([], image_size=8)
