"""The ``selfsup`` command: pretrain, eval (knn, linear, mlp, finetune, transfer), embed, export,
report, methods, backbones, data."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.artifacts import load_trained, preprocess_for, recipe_for  # noqa: F401 (public)

EXIT_USER_ERROR = 2


# --- commands -------------------------------------------------------------------------------------


def cmd_pretrain(args: argparse.Namespace) -> int:
    from selfsup.config import resolve_config
    from selfsup.train.pretrain import is_main_process, pretrain
    from selfsup.train.report import knn_comparison_table
    from selfsup.train.runfolder import read_summary

    explicit = {
        "method": args.method,
        "backbone": args.backbone,
        "data": args.data,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "max_minutes": args.max_minutes,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "image_size": args.image_size,
        "devices": args.devices,
        "num_nodes": args.num_nodes,
        "accelerator": args.accelerator,
        "precision": args.precision,
        "out": args.out,
        "name": args.name,
        "resume": args.resume,
        "seed": args.seed,
        "trust_checkpoint": args.trust_checkpoint or None,
    }
    cfg = resolve_config(args.config, args.set, **explicit)
    if args.no_progress:
        cfg.progress_bar = False
    _method, run_dir = pretrain(cfg)
    if not is_main_process():  # DDP workers: process 0 speaks for the run
        return 0
    summary = read_summary(run_dir)
    print(f"\nrun folder: {run_dir}")
    minutes = summary.get("train_seconds", 0.0) / 60
    print(
        f"{summary.get('method')} on {summary.get('data', cfg.data)}: "
        f"{summary.get('epochs_completed')} epochs, {summary.get('steps')} steps, "
        f"{minutes:.1f} min"
    )
    print(knn_comparison_table(summary))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from selfsup.eval import extract_features
    from selfsup.eval.commands import load_eval_data

    backbone, preprocess, meta = load_trained(
        args.run, args.checkpoint, trust_checkpoint=args.trust_checkpoint
    )
    data = load_eval_data(args.data, meta, args.split)
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
    ckpt = run if run.suffix == ".ckpt" else run / "checkpoints" / f"{args.checkpoint}.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"export: no checkpoint at '{ckpt}'")
    method = load_method_from_checkpoint(ckpt, trust=args.trust_checkpoint)
    out = Path(args.out) if args.out else (run.parent if run.suffix == ".ckpt" else run) / "export"
    path = export_backbone(method, out)
    print(f"exported {method.backbone.name} ({method.feature_dim}-d features) to {path}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import selfsup

    for name, defaults in selfsup.list_methods().items():
        shown = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
        print(f"{name}: {shown}")
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from selfsup.backbones import list_backbones

    print("\n".join(list_backbones()))
    return 0


def cmd_data_wafers_convert(args: argparse.Namespace) -> int:
    from selfsup.data.wm811k_pickles import convert_wafers

    counts = convert_wafers(
        args.src,
        args.dst,
        trust_pickle=args.trust_pickle,
        on_bad="skip" if args.skip_bad else "error",
    )
    print(json.dumps(counts, indent=2, default=str))
    return 0


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


def cmd_data_coco_crops(args: argparse.Namespace) -> int:
    from selfsup.data.coco_crops import coco_to_crops, convert_coco_export, format_crop_counts

    ann = Path(args.annotations)
    if ann.is_dir():
        results = convert_coco_export(ann, args.out, min_size=args.min_size, padding=args.padding)
    else:
        results = {
            "all": coco_to_crops(
                ann,
                args.images or ann.parent,
                args.out,
                min_size=args.min_size,
                padding=args.padding,
            )  # fmt: skip
        }
    print(format_crop_counts(results))
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from selfsup.data import check_data, format_check

    print(format_check(check_data(args.path, image_size=args.image_size, full=args.full)))
    return 0


# --- parser ---------------------------------------------------------------------------------------


TRUST_CHECKPOINT_HELP = (
    "read checkpoints with full unpickling, which can run code from the file: only for "
    "checkpoints you trust (selfsup's own never need it)"
)


def _add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_CHECKPOINT_HELP)


def _add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder, export folder or .ckpt file")
    p.add_argument(
        "--checkpoint",
        default="auto",
        choices=["auto", "best", "last"],
        help="auto: the exported backbone, else the last checkpoint",
    )
    _add_trust_arg(p)


def build_parser() -> argparse.ArgumentParser:
    from selfsup.data.dataset import SPEC_HELP

    parser = argparse.ArgumentParser(prog="selfsup", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain a method (default: SimCLR on wafer maps)")
    p.add_argument("--config", help="YAML file with PretrainConfig keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument("--method")
    p.add_argument("--backbone")
    p.add_argument("--data", help=SPEC_HELP)
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument(
        "--minutes",
        type=float,
        dest="max_minutes",
        help="wall-clock budget: the LR schedule ends and training stops when it is spent "
        "(or at --epochs / --max-steps, whichever comes first)",
    )
    p.add_argument("--batch-size", type=int, help="per device")
    p.add_argument("--lr", type=float, help="base LR at batch 256 (scaled by lr_scaling)")
    p.add_argument("--optimizer", choices=["sgd", "lars", "adamw"])
    p.add_argument("--image-size", type=int)
    p.add_argument("--devices")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--accelerator")
    p.add_argument("--precision", choices=["auto", "bf16-mixed", "16-mixed", "32-true"])
    p.add_argument("--out", help="parent folder of run folders (default runs/)")
    p.add_argument("--name", help="run folder name")
    p.add_argument("--resume", help="run folder or .ckpt to continue")
    _add_trust_arg(p)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    from selfsup.eval.commands import add_eval_commands

    add_eval_commands(sub, _add_load_args)  # selfsup eval knn | linear | mlp | finetune | transfer

    p = sub.add_parser("embed", help="write backbone features to .npz (features, labels, names)")
    _add_load_args(p)
    p.add_argument("--data", default="wafers")
    p.add_argument("--split", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=512)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("export", help="backbone-only safetensors + JSON")
    p.add_argument("run", help="run folder or .ckpt")
    p.add_argument("--checkpoint", default="last", choices=["best", "last"])
    p.add_argument("--out", help="output folder (default RUN/export)")
    _add_trust_arg(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="regenerate RUN/report.md and RUN/plots/*.png")
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="labelled held-out data (default: the run's validation data)")
    p.add_argument("--split", help="wafers: query split (default val)")
    p.add_argument("--bank", help="labelled data that votes in the kNN (default: training data)")
    p.add_argument("--max-points", type=int, default=3000)
    p.add_argument("--max-bank", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    _add_trust_arg(p)
    p.set_defaults(func=cmd_report)

    from selfsup.wafers import add_wafer_commands

    add_wafer_commands(sub, _add_load_args)  # selfsup wafers similar | synth

    p = sub.add_parser("methods", help="list methods and their default hyper-parameters")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("backbones", help="list backbones")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("data", help="data utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="counts, sizes, unreadable files")
    c.add_argument("path", help=SPEC_HELP)
    c.add_argument("--image-size", type=int, default=None)
    c.add_argument(
        "--full",
        action="store_true",
        help="decode every image (finds truncated or corrupt files; slower than the header check)",
    )
    c.set_defaults(func=cmd_data_check)
    cc = data_sub.add_parser("coco-crops", help="COCO detection boxes -> per-class crop folders")
    cc.add_argument("--annotations", required=True, help="a COCO json or a Roboflow export folder")
    cc.add_argument("--images", help="images of a single json (default: the json's folder)")
    cc.add_argument("--out", required=True)
    cc.add_argument("--min-size", type=float, default=2)
    cc.add_argument("--padding", type=float, default=0.0, help="fraction of box size per side")
    cc.set_defaults(func=cmd_data_coco_crops)
    w = data_sub.add_parser("wafers", help="WM-811K wafer-map files")
    w_sub = w.add_subparsers(dest="wafers_command", required=True)
    cv = w_sub.add_parser("convert", help="WM-811K pickle(s) -> pickle-free .npz")
    cv.add_argument("src", help="LSWMD.pkl / WM811K.pkl, a clean-subset .pkl.xz, or a folder")
    cv.add_argument("dst", help="output .npz")
    cv.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling (runs code from the file; only for files you trust)",
    )
    cv.add_argument(
        "--skip-bad", action="store_true", help="skip malformed maps (counted and logged)"
    )
    cv.set_defaults(func=cmd_data_wafers_convert)
    return parser


def _configure_logging(verbose: bool) -> None:
    """selfsup's own messages on stderr; Lightning keeps its handler, minus its advertising."""
    logger = logging.getLogger("selfsup")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    quiet_lightning()


def quiet_lightning() -> None:
    import warnings

    # the run folder holds config.yaml before the CSV logger starts; that is intended
    warnings.filterwarnings(
        "ignore", message="Experiment logs directory .* exists and is not empty"
    )
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "💡 Tip" not in record.getMessage()
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    from selfsup.train.module import NonFiniteLossError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, NonFiniteLossError) as err:
        if args.verbose:
            raise
        print(f"selfsup {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
