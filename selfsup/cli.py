"""The ``selfsup`` command: pretrain, eval knn, embed, export, methods, backbones, data check."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

EXIT_USER_ERROR = 2


# --- loading what a path points at ---------------------------------------------------------


def load_trained(path: str | Path, checkpoint: str = "auto") -> tuple[Any, Any, dict[str, Any]]:
    """(backbone, preprocess, metadata) from a run folder, an export folder or a .ckpt file.

    A run folder gives its exported backbone; a killed run (no export yet) its last checkpoint.
    ``checkpoint`` = best | last picks a checkpoint explicitly.
    """
    from selfsup.export import META, backbone_metadata, load_backbone, load_method_from_checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"'{path}' does not exist (expected a run folder or export)")
    ckpt: Path | None = None
    if path.is_file() and path.suffix == ".ckpt":
        ckpt = path
    elif checkpoint in ("best", "last"):
        ckpt = path / "checkpoints" / f"{checkpoint}.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"run folder '{path}' has no checkpoints/{checkpoint}.ckpt")
    elif (path / META).is_file():
        backbone = load_backbone(path)
        return backbone, preprocess_for(backbone.metadata), backbone.metadata
    elif (path / "checkpoints" / "last.ckpt").is_file():
        ckpt = path / "checkpoints" / "last.ckpt"
    else:
        raise FileNotFoundError(
            f"'{path}' holds neither {META} nor checkpoints/last.ckpt: not a selfsup run or export"
        )
    method = load_method_from_checkpoint(ckpt)
    return method.backbone.eval(), method.views.preprocess, backbone_metadata(method)


def preprocess_for(meta: dict[str, Any]) -> Any:
    from selfsup.views.recipes import make_views

    overrides = {}
    if meta.get("mean") and meta.get("std"):
        overrides = {"mean": tuple(meta["mean"]), "std": tuple(meta["std"])}
    recipe = make_views(
        "simclr",
        image_size=meta["image_size"],
        in_channels=meta["in_channels"],
        style=meta.get("view_style", "natural"),
        **(overrides if meta.get("view_style", "natural") == "natural" else {}),
    )
    return recipe.preprocess


WAFER_SPECS = ("wafers", "wm811k")


def _load_eval_data(spec: str, meta: dict[str, Any], split: str | None) -> Any:
    """Data at the backbone's image size; ``split`` applies to the built-in wafers only."""
    from selfsup.data import load_dataset

    return load_dataset(
        spec,
        image_size=meta["image_size"],
        in_channels=meta["in_channels"],
        split=split if spec in WAFER_SPECS else None,
    )


# --- commands -------------------------------------------------------------------------------------


def cmd_pretrain(args: argparse.Namespace) -> int:
    from selfsup.config import resolve_config
    from selfsup.train.pretrain import pretrain
    from selfsup.train.report import knn_comparison_table
    from selfsup.train.runfolder import read_summary

    explicit = {
        "method": args.method,
        "backbone": args.backbone,
        "data": args.data,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
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
    }
    cfg = resolve_config(args.config, args.set, **explicit)
    if args.no_progress:
        cfg.progress_bar = False
    _method, run_dir = pretrain(cfg)
    summary = read_summary(run_dir)
    print(f"\nrun folder: {run_dir}")
    minutes = summary.get("train_seconds", 0.0) / 60
    print(
        f"{summary.get('method')} on {cfg.data}: {summary.get('epochs_completed')} epochs, "
        f"{summary.get('steps')} steps, {minutes:.1f} min"
    )
    print(knn_comparison_table(summary))
    return 0


def cmd_eval_knn(args: argparse.Namespace) -> int:
    from selfsup.train.callbacks import backbone_knn_scores
    from selfsup.train.checkpoint import atomic_write_text

    if args.data not in WAFER_SPECS and not args.query_data:
        raise ValueError(
            f"eval knn: --query-data is needed with --data '{args.data}' "
            "(queries must not be the bank itself)"
        )
    backbone, preprocess, meta = load_trained(args.run, args.checkpoint)
    bank = _load_eval_data(args.data, meta, args.bank_split)
    queries = _load_eval_data(args.query_data or args.data, meta, args.split)
    for role, ds in (("bank", bank), ("queries", queries)):
        if ds.labels is None:
            raise ValueError(f"eval knn: the {role} data '{ds.source}' has no labels")
    scores = backbone_knn_scores(
        backbone, preprocess, bank, queries, k=args.k, temperature=args.temperature
    )
    result = {
        "protocol": "knn",
        "k": args.k,
        "temperature": args.temperature,
        "bank": {"data": args.data, "split": args.bank_split, "size": len(bank)},
        "queries": {
            "data": args.query_data or args.data,
            "split": args.split,
            "size": len(queries),
        },
        "scores": scores,
    }
    print("| metric | value |\n|---|---|")
    for key, value in scores.items():
        print(f"| {key} | {value:.4f} |")
    run = Path(args.run)
    if run.is_dir():
        atomic_write_text(
            run / f"eval_knn_{args.split or 'data'}.json", json.dumps(result, indent=2)
        )
    return 0


