"""Similarity search over wafer maps with a trained backbone: which known maps a query resembles.

```
result = find_similar("runs/simclr", query=17, data="wafers", split="test", k=10)
result.neighbours        # [(index, cosine similarity, label name), ...], most similar first
save_similarity_grid(result, "grid.png")
```
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.data.spec import WAFER_SPECS
from selfsup.wafers.encode import WAFER_ENCODINGS
from selfsup.wafers.similar import SimilarityIndex, save_grid

SYNTHETIC_SPEC = re.compile(r"^synthetic(?::(\d+))?$")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pkl.xz", ".pkl.gz", ".pkl.bz2")


def load_wafer_maps(spec: str, split: str | None = None, *, trust_pickle: bool = False) -> Any:
    """WaferMaps (original sizes) from a data spec.

    spec: "wafers"/"wm811k" (the built-in clean subset; split defaults to "test" and takes the
    built-in names: train_1 ... test, train, all), "synthetic" or "synthetic:N" (N generated
    maps, default 2,000, seed 0), a wafer .npz (``write_wafer_npz`` format; split keeps the rows
    whose split value equals it), or a WM-811K pickle (needs ``trust_pickle``).
    """
    from selfsup.data.synthetic_wafers import generate_wafer_maps
    from selfsup.data.wafers import canonical_splits, packaged_path
    from selfsup.data.wm811k_pickles import read_wafer_npz, read_wafer_pickle

    synthetic = SYNTHETIC_SPEC.match(spec)
    if spec.lower() in WAFER_SPECS:
        maps = read_wafer_npz(packaged_path())
        keep = np.isin(maps.split, np.asarray(canonical_splits(split or "test")))
        return select_maps(maps, keep, f"wm811k {split or 'test'}")
    if synthetic:
        maps = generate_wafer_maps(int(synthetic.group(1) or 2000), seed=0)
        if split is not None:
            raise ValueError(f"split '{split}' does not apply to synthetic data")
        return maps
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"wafer data '{spec}' not found: expected 'wafers' (built-in), 'synthetic[:N]', "
            "a wafer .npz or a WM-811K pickle"
        )
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        maps = read_wafer_pickle(path, trust_pickle=trust_pickle)
    elif path.suffix.lower() == ".npz":
        maps = read_wafer_npz(path)
    else:
        raise ValueError(f"wafer data '{spec}' is neither a .npz nor a pickle ({PICKLE_SUFFIXES})")
    if split is None:
        return maps
    if maps.split is None or not (maps.split == split).any():
        found = sorted(set(maps.split.tolist())) if maps.split is not None else []
        raise ValueError(f"'{spec}' has no rows with split '{split}' (splits: {found})")
    return select_maps(maps, maps.split == split, f"{spec} {split}")


def select_maps(maps: Any, keep: np.ndarray, source: str) -> Any:
    """The rows of a WaferMaps where ``keep`` (bool [N]) holds, as a new WaferMaps."""
    from selfsup.data.wm811k_pickles import WaferMaps

    rows = np.flatnonzero(keep)
    return WaferMaps(
        [maps.maps[i] for i in rows],
        maps.labels[rows],
        class_names=list(maps.class_names),
        split=maps.split[rows] if maps.split is not None else None,
        source=source,
        source_index=maps.source_index[rows] if maps.source_index is not None else None,
    )


UNLABELLED = "unlabeled"  # the label shown for a map without one


def _label_name(maps: Any, label: int) -> str:
    return maps.class_names[label] if label >= 0 else UNLABELLED


def _encoding_for(meta: dict[str, Any]) -> str:
    channels = int(meta.get("in_channels", 1))
    for encoding, c in WAFER_ENCODINGS.items():
        if c == channels:
            return encoding
    raise ValueError(
        f"the backbone takes {channels} input channels; wafer maps encode to 1 (codes) or "
        "2 (fail_mask)"
    )


def read_query_map(path: Path) -> np.ndarray:
    """One 2-D wafer map of codes 0/1/2 from a .npy file (a [1, H, W] array is accepted)."""
    if not path.is_file():
        raise FileNotFoundError(f"query '{path}' is neither an index nor an existing .npy file")
    map2d = np.load(path, allow_pickle=False)
    if map2d.ndim == 3 and map2d.shape[0] == 1:
        map2d = map2d[0]
    if map2d.ndim != 2:
        raise ValueError(f"query '{path}' must hold one 2-D wafer map, got shape {map2d.shape}")
    values = set(np.unique(map2d).tolist())
    if not values <= {0, 1, 2}:
        raise ValueError(
            f"query '{path}' must hold codes 0/1/2 (off-wafer/pass/fail), found "
            f"{sorted(values - {0, 1, 2})[:5]}"
        )
    return map2d.astype(np.uint8)


def default_cache(run: Path, data: str, split: str | None) -> Path | None:
    """RUN/similarity/<data>_<split>.npz, or None when the run's folder is not writable."""
    folder = run if run.is_dir() else run.parent
    if not os.access(folder, os.W_OK):
        return None
    stem = Path(data).name.split(".")[0] or "data"  # train_1_split.pkl.xz -> train_1_split
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{stem}_{split or 'all'}")
    return folder / "similarity" / f"{name}.npz"


