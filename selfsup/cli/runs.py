"""Commands on a trained run: ``embed`` (features to .npz), ``export`` (backbone alone),
``report`` (report.md and plots)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.artifacts import load_trained
from selfsup.cli.common import FORMATTER, add_load_args, add_run_args, add_trust_arg


def cmd_embed(args: argparse.Namespace) -> int:
    from selfsup.eval import extract_features
    from selfsup.eval.api import choose_data
    from selfsup.eval.protocol import load_eval_data
    from selfsup.eval.transfer import transfer_hint

    backbone, preprocess, meta = load_trained(
        args.run, args.checkpoint, trust_checkpoint=args.trust_checkpoint
    )
    choice = choose_data(args.run, args.data)
    print(choice.note())
    data = load_eval_data(choice.data, meta, args.split)
    with transfer_hint("embed", meta, [data]):
        feats = extract_features(backbone, data.images, preprocess, batch_size=args.batch_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"features": feats.numpy()}
    if data.labels is not None:
        arrays["labels"] = data.labels.numpy()
    if data.class_names:
        arrays["class_names"] = np.array(data.class_names)
    if data.names:
        arrays["names"] = np.array(data.names)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out)
    print(f"wrote {feats.shape[0]} x {feats.shape[1]} features to {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from selfsup.artifacts import export_backbone, load_method_from_checkpoint

    run = Path(args.run)
    ckpt = (
        run if run.suffix == ".ckpt" else run / "checkpoints" / f"{_export_choice(run, args)}.ckpt"
    )
    if not ckpt.is_file():
        raise FileNotFoundError(f"export: no checkpoint at '{ckpt}'")
    method = load_method_from_checkpoint(ckpt, trust=args.trust_checkpoint)
    out = Path(args.out) if args.out else (run.parent if run.suffix == ".ckpt" else run) / "export"
    path = export_backbone(method, out)
    print(
        f"exported {method.backbone.name} ({method.feature_dim}-d features) from {ckpt} to {path}"
    )
    return 0


def _export_choice(run: Path, args: argparse.Namespace) -> str:
    """best | last: as asked, or (auto) the checkpoint the run itself exported."""
    from selfsup.train.runfolder import read_summary

    if args.checkpoint != "auto":
        return args.checkpoint
    return read_summary(run).get("exported_checkpoint", "last")


def cmd_report(args: argparse.Namespace) -> int:
    from selfsup.eval.report import write_report

    path = write_report(
        args.run,
        data=args.data,
        bank=args.bank,
        split=args.split,
        max_points=args.max_points,
        max_bank=args.max_bank,
        seed=args.seed,
        trust_checkpoint=args.trust_checkpoint,
    )
    print(f"wrote {path}")
    return 0


def add_run_commands(sub: Any) -> None:
    p = sub.add_parser(
        "embed",
        help="write backbone features to .npz (features, labels, names)",
        formatter_class=FORMATTER,
    )
    add_load_args(p)
    p.add_argument(
        "--data", help="data to embed (default: the run's data in its config.yaml, else wafers)"
    )
    p.add_argument("--split", default=None, help="split of data with named splits (wafers, IDX)")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=512)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("export", help="backbone-only safetensors + JSON", formatter_class=FORMATTER)
    add_run_args(
        p,
        "run folder or .ckpt",
        "auto: the checkpoint the run exported itself (summary.json), else last",
    )
    p.add_argument("--out", help="output folder (default RUN/export)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "report", help="regenerate RUN/report.md and RUN/plots/*.png", formatter_class=FORMATTER
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="labelled held-out data (default: the run's validation data)")
    p.add_argument("--split", help="wafers: query split (default val)")
    p.add_argument("--bank", help="labelled data that votes in the kNN (default: training data)")
    p.add_argument("--max-points", type=int, default=3000)
    p.add_argument("--max-bank", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    add_trust_arg(p)
    p.set_defaults(func=cmd_report)
