"""The labelled data a run report evaluates on: queries (held out, classified and mapped) and a
bank (votes in the kNN and is retrieved), given or found from the run's own config.

Explicit data that does not fit the backbone is an error; inferred data that cannot be found
is a reason the report prints instead of the plots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from selfsup.data.image_dataset import ImageDataset
from selfsup.data.spec import WAFER_SPECS
from selfsup.eval.protocol import load_eval_data, stratified_fraction

log = logging.getLogger("selfsup.eval")


@dataclass
class EvalData:
    bank: ImageDataset  # labelled images that vote (kNN) and are retrieved
    queries: ImageDataset  # held-out labelled images that are classified and mapped
    note: str  # where both came from, for the report


def _load_spec(spec: str, meta: dict[str, Any], split: str | None) -> ImageDataset:
    """``spec`` at the backbone's size; ``split`` names a split of the built-in wafers only."""
    return load_eval_data(spec, meta, split if spec.lower() in WAFER_SPECS else None)


def _inferred_bank(config: dict[str, Any], meta: dict[str, Any]) -> ImageDataset | None:
    """The run's own labelled training data at the backbone's size, when it can be loaded."""
    spec = config.get("data")
    if not spec:
        return None
    try:
        bank = _load_spec(str(spec), meta, config.get("train_split") or "train")
    except (OSError, ValueError) as err:
        log.info("report: cannot reload the training data '%s' as kNN bank (%s)", spec, err)
        return None
    return bank if bank.labels is not None else None


def _inferred_queries(
    config: dict[str, Any], meta: dict[str, Any], split: str | None
) -> ImageDataset | str:
    """The run's own labelled validation data at the backbone's size, or why there is none."""
    spec = str(config.get("data") or "")
    if spec.lower() in WAFER_SPECS and (split or config.get("val_split", "val")):
        split = split or config.get("val_split") or "val"
    elif config.get("val_data"):
        spec, split = str(config["val_data"]), None
    else:
        return (
            "no labelled evaluation data (the run has no validation data): pass data= "
            "(a labelled, held-out ImageDataset or data spec)"
        )
    try:
        return _load_spec(spec, meta, split)
    except (OSError, ValueError) as err:
        return f"the run's validation data '{spec}' cannot be loaded ({err})"


def _check_fits(data: ImageDataset, meta: dict[str, Any], role: str) -> None:
    for name, have, want in (
        ("in_channels", data.in_channels, int(meta["in_channels"])),
        ("image_size", data.image_size, int(meta["image_size"])),
    ):
        if have != want:
            raise ValueError(
                f"write_report: the {role} ({data.source}) has {name}={have} but the run's "
                f"backbone takes {name}={want}"
            )


def resolve_eval_data(
    config: dict[str, Any],
    meta: dict[str, Any],
    data: ImageDataset | str | None,
    bank: ImageDataset | str | None,
    split: str | None,
    seed: int,
) -> EvalData | str:
    """Queries and bank for the evaluation plots, or why there are none.

    Explicit ``data``/``bank`` that do not fit the backbone raise ValueError; inferred data
    that cannot be found gives a reason for the report instead.
    """
    if data is None:
        found = _inferred_queries(config, meta, split)
        if isinstance(found, str):
            return found
        data = found
    elif isinstance(data, str):
        data = _load_spec(data, meta, split or "val")
    _check_fits(data, meta, "data")
    if data.labels is None:
        return f"the evaluation data ({data.source}) has no labels"
    if isinstance(bank, str):
        bank = _load_spec(bank, meta, config.get("train_split") or "train")
    if bank is not None:
        _check_fits(bank, meta, "bank")
        if bank.labels is None:
            raise ValueError(f"write_report: the bank ({bank.source}) has no labels")
    else:
        bank = _inferred_bank(config, meta)
    if bank is not None:
        if bank.class_names and data.class_names and bank.class_names != data.class_names:
            return (
                f"the bank ({bank.source}) and the queries ({data.source}) name their classes "
                "differently, so kNN labels would not match"
            )
        return EvalData(bank, data, f"bank: {bank.source}; queries: {data.source}")
    half = stratified_fraction(data.labels, 0.5, seed=seed)
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[half] = False
    if not bool(rest.any()):
        return f"the evaluation data ({data.source}) is too small to split into bank and queries"
    note = f"no labelled training data: {data.source} split in two halves (bank, queries), seeded"
    return EvalData(data.subset(half), data.subset(rest.nonzero().squeeze(1)), note)


def seeded_subset(data: ImageDataset, limit: int | None, seed: int) -> ImageDataset:
    """At most ``limit`` images, drawn uniformly without replacement (sorted, seeded)."""
    if limit is None or len(data) <= limit:
        return data
    generator = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=generator)[:limit].sort().values)
