"""Data sources decoded once to a fixed-size uint8 tensor, and loaders that only index it.

```
data = load_dataset("wafers", image_size=32, split="train")   # or a folder, or a .npy/.npz
data.images            # uint8 [N, C, S, S]; data.labels int64 [N] or None
loader = make_dataloader(data, batch_size=256, rank=0, world_size=1)
```
"""

from selfsup.data.arrays import load_arrays
from selfsup.data.check import check_data, format_check
from selfsup.data.coco_crops import coco_to_crops, convert_coco_export, format_crop_counts
from selfsup.data.folders import IMAGE_EXTENSIONS, list_image_files, load_image_folder
from selfsup.data.idx import (
    FASHION_MNIST_CLASSES,
    find_idx_pair,
    is_idx_folder,
    load_idx_dataset,
    load_idx_folder,
    read_idx,
)
from selfsup.data.image_dataset import ImageDataset
from selfsup.data.indexed import IndexedDataset
from selfsup.data.loader import BatchLoader, EpochDataLoader, make_dataloader
from selfsup.data.spec import load_dataset
from selfsup.data.torch_dataset import as_image_dataset
from selfsup.data.wafers import load_wafer_subset, nearest_resize
from selfsup.data.wm811k_pickles import (
    WaferMaps,
    convert_wafers,
    read_wafer_npz,
    read_wafer_pickle,
    to_dataset,
    write_wafer_npz,
)

__all__ = [
    "as_image_dataset",
    "IMAGE_EXTENSIONS",
    "BatchLoader",
    "EpochDataLoader",
    "ImageDataset",
    "IndexedDataset",
    "check_data",
    "format_check",
    "list_image_files",
    "load_arrays",
    "load_dataset",
    "load_image_folder",
    "load_wafer_subset",
    "make_dataloader",
    "nearest_resize",
    "WaferMaps",
    "convert_wafers",
    "read_wafer_npz",
    "read_wafer_pickle",
    "to_dataset",
    "write_wafer_npz",
    "coco_to_crops",
    "convert_coco_export",
    "format_crop_counts",
    "FASHION_MNIST_CLASSES",
    "find_idx_pair",
    "is_idx_folder",
    "load_idx_dataset",
    "load_idx_folder",
    "read_idx",
]
