"""A dataset wrapper that adds each sample's index, for memory-bank methods in your own loop.

```
for images, labels, indices in DataLoader(IndexedDataset(cifar), batch_size=256, shuffle=True):
    loss = instdisc(images, indices=indices)
```
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset


class IndexedDataset(Dataset):
    """``dataset[i]`` followed by ``i``: a tuple sample ``(x, y)`` becomes ``(x, y, i)``,
    anything else ``x`` becomes ``(x, i)``. ``len`` is the wrapped dataset's."""

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(
                f"IndexedDataset wraps a map-style dataset (with __getitem__ and __len__), got "
                f"{type(dataset).__name__}"
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        sample = self.dataset[index]
        if isinstance(sample, tuple):
            return (*sample, index)
        return (sample, index)
