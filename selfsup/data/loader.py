"""Batches by indexing: one permutation per epoch, one gather per batch, no per-image work.

``BatchLoader`` is a plain iterable for loops of your own; ``make_dataloader`` wraps the same
index plan in a ``torch.utils.data.DataLoader`` for Lightning (pinning, worker processes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from selfsup.data.image_dataset import ImageDataset

Batch = Tensor | tuple[Tensor, Tensor] | tuple[Tensor, dict[str, Tensor]]
# per-sample fields a loader can yield beside the images (``fields=``), see ``BatchLoader.fetch``
SAMPLE_FIELDS = ("labels", "indices")


def pin_memory_for(device: str | torch.device) -> bool:
    """Whether batches bound for ``device`` should be pinned: True for CUDA only.

    ``device``: a torch device, a device string ("cpu", "cuda:1") or a Lightning
    accelerator name ("gpu", "auto": CUDA when one is available). Pinned (page-locked)
    batches let the host-to-GPU copy run asynchronously (Lightning copies with
    ``non_blocking=True`` on CUDA); on CPU pinning is a wasted copy.
    """
    if isinstance(device, torch.device):
        return device.type == "cuda"
    kind = device.split(":", 1)[0].lower()
    if kind == "auto":
        return torch.cuda.is_available()
    return kind in ("cuda", "gpu")


class BatchLoader:
    """uint8 batches [b, C, H, W] (and int64 labels [b] when ``with_labels``) of a dataset.

    ``fields`` (names from ``SAMPLE_FIELDS``) makes every batch ``(images, {name: int64 [b]})``:
    ``labels`` (-1 for an unlabelled dataset or sample) and ``indices`` (global positions in
    the dataset, the same on every rank), for methods that declare ``batch_fields``.

    Each epoch draws a permutation from ``seed + epoch`` (call ``set_epoch`` before iterating;
    the permutation is drawn when iteration starts). With ``world_size > 1`` each rank takes
    every world_size-th element of the permutation, after the tail is cut so every rank gets
    the same number of images (and so the same number of steps, which DDP needs). The
    shards of one epoch are disjoint and together hold all but < world_size images.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        with_labels: bool = False,
        fields: Sequence[str] = (),
    ) -> None:
        unknown = sorted(set(fields) - set(SAMPLE_FIELDS))
        if unknown:
            raise ValueError(f"unknown sample fields {unknown} (known: {SAMPLE_FIELDS})")
        if fields and with_labels:
            raise ValueError("give with_labels or fields=('labels', ...), not both")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not valid for world_size {world_size}")
        if with_labels and dataset.labels is None:
            raise ValueError(f"with_labels=True but {dataset.source} has no labels")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.with_labels = with_labels
        self.fields = tuple(fields)
        self.epoch = 0
        self.per_rank = len(dataset) // world_size
        if self.per_rank == 0 or (drop_last and batch_size > self.per_rank):
            where = f" per rank ({world_size} ranks)" if world_size > 1 else ""
            raise ValueError(
                f"batch size {batch_size} is larger than the {self.per_rank} images{where} of "
                f"{dataset.source}; lower batch_size or use more data"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def shard_indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, in visiting order (int64)."""
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        return order[: self.per_rank * self.world_size][self.rank :: self.world_size]

    def batch_indices(self) -> list[Tensor]:
        """The index tensor of every batch of the current epoch on this rank."""
        return list(self.shard_indices()[: len(self) * self.batch_size].split(self.batch_size))

    def fetch(self, index: Tensor) -> Batch:
        images = self.dataset.images.index_select(0, index)
        if self.with_labels:
            return images, self.dataset.labels.index_select(0, index)  # type: ignore[union-attr]
        if self.fields:
            return images, {name: self._field(name, index) for name in self.fields}
        return images

    def _field(self, name: str, index: Tensor) -> Tensor:
        if name == "indices":
            return index.to(torch.int64)
        labels = self.dataset.labels
        if labels is None:
            return torch.full(index.shape, -1, dtype=torch.int64)
        return labels.index_select(0, index)

    def __iter__(self) -> Iterator[Batch]:
        for index in self.batch_indices():
            yield self.fetch(index)


class _BatchSampler(Sampler[Tensor]):
    """Yields one index tensor per batch; Lightning calls ``set_epoch`` on samplers itself."""

    def __init__(self, loader: BatchLoader) -> None:
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tensor]:
        # a generator: the epoch's permutation is drawn at the first batch, after set_epoch
        yield from self.loader.batch_indices()


class _BatchFetcher(Dataset[Batch]):
    """A map dataset whose 'index' is a whole batch's index tensor: one gather per step."""

    def __init__(self, loader: BatchLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader.dataset)

    def __getitem__(self, index: Tensor) -> Batch:
        return self.loader.fetch(index)


class EpochDataLoader(DataLoader):
    """A DataLoader over a ``BatchLoader``'s batches, with ``set_epoch`` and ``batch_loader``."""

    batch_loader: BatchLoader

    def set_epoch(self, epoch: int) -> None:
        self.batch_loader.set_epoch(epoch)


def make_dataloader(
    dataset: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    with_labels: bool = False,
    fields: Sequence[str] = (),
    num_workers: int = 0,
    pin_memory: bool = False,
) -> EpochDataLoader:
    """A ``DataLoader(batch_size=None)`` yielding the same batches as ``BatchLoader``.

    Why this shape: the sampler yields one index tensor per batch and the dataset answers it
    with a single ``index_select``, so a step costs one gather, not B ``__getitem__`` calls
    and a collate. The sampler runs in the main process, so ``set_epoch`` (called by
    Lightning on samplers, or on this loader) reshuffles even with worker processes, and
    ``pin_memory=True`` pins each batch for asynchronous copies to CUDA. Workers buy little
    here (there is no per-image work) and cost a copy of the tensor each: keep
    num_workers=0 unless profiling says otherwise. The loader shards by ``rank`` itself:
    give Lightning's Trainer ``use_distributed_sampler=False``.
    """
    batches = BatchLoader(
        dataset,
        batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=seed,
        rank=rank,
        world_size=world_size,
        with_labels=with_labels,
        fields=fields,
    )
    loader = EpochDataLoader(
        _BatchFetcher(batches),
        batch_size=None,
        sampler=_BatchSampler(batches),
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    loader.batch_loader = batches
    return loader