def _backbone_checksum(backbone: Any) -> str:
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(backbone.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _protocol_splits(args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    """train (labelled, maybe a fraction), val (selection only) and test (scored once)."""
    import torch

    from selfsup.eval.finetune import stratified_fraction

    if args.data in WAFER_SPECS:
        train = _load_eval_data(args.data, meta, args.train_split)
        val = _load_eval_data(args.data, meta, args.val_split)
        test = _load_eval_data(args.data, meta, args.test_split)
    else:
        if not args.test_data:
            raise ValueError(
                f"eval {args.protocol}: --test-data is needed with --data '{args.data}'"
            )
        train = _load_eval_data(args.data, meta, None)
        test = _load_eval_data(args.test_data, meta, None)
        if args.val_data:
            val = _load_eval_data(args.val_data, meta, None)
        else:  # carve a stratified, seeded 10 % of train for selection
            if train.labels is None:
                raise ValueError(f"eval {args.protocol}: '{args.data}' has no labels")
            val_idx = stratified_fraction(train.labels, 0.1, seed=args.seed)
            keep = torch.ones(len(train), dtype=torch.bool)
            keep[val_idx] = False
            val, train = train.subset(val_idx), train.subset(keep.nonzero().squeeze(1))
    for role, ds in (("train", train), ("val", val), ("test", test)):
        if ds.labels is None:
            raise ValueError(f"eval {args.protocol}: the {role} data '{ds.source}' has no labels")
    if args.label_fraction < 1:
        train = train.subset(stratified_fraction(train.labels, args.label_fraction, args.seed))
    return {"train": train, "val": val, "test": test}


def cmd_eval_supervised(args: argparse.Namespace) -> int:
    """linear / mlp probes on frozen features, or fine-tuning: chosen on val, test scored once."""
    from selfsup.eval import extract_features, format_metrics_table, linear_probe, mlp_probe
    from selfsup.eval.finetune import finetune
    from selfsup.train.checkpoint import atomic_write_text
    from selfsup.views.recipes import make_views

    backbone, preprocess, meta = load_trained(args.run, args.checkpoint)
    splits = _protocol_splits(args, meta)
    test = splits["test"]
    num_classes = int(max(int(ds.labels.max()) for ds in splits.values()) + 1)
    if args.protocol == "finetune":
        style = meta.get("view_style", "natural")
        recipe = make_views(
            "simclr", image_size=meta["image_size"], in_channels=meta["in_channels"], style=style
        )
        result = finetune(
            backbone, splits["train"].images, splits["train"].labels,
            splits["val"].images, splits["val"].labels, augment=recipe.single_view,
            preprocess=preprocess, num_classes=num_classes, epochs=args.epochs, seed=args.seed,
        )  # fmt: skip
        metrics = result.evaluate(test.images, test.labels, preprocess, test.class_names)
        chosen = {"epoch": result.epoch, "val_macro_f1": result.val_macro_f1}
    else:
        feats = {k: extract_features(backbone, ds.images, preprocess) for k, ds in splits.items()}
        fit = linear_probe if args.protocol == "linear" else mlp_probe
        result = fit(
            feats["train"], splits["train"].labels, feats["val"], splits["val"].labels,
            num_classes=num_classes, seed=args.seed, patience=10,
        )  # fmt: skip
        metrics = result.evaluate(feats["test"], test.labels, class_names=test.class_names)
        chosen = {**result.hyperparameters, "weight_decay": result.weight_decay,
                  "epoch": result.epoch, "val_macro_f1": result.val_macro_f1}  # fmt: skip
    record = {
        "protocol": args.protocol,
        "selection": "validation macro-F1; test scored once",
        "seed": args.seed,
        "label_fraction": args.label_fraction,
        "splits": {k: {"source": ds.source, "size": len(ds)} for k, ds in splits.items()},
        "backbone": {"name": meta.get("name"), "checksum": _backbone_checksum(backbone)},
        "chosen": chosen,
        "test": metrics,
    }
    keys = ["macro_f1", "balanced_accuracy", "accuracy"]
    print(format_metrics_table({f"{args.protocol} (test)": metrics}, keys=keys))
    run = Path(args.run)
    if run.is_dir():
        name = f"eval_{args.protocol}_{args.train_split if args.data in WAFER_SPECS else 'data'}"
        atomic_write_text(run / f"{name}.json", json.dumps(record, indent=2, default=str))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from selfsup.eval import extract_features

    backbone, preprocess, meta = load_trained(args.run, args.checkpoint)
    data = _load_eval_data(args.data, meta, args.split)
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
    from selfsup.export import export_backbone, load_method_from_checkpoint

    run = Path(args.run)
    ckpt = run if run.suffix == ".ckpt" else run / "checkpoints" / f"{args.checkpoint}.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"export: no checkpoint at '{ckpt}'")
    method = load_method_from_checkpoint(ckpt)
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

    print(format_check(check_data(args.path, image_size=args.image_size)))
    return 0


# --- parser ---------------------------------------------------------------------------------------


def _add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder, export folder or .ckpt file")
    p.add_argument(
        "--checkpoint",
        default="auto",
        choices=["auto", "best", "last"],
        help="auto: the exported backbone, else the last checkpoint",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain a method (default: FastSiam on wafer maps)")
    p.add_argument("--config", help="YAML file with PretrainConfig keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument("--method")
    p.add_argument("--backbone")
    p.add_argument("--data", help="'wafers' (built-in), an image folder, or a .npy/.npz file")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
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
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="evaluate a run or exported backbone")
    eval_sub = p.add_subparsers(dest="protocol", required=True)
    k = eval_sub.add_parser("knn", help="weighted kNN (cosine, exp(sim/t))")
    _add_load_args(k)
    k.add_argument("--data", default="wafers")
    k.add_argument("--bank-split", default="train", help="labelled split voting (wafers)")
    k.add_argument("--split", default="val", help="query split (wafers)")
    k.add_argument("--query-data", help="other labelled data for the queries")
    k.add_argument("--k", type=int, nargs="+", default=[5, 200])
    k.add_argument("--temperature", type=float, default=0.1)
    k.set_defaults(func=cmd_eval_knn)
    for protocol, text in (
        ("linear", "logistic regression on frozen features"),
        ("mlp", "one-hidden-layer MLP on frozen features"),
        ("finetune", "backbone + linear head trained on the labels"),
    ):
        e = eval_sub.add_parser(protocol, help=f"{text}; chosen on val, test scored once")
        _add_load_args(e)
        e.add_argument("--data", default="wafers", help="labelled training data")
        e.add_argument("--train-split", default="train_10", help="wafers: labelled split")
        e.add_argument("--val-split", default="val")
        e.add_argument("--test-split", default="test")
        e.add_argument("--val-data", help="other data: validation set (default: 10 %% of train)")
        e.add_argument("--test-data", help="other data: test set")
        e.add_argument("--label-fraction", type=float, default=1.0)
        e.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
        e.add_argument("--seed", type=int, default=0)
        e.set_defaults(func=cmd_eval_supervised)

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
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="regenerate RUN/report.md and RUN/plots/*.png")
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="labelled held-out data (default: the run's validation data)")
    p.add_argument("--split", help="wafers: query split (default val)")
    p.add_argument("--bank", help="labelled data that votes in the kNN (default: training data)")
    p.add_argument("--max-points", type=int, default=3000)
    p.add_argument("--max-bank", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_report)

    from selfsup.wafers import add_wafer_commands

    add_wafer_commands(sub)  # selfsup wafers similar | synth

    p = sub.add_parser("methods", help="list methods and their default hyper-parameters")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("backbones", help="list backbones")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("data", help="data utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="counts, sizes, unreadable files")
    c.add_argument("path", help="'wafers', an image folder or a .npy/.npz file")
    c.add_argument("--image-size", type=int, default=None)
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
