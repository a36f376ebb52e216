"""The evaluation protocol's data: which data and split plays each role, and a validation split
carved from train when the data has none.

Roles: the supervised protocols (linear, mlp, finetune, transfer) read train (labelled, maybe a
stratified ``label_fraction`` of it), val (model selection only) and test (scored once); kNN
reads a bank (votes) and queries (classified). Data with named splits (the built-in wafers,
IDX folders) supply the roles themselves (``NAMED_SPLITS``); other data names them with
``val_data`` / ``test_data`` / ``query_data``. Data without a validation split (image
folders, arrays, IDX folders such as Fashion-MNIST) gets a seeded, class-stratified
``VAL_FRACTION`` of its training split. No two roles may read the same data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from selfsup.data.image_dataset import ImageDataset

VAL_FRACTION = 0.1
# The split each role reads from data that has named splits; None: carved from train.
NAMED_SPLITS: dict[str, dict[str, str | None]] = {
    "wafers": {
        "train": "train_10",
        "val": "val",
        "test": "test",
        "bank": "train",
        "query": "val",
        "unlabeled": "train",
    },
    "idx": {
        "train": "train",
        "val": None,
        "test": "test",
        "bank": "train",
        "query": "test",
        "unlabeled": "train",
    },
}

Source = tuple[str, str | None]  # (data spec, split or None)
Loader = Callable[[str, str | None], ImageDataset]  # (data spec, split) -> ImageDataset


def check_fraction(value: float, name: str = "label_fraction") -> float:
    """``value`` when it is a number in (0, 1]; else a ValueError naming it as ``name``."""
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return float(value)


def stratified_fraction(
    labels: Tensor, fraction: float, seed: int = 0, *, name: str = "label_fraction"
) -> Tensor:
    """Indices of a class-stratified random ``fraction`` of ``labels`` (at least one per class).

    Deterministic for a seed; sorted. labels: [N] int64. A ``fraction`` outside (0, 1] (or not
    a number) is a ValueError naming it as ``name``.
    """
    check_fraction(fraction, name)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in labels.unique():
        members = (labels == cls).nonzero().squeeze(1)
        count = max(1, round(fraction * members.numel()))
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


def validation_indices(
    labels: Tensor, fraction: float = VAL_FRACTION, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """(fit indices, val indices), both sorted: val is a seeded, class-stratified ``fraction``
    of ``labels`` [N] (at least one per class), fit is the rest. Same inputs, same split."""
    val = stratified_fraction(labels, fraction, seed=seed, name="validation fraction")
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[val] = False
    return keep.nonzero()[:, 0], val


def carve_validation(
    train: ImageDataset, fraction: float = VAL_FRACTION, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """(train without val, val) of labelled ``train``, split by ``validation_indices``.

    ValueError when ``train`` has no labels.
    """
    if train.labels is None:
        raise ValueError(f"{train.source} has no labels: cannot carve a stratified validation set")
    fit, val = validation_indices(train.labels, fraction, seed)
    return train.subset(fit), train.subset(val)


# --- which data plays which role ---------------------------------------------------------------


def named_splits(spec: str) -> dict[str, str | None] | None:
    """Default split per role for the built-in wafers and IDX folders; None for other data
    (and for an IDX spec whose ``:split`` suffix already picks one)."""
    from selfsup.data.spec import spec_kind, split_spec

    if split_spec(spec)[1] is not None:
        return None
    return NAMED_SPLITS.get(spec_kind(spec))


def split_for(spec: str, role: str, given: str | None = None) -> str | None:
    """The split of ``spec`` that plays ``role``: ``given``, else the data's default (None for
    data without named splits)."""
    named = named_splits(spec)
    if named is None:
        return None
    return given or named[role]


def load_eval_data(
    spec: str, meta: dict[str, Any], split: str | None, *, match_channels: bool = True
) -> ImageDataset:
    """Data at the backbone's image size (and channel count, unless not ``match_channels``),
    from the backbone's metadata ``meta``; ``split`` applies to data with named splits only."""
    from selfsup.data import load_dataset

    split = split if named_splits(spec) else None
    in_channels = int(meta["in_channels"]) if match_channels else None
    return load_dataset(spec, image_size=meta["image_size"], in_channels=in_channels, split=split)


def check_distinct(protocol: str, sources: dict[str, Source]) -> None:
    """ValueError when two roles (train, val, test; bank, queries) read the same data."""
    roles = list(sources)
    for i, a in enumerate(roles):
        for b in roles[i + 1 :]:
            if sources[a] == sources[b]:
                spec, split = sources[a]
                raise ValueError(
                    f"eval {protocol}: the {a} and {b} data are the same ('{spec}'"
                    + (f", split {split})" if split else ")")
                )