@dataclass
class SimilarMaps:
    """A query map and its nearest neighbours among ``maps`` (a WaferMaps)."""

    query_map: np.ndarray
    query_title: str
    neighbours: list[tuple[int, float, str]]  # (index into maps, cosine similarity, label)
    maps: Any

    def vote(self) -> tuple[str, int, float] | None:
        """(label, neighbours with it, its share of the summed similarity) of the known pattern
        the query resembles most: the neighbours' labels weighted by similarity (unlabelled
        neighbours abstain); None when no neighbour is labelled."""
        weights: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _, similarity, label in self.neighbours:
            if label in (UNLABELLED, ""):
                continue
            weights[label] = weights.get(label, 0.0) + max(similarity, 0.0)
            counts[label] = counts.get(label, 0) + 1
        if not weights:
            return None
        best = max(weights, key=lambda name: (weights[name], counts[name]))
        total = sum(weights.values()) or 1.0
        return best, counts[best], weights[best] / total


def _query(
    maps: Any, query: int | str | Path, query_maps: Any = None
) -> tuple[int | None, np.ndarray, str]:
    """(position in maps or None, the query map, its title) for an index (into ``query_maps``
    when given: another split than the one searched) or a .npy path."""
    if isinstance(query, int) or re.fullmatch(r"-?\d+", str(query)):
        source = maps if query_maps is None else query_maps
        position = int(query)
        if not 0 <= position < len(source):
            raise ValueError(
                f"query {position} is out of range: '{source.source}' has {len(source)}"
            )
        title = f"query #{position}\n{_label_name(source, int(source.labels[position]))}"
        if query_maps is not None:
            return None, source.maps[position], title
        return position, source.maps[position], title
    path = Path(query)
    return None, read_query_map(path), f"query {path.name}"


def find_similar(
    run: str | Path,
    query: int | str | Path,
    *,
    data: str = "wafers",
    split: str | None = None,
    k: int = 10,
    checkpoint: str = "auto",
    trust_checkpoint: bool = False,
    trust_pickle: bool = False,
    cache: str | Path | None | bool = True,
    batch_size: int = 256,
    query_split: str | None = None,
) -> SimilarMaps:
    """The ``k`` maps of ``data`` most like ``query`` (an index into the data, or a 2-D .npy
    map) under the run's backbone. ``cache``: True = RUN/similarity/<data>_<split>.npz, a path,
    or False / None for no feature cache. The built-in maps default to the test split.
    ``query_split``: the query index is into this split instead, so a new map (e.g. from
    test) is ranked against labelled ones (``split="train"``); ``result.vote()`` names the
    known pattern it resembles most."""
    from selfsup.artifacts import load_trained
    from selfsup.data.wm811k_pickles import WaferMaps, to_dataset

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if split is None and data.lower() in WAFER_SPECS:
        split = "test"
    maps = load_wafer_maps(data, split, trust_pickle=trust_pickle)
    query_maps = None
    if query_split is not None and query_split != split:
        query_maps = load_wafer_maps(data, query_split, trust_pickle=trust_pickle)
    position, query_map, query_title = _query(maps, query, query_maps)
    backbone, preprocess, meta = load_trained(run, checkpoint, trust_checkpoint=trust_checkpoint)
    encoding, image_size = _encoding_for(meta), int(meta["image_size"])
    cache_path = default_cache(Path(run), data, split) if cache is True else (cache or None)
    images = to_dataset(maps, image_size, encoding).images
    index = SimilarityIndex.build(
        backbone, preprocess, images, cache_path=cache_path, batch_size=batch_size
    )
    if position is not None:
        indices, sims = index.query(position, k, exclude_self=True)
    else:
        one = WaferMaps([query_map], np.array([-1]), class_names=list(maps.class_names))
        indices, sims = index.query(to_dataset(one, image_size, encoding).images[0], k)
    neighbours = [
        (i, s, _label_name(maps, int(maps.labels[i])))
        for i, s in zip(indices.tolist(), sims.tolist(), strict=True)
    ]
    return SimilarMaps(query_map, query_title, neighbours, maps)


def save_similarity_grid(result: SimilarMaps, out: str | Path) -> Path:
    """The query and its neighbours as a PNG grid, titled with rank, index, similarity, label."""
    titles = [result.query_title] + [
        f"{rank}. #{i} sim {s:.3f}\n{label}"
        for rank, (i, s, label) in enumerate(result.neighbours, start=1)
    ]
    neighbour_maps = [result.maps.maps[i] for i, _, _ in result.neighbours]
    return save_grid(result.query_map, neighbour_maps, out, titles)
