"""``selfsup wafers similar`` (the maps most like a query, as a table and a PNG grid) and
``selfsup wafers synth`` (synthetic WM-811K-style maps to a .npz)."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from selfsup.cli.common import FORMATTER, add_load_args


def cmd_wafers_similar(args: argparse.Namespace) -> int:
    from selfsup.wafers import find_similar, save_similarity_grid

    result = find_similar(
        args.run,
        args.query,
        data=args.data,
        split=args.split,
        k=args.k,
        checkpoint=args.checkpoint,
        trust_checkpoint=args.trust_checkpoint,
        trust_pickle=args.trust_pickle,
        cache=False if args.no_cache else (args.cache or True),
        batch_size=args.batch_size,
        query_split=args.query_split,
    )
    print("| rank | index | similarity | label |\n|---|---|---|---|")
    for rank, (i, s, label) in enumerate(result.neighbours, start=1):
        print(f"| {rank} | {i} | {s:.4f} | {label} |")
    vote = result.vote()
    if vote is not None:
        label, count, share = vote
        print(f"most like: {label} ({count} of {len(result.neighbours)} neighbours, "
              f"{share:.0%} of their similarity)")  # fmt: skip
    out = save_similarity_grid(result, args.out)
    print(f"wrote {out} (query + {len(result.neighbours)} neighbours from {result.maps.source})")
    return 0


def cmd_wafers_synth(args: argparse.Namespace) -> int:
    """``selfsup wafers synth``: generated maps written as a pickle-free wafer .npz."""
    from selfsup.data.synthetic_wafers import generate_wafer_maps
    from selfsup.data.wm811k_pickles import write_wafer_npz

    if len(args.size) not in (1, 2):
        raise ValueError(f"--size takes SIDE or LOW HIGH, got {len(args.size)} numbers")
    size = args.size[0] if len(args.size) == 1 else (args.size[0], args.size[1])
    weights = None if args.weights == "uniform" else args.weights
    for option, value in (
        ("--val-fraction", args.val_fraction),
        ("--test-fraction", args.test_fraction),
    ):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{option} must be in [0, 1), got {value}")
    maps = generate_wafer_maps(
        args.n, size=size, class_weights=weights, seed=args.seed,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction,
    )  # fmt: skip
    path = write_wafer_npz(maps, args.out)
    counts = np.bincount(maps.labels, minlength=len(maps.class_names)).tolist()
    shown = ", ".join(f"{c} {k}" for c, k in zip(maps.class_names, counts, strict=True))
    splits = ", ".join(f"{s} {int(np.sum(maps.split == s))}" for s in ("train", "val", "test"))
    print(f"wrote {len(maps)} synthetic wafer maps to {path} ({shown}; splits {splits})")
    return 0


def add_wafer_commands(sub_parsers: Any) -> None:
    """``selfsup wafers similar | synth``."""
    p = sub_parsers.add_parser(
        "wafers",
        help="wafer-map tools: similarity search, synthetic maps",
        formatter_class=FORMATTER,
    )
    sub = p.add_subparsers(dest="wafers_command", required=True)

    s = sub.add_parser(
        "similar",
        help="the k wafer maps most similar to a query, as a PNG grid",
        formatter_class=FORMATTER,
    )
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
    s.add_argument(
        "--query-split",
        help="the --query index is into this split (e.g. test) while --split (e.g. train: "
        "labelled maps) is searched, so a new map is ranked against known patterns",
    )
    s.add_argument("--k", type=int, default=10, help="neighbours to show")
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--cache", help="feature cache .npz (default RUN/similarity/<data>_<split>.npz)")
    s.add_argument("--no-cache", action="store_true", help="always recompute the features")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--trust-pickle", action="store_true", help="allow a pickle as --data")
    s.set_defaults(func=cmd_wafers_similar)

    g = sub.add_parser(
        "synth",
        help="write synthetic WM-811K-style maps to a wafer .npz",
        formatter_class=FORMATTER,
    )
    g.add_argument("out", help="output .npz")
    g.add_argument("--n", type=int, default=10000)
    g.add_argument("--size", type=int, nargs="+", default=[26, 64], help="SIDE or LOW HIGH")
    g.add_argument("--weights", default="uniform", choices=["uniform", "real"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--val-fraction", type=float, default=0.1,
        help="maps of each class in split 'val' (pretrain's kNN monitor queries); rest 'train'",
    )  # fmt: skip
    g.add_argument(
        "--test-fraction", type=float, default=0.1, help="maps of each class in split 'test'"
    )
    g.set_defaults(func=cmd_wafers_synth)