def knn_sources(
    data: str, query_data: str | None, bank_split: str | None, query_split: str | None
) -> dict[str, Source]:
    """(data spec, split) of the bank (``data``) and the queries (``query_data``, or the
    data's query split: wafers val, IDX test). Data without named splits needs ``query_data``."""
    if named_splits(data) is None and not query_data:
        raise ValueError(
            f"eval knn: query_data (--query-data) is needed with data '{data}' "
            "(queries must not be the bank itself)"
        )
    query_data = query_data or data
    sources = {
        "bank": (data, split_for(data, "bank", bank_split)),
        "queries": (query_data, split_for(query_data, "query", query_split)),
    }
    check_distinct("knn", sources)
    return sources


@dataclass(frozen=True)
class ProtocolData:
    """Where the supervised protocols read train, val and test, and how much of train's labels
    they use. Splits and ``*_data`` left None take the data's defaults (module docstring)."""

    data: str = "wafers"
    train_split: str | None = None
    val_split: str | None = None
    test_split: str | None = None
    val_data: str | None = None
    test_data: str | None = None
    label_fraction: float = 1.0
    # semi-supervised fine-tuning's unlabelled images (labels, if any, unused): default the
    # data's whole training split (wafers: train), else train before the label fraction
    unlabeled_data: str | None = None
    unlabeled_split: str | None = None

    def unlabeled_source(self) -> Source | None:
        """(data spec, split) of the unlabelled images, or None: train before its fraction."""
        if self.unlabeled_data:
            return self.unlabeled_data, self.unlabeled_split
        if named_splits(self.data) is not None:
            return self.data, self.unlabeled_split or named_splits(self.data)["unlabeled"]
        return None

    def sources(self, protocol: str) -> dict[str, Source]:
        """(data spec, split) per role: train from ``data``; val from ``val_data`` or the
        data's val split (wafers; absent for IDX and other data: carved from train); test from
        ``test_data`` or the data's test split (wafers, IDX)."""
        data = self.data
        if not self.test_data and named_splits(data) is None:
            raise ValueError(
                f"eval {protocol}: test_data (--test-data) is needed with data '{data}'"
            )
        sources = {"train": (data, split_for(data, "train", self.train_split))}
        if self.val_data:
            sources["val"] = (self.val_data, self._val_split_of(self.val_data, protocol))
        elif split_for(data, "val", self.val_split):
            sources["val"] = (data, split_for(data, "val", self.val_split))
        if self.test_data:
            sources["test"] = (self.test_data, split_for(self.test_data, "test"))
        else:
            sources["test"] = (data, split_for(data, "test", self.test_split))
        check_distinct(protocol, sources)
        return sources

    @staticmethod
    def _val_split_of(val_data: str, protocol: str) -> str | None:
        val_split = split_for(val_data, "val")
        if val_split is None and named_splits(val_data) is not None:
            raise ValueError(
                f"eval {protocol}: '{val_data}' has no validation split; name one "
                f"('{val_data}:train') or leave val_data (--val-data) out to carve val from train"
            )
        return val_split

    def load(
        self, sources: dict[str, Source], load: Loader, *, protocol: str, seed: int = 0,
        unlabeled: bool = False,
    ) -> dict[str, ImageDataset]:  # fmt: skip
        """{"train", "val", "test"} read from ``sources`` with ``load``; without a val source,
        a seeded, stratified ``VAL_FRACTION`` of train is carved off; then train keeps a
        stratified ``label_fraction`` of its labels. Every split must be labelled. With
        ``unlabeled`` also "unlabeled" (``unlabeled_source``, else train before the fraction:
        its labels are never used)."""
        splits = {role: load(spec, split) for role, (spec, split) in sources.items()}
        if "val" not in splits:
            if splits["train"].labels is None:
                raise ValueError(f"eval {protocol}: '{self.data}' has no labels")
            splits["train"], splits["val"] = carve_validation(splits["train"], seed=seed)
        for role, ds in splits.items():
            if ds.labels is None:
                raise ValueError(f"eval {protocol}: the {role} data '{ds.source}' has no labels")
        roles = ["train", "val", "test"]
        if unlabeled:
            source = self.unlabeled_source()
            splits["unlabeled"] = splits["train"] if source is None else load(*source)
            roles.append("unlabeled")
        if self.label_fraction < 1:
            train = splits["train"]
            chosen = stratified_fraction(train.labels, self.label_fraction, seed)
            splits["train"] = train.subset(chosen)
        return {role: splits[role] for role in roles}
