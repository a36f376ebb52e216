"""Wafer-map tools: similarity search, synthetic maps, model-input encodings, and the
``selfsup wafers`` commands.

```
index = SimilarityIndex.build(backbone, preprocess, images, cache_path="feats.npz")
indices, sims = index.query(17, k=10, exclude_self=True)
save_grid(maps[17], [maps[i] for i in indices], "grid.png")
```

Commands (wired into ``selfsup`` by ``add_wafer_commands``):
- ``selfsup wafers similar RUN_OR_EXPORT --query INDEX|MAP.npy [--data wafers --split test]
  [--k 10] --out grid.png``
- ``selfsup wafers synth OUT.npz [--n 10000] [--size 26 64] [--weights uniform|real] [--seed 0]``
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.wafers.encode import WAFER_ENCODINGS, encode_wafer
from selfsup.wafers.similar import SimilarityIndex, grid_size, save_grid, wafer_rgb

WAFER_SPECS = ("wafers", "wm811k")
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
            raise ValueError(f"--split '{split}' does not apply to synthetic data")
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


def _label_name(maps: Any, label: int) -> str:
    return maps.class_names[label] if label >= 0 else "unlabeled"


def _encoding_for(meta: dict[str, Any]) -> str:
    channels = int(meta.get("in_channels", 1))
    for encoding, c in WAFER_ENCODINGS.items():
        if c == channels:
            return encoding
    raise ValueError(
        f"the backbone takes {channels} input channels; wafer maps encode to 1 (codes) or "
        "2 (fail_mask)"
    )


def _read_query_map(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"--query '{path}' is neither an index nor an existing .npy file")
    map2d = np.load(path, allow_pickle=False)
    if map2d.ndim == 3 and map2d.shape[0] == 1:
        map2d = map2d[0]
    if map2d.ndim != 2:
        raise ValueError(f"--query '{path}' must hold one 2-D wafer map, got shape {map2d.shape}")
    values = set(np.unique(map2d).tolist())
    if not values <= {0, 1, 2}:
        raise ValueError(
            f"--query '{path}' must hold codes 0/1/2 (off-wafer/pass/fail), found "
            f"{sorted(values - {0, 1, 2})[:5]}"
        )
    return map2d.astype(np.uint8)


def _default_cache(run: Path, data: str, split: str | None) -> Path | None:
    folder = run if run.is_dir() else run.parent
    if not os.access(folder, os.W_OK):
        return None
    stem = Path(data).name.split(".")[0] or "data"  # train_1_split.pkl.xz -> train_1_split
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{stem}_{split or 'all'}")
    return folder / "similarity" / f"{name}.npz"


def cmd_wafers_similar(args: argparse.Namespace) -> int:
    """``selfsup wafers similar``: the k maps most like a query, as a table and a PNG grid."""
    from selfsup.artifacts import load_trained
    from selfsup.data.wm811k_pickles import WaferMaps, to_dataset

    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    split = args.split
    if split is None and args.data.lower() in WAFER_SPECS:
        split = "test"
    maps = load_wafer_maps(args.data, split, trust_pickle=args.trust_pickle)
    position: int | None = None
    if re.fullmatch(r"-?\d+", args.query):
        position = int(args.query)
        if not 0 <= position < len(maps):
            raise ValueError(f"--query {position} is out of range: '{maps.source}' has {len(maps)}")
        query_map = maps.maps[position]
        query_title = f"query #{position}\n{_label_name(maps, int(maps.labels[position]))}"
    else:
        query_map = _read_query_map(Path(args.query))
        query_title = f"query {Path(args.query).name}"

    backbone, preprocess, meta = load_trained(
        args.run, args.checkpoint, trust_checkpoint=args.trust_checkpoint
    )
    encoding, image_size = _encoding_for(meta), int(meta["image_size"])
    cache = None
    if not args.no_cache:
        cache = Path(args.cache) if args.cache else _default_cache(Path(args.run), args.data, split)
    index = SimilarityIndex.build(
        backbone,
        preprocess,
        to_dataset(maps, image_size, encoding).images,
        cache_path=cache,
        batch_size=args.batch_size,
    )
    if position is not None:
        indices, sims = index.query(position, args.k, exclude_self=True)
    else:
        one = WaferMaps([query_map], np.array([-1]), class_names=list(maps.class_names))
        indices, sims = index.query(to_dataset(one, image_size, encoding).images[0], args.k)

    titles = [query_title]
    print("| rank | index | similarity | label |\n|---|---|---|---|")
    for rank, (i, s) in enumerate(zip(indices.tolist(), sims.tolist(), strict=True), start=1):
        label = _label_name(maps, int(maps.labels[i]))
        titles.append(f"{rank}. #{i} sim {s:.3f}\n{label}")
        print(f"| {rank} | {i} | {s:.4f} | {label} |")
    out = save_grid(query_map, [maps.maps[i] for i in indices], args.out, titles)
    print(f"wrote {out} (query + {len(indices)} neighbours from {maps.source})")
    return 0


def cmd_wafers_synth(args: argparse.Namespace) -> int:
    """``selfsup wafers synth``: generated maps written as a pickle-free wafer .npz."""
    from selfsup.data.synthetic_wafers import generate_wafer_maps
    from selfsup.data.wm811k_pickles import write_wafer_npz

    if len(args.size) not in (1, 2):
        raise ValueError(f"--size takes SIDE or LOW HIGH, got {len(args.size)} numbers")
    size = args.size[0] if len(args.size) == 1 else (args.size[0], args.size[1])
    weights = None if args.weights == "uniform" else args.weights
    maps = generate_wafer_maps(args.n, size=size, class_weights=weights, seed=args.seed)
    path = write_wafer_npz(maps, args.out)
    counts = np.bincount(maps.labels, minlength=len(maps.class_names)).tolist()
    shown = ", ".join(f"{c} {k}" for c, k in zip(maps.class_names, counts, strict=True))
    print(f"wrote {len(maps)} synthetic wafer maps to {path} ({shown})")
    return 0


def add_wafer_commands(
    subparsers: Any, add_load_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``wafers similar`` and ``wafers synth`` to the ``selfsup`` parser's subcommands;
    ``add_load_args`` adds RUN, --checkpoint and --trust-checkpoint."""
    p = subparsers.add_parser("wafers", help="wafer-map tools: similarity search, synthetic maps")
    sub = p.add_subparsers(dest="wafers_command", required=True)

    s = sub.add_parser("similar", help="the k wafer maps most similar to a query, as a PNG grid")
    add_load_args(s)  # RUN, --checkpoint, --trust-checkpoint
    s.add_argument("--query", required=True, help="index into the data, or a 2-D .npy map")
    s.add_argument(
        "--data",
        default="wafers",
        help="'wafers' (built-in), 'synthetic[:N]', a wafer .npz or a WM-811K pickle",
    )
    s.add_argument(
        "--split", help="rows to search (built-in: train_1 ... test, train, all; default test)"
    )
    s.add_argument("--k", type=int, default=10, help="neighbours to show")
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--cache", help="feature cache .npz (default RUN/similarity/<data>_<split>.npz)")
    s.add_argument("--no-cache", action="store_true", help="always recompute the features")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--trust-pickle", action="store_true", help="allow a pickle as --data")
    s.set_defaults(func=cmd_wafers_similar)

    g = sub.add_parser("synth", help="write synthetic WM-811K-style maps to a wafer .npz")
    g.add_argument("out", help="output .npz")
    g.add_argument("--n", type=int, default=10000)
    g.add_argument("--size", type=int, nargs="+", default=[26, 64], help="SIDE or LOW HIGH")
    g.add_argument("--weights", default="uniform", choices=["uniform", "real"])
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_wafers_synth)


__all__ = [
    "SimilarityIndex",
    "add_wafer_commands",
    "cmd_wafers_similar",
    "cmd_wafers_synth",
    "encode_wafer",
    "grid_size",
    "load_wafer_maps",
    "save_grid",
    "select_maps",
    "wafer_rgb",
]
