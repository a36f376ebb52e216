"""MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), plain or gzipped.

Layout (LeCun et al., the MNIST database page): a 4-byte magic ``0x00 0x00 <dtype code> <ndim>``,
then ``ndim`` big-endian uint32 sizes, then the values in C order, big-endian. Dtype codes:
0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64.

```
images, labels = find_idx_pair("/usr/share/datasets/fashion-mnist", split="train")
data = load_idx_dataset(images, labels, class_names=FASHION_MNIST_CLASSES)   # [N, 1, 28, 28]
test = load_dataset("/usr/share/datasets/fashion-mnist:test", image_size=32)   # as a data spec
```
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from selfsup.data.arrays import resize_bilinear, to_label_indices, to_uint8
from selfsup.data.image_dataset import ImageDataset

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"

# the standard file-name prefixes of each split (t10k is MNIST's name for its test set)
SPLIT_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))
# A folder whose name holds the key gets these class names when none are given.
KNOWN_CLASS_NAMES = {"fashion": FASHION_MNIST_CLASSES}


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"IDX file '{path}' is a truncated or corrupt gzip file ({err})") from err


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzip detected from the content, not the name).

    Returns a native-byte-order array of the file's dtype and shape. Raises ValueError naming
    the file for a bad magic number, an unknown dtype code, or a size that does not match the
    header (truncated file or trailing bytes).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"IDX file '{path}' does not exist")
    if not path.is_file():
        raise ValueError(f"'{path}' is a folder, not an IDX file (see find_idx_pair)")
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"'{path}' is not an IDX file: its magic number is {raw[:4].hex() or 'empty'} "
            "(expected 0x0000 followed by a dtype code and the number of dimensions)"
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} {d.name}" for c, d in IDX_DTYPES.items())
        raise ValueError(f"IDX file '{path}' has unknown dtype code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise ValueError(f"IDX file '{path}' declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"IDX file '{path}' is truncated: {len(raw)} bytes, shorter than its "
            f"{header}-byte header"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        problem = "truncated" if found < expected else "longer than its header says"
        raise ValueError(
            f"IDX file '{path}' is {problem}: shape {shape} of {dtype.name} needs {expected} "
            f"data bytes, found {found}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def load_idx_dataset(
    images_path: str | Path,
    labels_path: str | Path | None = None,
    image_size: int | None = None,
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """IDX images [N, H, W] (+ optional IDX labels [N]) as an ImageDataset uint8 [N, 1, S, S].

    image_size: None keeps the stored size (non-square images are centre-cropped); another size
    is reached by antialiased bilinear resizing (``selfsup.data.arrays.resize_bilinear``).
    Non-uint8 images follow the array rules: floats in [0, 1] are scaled to 0..255.
    """
    images_path = Path(images_path).expanduser()
    source = f"IDX '{images_path}'"
    images = read_idx(images_path)
    if images.ndim != 3:
        raise ValueError(
            f"IDX file '{images_path}' holds shape {images.shape}: expected images [N, H, W]"
        )
    images = to_uint8(images, str(images_path))
    tensor = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    side = min(tensor.shape[-2:])
    size = image_size if image_size is not None else side
    if size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if tensor.shape[-1] != size or tensor.shape[-2] != size:
        tensor = resize_bilinear(tensor, size)
    labels, names = None, list(class_names) if class_names is not None else None
    if labels_path is not None:
        labels_path = Path(labels_path).expanduser()
        raw_labels = read_idx(labels_path)
        if raw_labels.ndim != 1:
            raise ValueError(
                f"IDX label file '{labels_path}' holds shape {raw_labels.shape}: expected [N]"
            )
        if len(raw_labels) != len(images):
            raise ValueError(
                f"IDX label file '{labels_path}' holds {len(raw_labels)} labels but "
                f"'{images_path}' holds {len(images)} images"
            )
        labels, names = to_label_indices(raw_labels, names, len(images), str(labels_path))
    return ImageDataset(tensor, labels, class_names=names, style="natural", source=source)


def _idx_pattern(kind: str, prefixes: Sequence[str]) -> re.Pattern[str]:
    # train-images-idx3-ubyte, train-images.idx3-ubyte (Kaggle) and emnist-letters-train-...
    ndim = 3 if kind == "images" else 1
    alternatives = "|".join(re.escape(p) for p in prefixes)
    return re.compile(rf"^(?:.+-)?(?:{alternatives})-{kind}[-.]idx{ndim}-ubyte(?:\.gz)?$")


def _pick(folder: Path, kind: str, split: str) -> Path | None:
    pattern = _idx_pattern(kind, SPLIT_PREFIXES[split])
    found = sorted(p for p in folder.iterdir() if p.is_file() and pattern.match(p.name))
    # one logical file may be there twice, plain and gzipped: the plain one reads faster
    by_stem: dict[str, Path] = {}
    for p in found:
        stem = p.name[:-3] if p.name.endswith(".gz") else p.name
        if stem not in by_stem or not p.name.endswith(".gz"):
            by_stem[stem] = p
    if len(by_stem) > 1:
        names = ", ".join(sorted(p.name for p in by_stem.values()))
        raise ValueError(
            f"folder '{folder}' holds several {split} {kind} IDX files ({names}); "
            "pass the files explicitly"
        )
    return next(iter(by_stem.values()), None)


def find_idx_pair(folder: str | Path, split: str = "train") -> tuple[Path, Path | None]:
    """(images file, labels file or None) of ``split`` ("train" or "test") in ``folder``.

    Recognises the standard names, gzipped or not: ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``,
    also with a dataset prefix (``emnist-letters-train-...``) or ``.idx3`` (Kaggle copies).
    """
    folder = Path(folder).expanduser()
    if split not in SPLIT_PREFIXES:
        raise ValueError(f"IDX split must be one of {sorted(SPLIT_PREFIXES)}, got '{split}'")
    if not folder.is_dir():
        raise FileNotFoundError(f"IDX folder '{folder}' does not exist")
    images = _pick(folder, "images", split)
    if images is None:
        prefix = SPLIT_PREFIXES[split][0]
        raise FileNotFoundError(
            f"folder '{folder}' has no {split} IDX images (looked for "
            f"{prefix}-images-idx3-ubyte[.gz]; it holds: "
            f"{', '.join(sorted(p.name for p in folder.iterdir())[:10]) or 'nothing'})"
        )
    return images, _pick(folder, "labels", split)


def is_idx_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds train or test IDX images under a standard name."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return False
    patterns = [_idx_pattern("images", prefixes) for prefixes in SPLIT_PREFIXES.values()]
    return any(any(pat.match(p.name) for pat in patterns) for p in folder.iterdir())


def known_class_names(folder: str | Path) -> tuple[str, ...] | None:
    """Class names told by the folder's name: Fashion-MNIST's for ``*fashion*``, else None."""
    name = Path(folder).expanduser().resolve().name.lower()
    return next((names for key, names in KNOWN_CLASS_NAMES.items() if key in name), None)


def load_idx_folder(
    folder: str | Path,
    split: str = "train",
    image_size: int | None = None,
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """``load_idx_dataset`` on the ``split`` files that ``find_idx_pair`` finds in ``folder``.

    ``class_names`` None: ``known_class_names(folder)`` (e.g. Fashion-MNIST's), else indices.
    """
    images, labels = find_idx_pair(folder, split)
    names = class_names if class_names is not None else known_class_names(folder)
    return load_idx_dataset(images, labels, image_size=image_size, class_names=names)
