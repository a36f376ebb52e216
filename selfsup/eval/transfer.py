"""Transfer: a probe of a backbone pretrained on dataset A, on labelled dataset B.

B is read at the backbone's image size and channel count (grey data for an RGB backbone
repeats its channel, RGB data for a grey backbone becomes its luminance), and wafer maps and
natural images meet as natural images; every conversion is recorded next to what the backbone
was pretrained on (A, from the run's ``config.yaml``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selfsup.data.image_dataset import ImageDataset
from selfsup.data.spec import WAFER_SPECS, split_spec
from selfsup.eval.protocol import load_eval_data
from selfsup.eval.run_files import CONFIG_FILE, read_config

PROBES = ("linear", "mlp")
UNIT_RANGE_NOTE = "natural images scaled to [0, 1], the wafer backbone's input range (0, 0.5, 1)"


def load_transfer_data(
    spec: str, meta: dict[str, Any], split: str | None
) -> tuple[ImageDataset, str | None]:
    """(data, how its channels were made the backbone's, or None) for a transfer target."""
    from selfsup.data.image_dataset import CHANNEL_CONVERSIONS
    from selfsup.data.spec import spec_kind

    channels = int(meta["in_channels"])
    if spec_kind(spec) == "folder":  # PIL decodes every file to the backbone's mode
        note = f"image files decoded by PIL to {channels} channel(s)"
        return load_eval_data(spec, meta, split), note
    data = load_eval_data(spec, meta, split, match_channels=False)
    return data.with_channels(channels), CHANNEL_CONVERSIONS.get((data.in_channels, channels))


class TransferLoader:
    """``load(spec, split)`` for ``ProtocolData.load``: B's splits at the backbone's size and
    channels, each conversion noted in ``conversions`` ({"spec (split)": note})."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.conversions: dict[str, str] = {}

    def __call__(self, spec: str, split: str | None) -> ImageDataset:
        data, note = load_transfer_data(spec, self.meta, split)
        if note:
            self.conversions[f"{spec} ({split})" if split else spec] = note
        return data


def match_styles(
    splits: dict[str, ImageDataset], meta: dict[str, Any], preprocess: Any
) -> tuple[dict[str, ImageDataset], Any, str | None]:
    """(splits, preprocess, note) so that wafer maps and natural images can meet.

    Same style as the backbone: unchanged. Otherwise every split becomes natural (wafer codes as
    grey levels); a natural backbone keeps its preprocess, a wafer backbone (trained on inputs
    0 / 0.5 / 1) gets natural images scaled to [0, 1] without normalisation.
    """
    from selfsup.data.image_dataset import WAFER_AS_GREY
    from selfsup.views.recipes import make_views

    backbone_style = meta.get("view_style", "natural")
    if {ds.style for ds in splits.values()} == {backbone_style}:
        return splits, preprocess, None
    splits = {role: ds.as_natural() for role, ds in splits.items()}
    if backbone_style == "natural":
        return splits, preprocess, WAFER_AS_GREY
    channels = int(meta["in_channels"])
    unit = make_views(
        "simclr", image_size=meta["image_size"], in_channels=channels, style="natural",
        mean=(0.0,) * channels, std=(1.0,) * channels,
    )  # fmt: skip
    return splits, unit.preprocess, UNIT_RANGE_NOTE


def run_config(run: Path | None) -> tuple[Path | None, dict[str, Any]]:
    """(config.yaml path, its values) of the run that ``run`` (a run folder, an export folder or
    a ``.ckpt`` inside one) belongs to, looking one and two levels up; (None, {}) if none."""
    if run is None:
        return None, {}
    base = run.parent if run.is_file() else run
    for folder in (base, base.parent):
        if (folder / CONFIG_FILE).is_file():
            return folder / CONFIG_FILE, read_config(folder)
    return None, {}


def pretraining_data(run: Path | None) -> dict[str, Any]:
    """What the backbone was pretrained on, from the run's config.yaml (next to the export,
    the checkpoint, or one level up); ``run`` None: a backbone handed over as an object."""
    if run is None:
        return {
            "data": None,
            "note": "a loaded backbone, not a run folder: pretraining data unknown",
        }
    path, values = run_config(run)
    if path is None:
        return {"data": None, "note": f"no config.yaml beside '{run}': pretraining data unknown"}
    found = {k: values.get(k) for k in ("data", "method", "image_size", "epochs")}
    if str(values.get("data", "")).lower() in WAFER_SPECS:
        found["train_split"] = values.get("train_split")
    return {"config": str(path), **found}


@contextmanager
def transfer_hint(
    command: str, meta: dict[str, Any], datasets: Iterable[ImageDataset]
) -> Iterator[None]:
    """Re-raise a ValueError of the block with a hint when the data differs in kind (wafer maps
    vs natural images) from what the backbone was pretrained on: that is a transfer."""
    datasets = list(datasets)
    try:
        yield
    except ValueError as err:
        backbone_style = meta.get("view_style", "natural")
        styles = sorted({ds.style for ds in datasets} - {backbone_style})
        if not styles:
            raise
        sources = ", ".join(f"'{ds.source}'" for ds in datasets if ds.style != backbone_style)
        raise ValueError(
            f"{command}: the data {sources} holds {' and '.join(styles)} images but the backbone "
            f"was pretrained on {backbone_style} images: that is a transfer; use "
            f"`selfsup eval transfer RUN --data SPEC --test-data SPEC`, which reads the data at "
            f"the backbone's size, channels and style ({err})"
        ) from err


def transfer_section(
    probe: str, run: Path | None, target: str, meta: dict[str, Any],
    loader: TransferLoader, style_note: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The record's ``transfer`` entry: the probe, A, B, and how B was made to fit."""
    return {
        "probe": probe,
        "pretrained_on": pretraining_data(run),
        "target": target,
        "image_size": meta["image_size"],
        "in_channels": meta["in_channels"],
        "channel_conversion": loader.conversions or None,
        "style_conversion": style_note,
    }


def data_slug(spec: str) -> str:
    """A data spec's file or folder name (and ``:split``), safe as part of a file name."""
    path, split = split_spec(spec)
    name = Path(path).name + (f"-{split}" if split else "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "data"


def transfer_record_name(probe: str, target: str) -> str:
    """``eval_transfer_<probe>_<B's file or folder name>``, safe as a file name."""
    return f"eval_transfer_{probe}_{data_slug(split_spec(target)[0])}"
