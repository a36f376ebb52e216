"""``selfsup pretrain``: parse the options into a PretrainConfig, train, print the summary."""

from __future__ import annotations

import argparse
from typing import Any

from selfsup.cli.common import FORMATTER, add_trust_arg


def cmd_pretrain(args: argparse.Namespace) -> int:
    from selfsup.config import resolve_config
    from selfsup.eval.report import knn_comparison_table, knn_gain_line, monitor_share_line
    from selfsup.train.pretrain import pretrain
    from selfsup.train.runfolder import read_summary
    from selfsup.train.trainer import is_main_process

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
        f"{summary.get('steps')} steps ({summary.get('epochs_trained', 0):.3g} epochs), "
        f"{minutes:.1f} min"
    )
    print(knn_comparison_table(summary))
    if gain := knn_gain_line(summary):
        print(gain)
    if share := monitor_share_line(summary, cfg.knn_every_n_epochs):
        print(share)
    bank = summary.get("knn_bank")
    if bank and bank["size"] < bank["of"]:
        print(
            f"kNN bank: a seeded {bank['size']} of the {bank['of']} training images "
            f"(knn_max_train); `selfsup eval knn RUN --max-bank {bank['size']} --seed "
            f"{bank['seed']}` draws the same, without --max-bank it votes with all of them"
        )
    return 0


def add_pretrain_command(sub: Any) -> None:
    from selfsup.data.spec import SPEC_HELP
    from selfsup.methods import METHODS
    from selfsup.runtime.optim import OPTIMIZERS
    from selfsup.runtime.precision import PRECISIONS

    p = sub.add_parser(
        "pretrain",
        help="pretrain a method (default: SimCLR on wafer maps)",
        formatter_class=FORMATTER,
        description="Options left out take the value of --config, else PretrainConfig's default "
        "(selfsup/config.py): SimCLR, convnet_small, the built-in wafer maps, 32 px, 3 epochs.",
    )
    p.add_argument("--config", help="YAML file with PretrainConfig keys")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any PretrainConfig key, value as YAML; dotted keys reach nested ones, e.g. "
        "--set backbone_kwargs.width=16 --set method_kwargs.temperature=0.2 (repeatable)",
    )
    p.add_argument("--method", help=f"one of {', '.join(METHODS.names())}")
    p.add_argument("--backbone", help="a name from `selfsup backbones`, or timm/<model>")
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
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--image-size", type=int)
    p.add_argument("--devices", help="auto, a number, or GPU ids like 0,1")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--accelerator", help="auto | cpu | gpu | cuda | mps | tpu")
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--out", help="parent folder of run folders (default runs/)")
    p.add_argument("--name", help="run folder name")
    p.add_argument("--resume", help="run folder or .ckpt to continue")
    add_trust_arg(p)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)
