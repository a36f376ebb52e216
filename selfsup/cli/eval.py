"""``selfsup eval``: knn, linear, mlp, finetune and transfer on a run folder or exported backbone.

Every command loads the backbone (``selfsup.artifacts.load_trained``), reads its data at the
backbone's image size, and writes a JSON record (protocol, seed, splits, backbone checksum,
chosen settings, test metrics) into the run folder. Data with named splits (the built-in
wafers, IDX folders) supply train / val / test themselves; other data needs ``--test-data``;
without a validation split, a seeded, stratified share of train is carved off
(``selfsup.eval.protocol``). Selection reads val only; test is scored once.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfsup.artifacts import load_trained, recipe_for
from selfsup.cli.common import FORMATTER, add_load_args
from selfsup.config import apply_overrides
from selfsup.data.dataset import WAFER_SPECS

# The split each role reads from data that has named splits; None: carved from train.
NAMED_SPLITS: dict[str, dict[str, str | None]] = {
    "wafers": {"train": "train_10", "val": "val", "test": "test", "bank": "train", "query": "val"},
    "idx": {"train": "train", "val": None, "test": "test", "bank": "train", "query": "test"},
}
# fine-tuning steps at the least: 1 % of the wafer labels (623) is 3 batches of 256 an epoch
FINETUNE_MIN_STEPS = 300


def _named_splits(spec: str) -> dict[str, str | None] | None:
    """Default split per role for the built-in wafers and IDX folders; None for other data
    (and for an IDX spec whose ``:split`` suffix already picks one)."""
    from selfsup.data.dataset import spec_kind, split_spec

    if split_spec(spec)[1] is not None:
        return None
    return NAMED_SPLITS.get(spec_kind(spec))


def _split_for(spec: str, role: str, given: str | None = None) -> str | None:
    """The split of ``spec`` that plays ``role``: ``given``, else the data's default."""
    named = _named_splits(spec)
    if named is None:
        return None
    return given or named[role]


def load_eval_data(
    spec: str, meta: dict[str, Any], split: str | None, *, match_channels: bool = True
) -> Any:
    """Data at the backbone's image size (and channel count, unless not ``match_channels``);
    ``split`` applies to data with named splits only."""
    from selfsup.data import load_dataset

    split = split if _named_splits(spec) else None
    in_channels = int(meta["in_channels"]) if match_channels else None
    return load_dataset(spec, image_size=meta["image_size"], in_channels=in_channels, split=split)


def _load_transfer_data(
    spec: str, meta: dict[str, Any], split: str | None
) -> tuple[Any, str | None]:
    """(data, how its channels were made the backbone's, or None) for a transfer target."""
    from selfsup.data.dataset import CHANNEL_CONVERSIONS, spec_kind

    channels = int(meta["in_channels"])
    if spec_kind(spec) == "folder":  # PIL decodes every file to the backbone's mode
        note = f"image files decoded by PIL to {channels} channel(s)"
        return load_eval_data(spec, meta, split), note
    data = load_eval_data(spec, meta, split, match_channels=False)
    return data.with_channels(channels), CHANNEL_CONVERSIONS.get((data.in_channels, channels))


def cmd_eval_knn(args: argparse.Namespace) -> int:
    from selfsup.train.callbacks import backbone_knn_scores

    if _named_splits(args.data) is None and not args.query_data:
        raise ValueError(
            f"eval knn: --query-data is needed with --data '{args.data}' "
            "(queries must not be the bank itself)"
        )
    query_data = args.query_data or args.data
    bank_split = _split_for(args.data, "bank", args.bank_split)
    query_split = _split_for(query_data, "query", args.split)
    _check_distinct("knn", {"bank": (args.data, bank_split), "queries": (query_data, query_split)})
    backbone, preprocess, meta = load_trained(
        args.run, args.checkpoint, trust_checkpoint=args.trust_checkpoint
    )
    bank = load_eval_data(args.data, meta, bank_split)
    queries = load_eval_data(query_data, meta, query_split)
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
        "bank": {"data": args.data, "split": bank_split, "size": len(bank)},
        "queries": {"data": query_data, "split": query_split, "size": len(queries)},
        "backbone": {"name": meta.get("name"), "checksum": _backbone_checksum(backbone)},
        "scores": scores,
    }
    print("| metric | value |\n|---|---|")
    for key, value in scores.items():
        print(f"| {key} | {value:.4f} |")
    _write_record(args.run, f"eval_knn_{query_split or 'val'}", result)
    return 0


def _write_record(run: str, name: str, record: dict[str, Any]) -> None:
    """Write ``RUN/<name>.json`` when the run is a folder and say where (or why not)."""
    from selfsup.runtime.files import atomic_write_text

    folder = Path(run)
    if not folder.is_dir():
        print(f"no JSON written: '{run}' is a file, not a run folder")
        return
    path = folder / f"{name}.json"
    atomic_write_text(path, json.dumps(record, indent=2, default=str))
    print(f"wrote {path}")


def _backbone_checksum(backbone: Any) -> str:
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(backbone.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


Loader = Callable[[str, str | None], Any]  # (data spec, split) -> ImageDataset


def _protocol_splits(args: argparse.Namespace, load: Loader) -> dict[str, Any]:
    """train (labelled, maybe a fraction), val (selection only) and test (scored once), read
    from ``_protocol_sources``; without a val source, a seeded, stratified
    ``selfsup.eval.protocol.VAL_FRACTION`` of train is carved off."""
    from selfsup.eval.finetune import stratified_fraction
    from selfsup.eval.protocol import carve_validation

    splits = {role: load(spec, split) for role, (spec, split) in _protocol_sources(args).items()}
    if "val" not in splits:
        if splits["train"].labels is None:
            raise ValueError(f"eval {args.protocol}: '{args.data}' has no labels")
        splits["train"], splits["val"] = carve_validation(splits["train"], seed=args.seed)
    for role, ds in splits.items():
        if ds.labels is None:
            raise ValueError(f"eval {args.protocol}: the {role} data '{ds.source}' has no labels")
    if args.label_fraction < 1:
        train = splits["train"]
        splits["train"] = train.subset(
            stratified_fraction(train.labels, args.label_fraction, args.seed)
        )
    return {role: splits[role] for role in ("train", "val", "test")}


def _protocol_sources(args: argparse.Namespace) -> dict[str, tuple[str, str | None]]:
    """(data spec, split) per role: train from ``--data``; val from ``--val-data`` or the data's
    val split (wafers; absent for IDX and other data); test from ``--test-data`` or the data's
    test split (wafers, IDX). No two roles may read the same data."""
    if not args.test_data and _named_splits(args.data) is None:
        raise ValueError(f"eval {args.protocol}: --test-data is needed with --data '{args.data}'")
    sources = {"train": (args.data, _split_for(args.data, "train", args.train_split))}
    if args.val_data:
        val_split = _split_for(args.val_data, "val")
        if val_split is None and _named_splits(args.val_data) is not None:
            raise ValueError(
                f"eval {args.protocol}: '{args.val_data}' has no validation split; name one "
                f"('{args.val_data}:train') or leave --val-data out to carve val from train"
            )
        sources["val"] = (args.val_data, val_split)
    elif _split_for(args.data, "val", args.val_split):
        sources["val"] = (args.data, _split_for(args.data, "val", args.val_split))
    if args.test_data:
        sources["test"] = (args.test_data, _split_for(args.test_data, "test"))
    else:
        sources["test"] = (args.data, _split_for(args.data, "test", args.test_split))
    _check_distinct(args.protocol, sources)
    return sources


def _check_distinct(protocol: str, sources: dict[str, tuple[str, str | None]]) -> None:
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


def _fit_and_test(
    protocol: str, backbone: Any, preprocess: Any, meta: dict[str, Any],
    splits: dict[str, Any], args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """(chosen settings, test metrics): fit ``protocol`` on train, select on val, test once."""
    from selfsup.eval import extract_features, linear_probe, mlp_probe
    from selfsup.eval.finetune import finetune

    test = splits["test"]
    num_classes = int(max(int(ds.labels.max()) for ds in splits.values()) + 1)
    if protocol == "finetune":
        recipe = recipe_for(meta).with_params(**apply_overrides({}, args.views, "--views"))
        result = finetune(
            backbone, splits["train"].images, splits["train"].labels,
            splits["val"].images, splits["val"].labels, augment=recipe.single_view,
            preprocess=preprocess, num_classes=num_classes, epochs=args.epochs,
            min_steps=args.min_steps, head_init=args.head_init, seed=args.seed,
        )  # fmt: skip
        metrics = result.evaluate(test.images, test.labels, preprocess, test.class_names)
        chosen = {"step": result.step, "epoch": result.epoch, "val_macro_f1": result.val_macro_f1,
                  "head_init": args.head_init, "views": recipe.params}  # fmt: skip
        return chosen, metrics
    feats = {k: extract_features(backbone, ds.images, preprocess) for k, ds in splits.items()}
    if protocol == "linear":
        fit, settings = linear_probe, {}
    else:  # mini-batch Adam (full-batch L-BFGS on a hidden layer is slow on large splits)
        fit, settings = mlp_probe, {"batch_size": 256, "epochs": 40}
    result = fit(
        feats["train"], splits["train"].labels, feats["val"], splits["val"].labels,
        num_classes=num_classes, seed=args.seed, patience=10, **settings,
    )  # fmt: skip
    metrics = result.evaluate(feats["test"], test.labels, class_names=test.class_names)
    chosen = {**result.hyperparameters, "weight_decay": result.weight_decay,
              "epoch": result.epoch, "val_macro_f1": result.val_macro_f1}  # fmt: skip
    return chosen, metrics


def _eval_record(
    args: argparse.Namespace, backbone: Any, meta: dict[str, Any], splits: dict[str, Any],
    chosen: dict[str, Any], metrics: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    return {
        "protocol": args.protocol,
        "selection": "validation macro-F1; test scored once",
        "seed": args.seed,
        "label_fraction": args.label_fraction,
        "splits": {k: {"source": ds.source, "size": len(ds)} for k, ds in splits.items()},
        "backbone": {"name": meta.get("name"), "checksum": _backbone_checksum(backbone)},
        "chosen": chosen,
        "test": metrics,
    }


def _report_eval(args: argparse.Namespace, label: str, record: dict[str, Any], name: str) -> None:
    """Print the test table; write ``RUN/<name>.json`` when the run is a folder."""
    from selfsup.eval import format_metrics_table

    keys = ["macro_f1", "balanced_accuracy", "accuracy"]
    print(format_metrics_table({f"{label} (test)": record["test"]}, keys=keys))
    _write_record(args.run, name, record)


def cmd_eval_supervised(args: argparse.Namespace) -> int:
    """linear / mlp probes on frozen features, or fine-tuning: chosen on val, test scored once."""
    backbone, preprocess, meta = load_trained(
        args.run, args.checkpoint, trust_checkpoint=args.trust_checkpoint
    )
    splits = _protocol_splits(args, lambda spec, split: load_eval_data(spec, meta, split))
    chosen, metrics = _fit_and_test(args.protocol, backbone, preprocess, meta, splits, args)
    record = _eval_record(args, backbone, meta, splits, chosen, metrics)
    train_split = _split_for(args.data, "train", args.train_split)
    _report_eval(args, args.protocol, record, f"eval_{args.protocol}_{train_split or 'data'}")
    return 0


def cmd_eval_transfer(args: argparse.Namespace) -> int:
    """A probe on another labelled dataset B, at the backbone's image size and channels."""
    from selfsup.data.dataset import split_spec

    backbone, preprocess, meta = load_trained(
        args.run, args.checkpoint, trust_checkpoint=args.trust_checkpoint
    )
    conversions: dict[str, str] = {}

    def load(spec: str, split: str | None) -> Any:
        data, note = _load_transfer_data(spec, meta, split)
        if note:
            conversions[f"{spec} ({split})" if split else spec] = note
        return data

    splits = _protocol_splits(args, load)
    splits, preprocess, style_note = _match_styles(splits, meta, preprocess)
    chosen, metrics = _fit_and_test(args.probe, backbone, preprocess, meta, splits, args)
    record = _eval_record(args, backbone, meta, splits, chosen, metrics)
    record["transfer"] = {
        "probe": args.probe,
        "pretrained_on": _pretraining_data(Path(args.run)),
        "target": args.data,
        "image_size": meta["image_size"],
        "in_channels": meta["in_channels"],
        "channel_conversion": conversions or None,
        "style_conversion": style_note,
    }
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(split_spec(args.data)[0]).name) or "data"
    _report_eval(args, f"transfer {args.probe}", record, f"eval_transfer_{args.probe}_{slug}")
    return 0


def _match_styles(
    splits: dict[str, Any], meta: dict[str, Any], preprocess: Any
) -> tuple[dict[str, Any], Any, str | None]:
    """(splits, preprocess, note) so that wafer maps and natural images can meet.

    Same style as the backbone: unchanged. Otherwise every split becomes natural (wafer codes as
    grey levels); a natural backbone keeps its preprocess, a wafer backbone (trained on inputs
    0 / 0.5 / 1) gets natural images scaled to [0, 1] without normalisation.
    """
    from selfsup.data.dataset import WAFER_AS_GREY
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
    note = "natural images scaled to [0, 1], the wafer backbone's input range (0, 0.5, 1)"
    return splits, unit.preprocess, note


def _pretraining_data(run: Path) -> dict[str, Any]:
    """What the backbone was pretrained on, from the run's config.yaml (next to the export,
    the checkpoint, or one level up)."""
    import yaml

    base = run.parent if run.is_file() else run
    for folder in (base, base.parent):
        config = folder / "config.yaml"
        if config.is_file():
            values = yaml.safe_load(config.read_text()) or {}
            found = {k: values.get(k) for k in ("data", "method", "image_size", "epochs")}
            if str(values.get("data", "")).lower() in WAFER_SPECS:
                found["train_split"] = values.get("train_split")
            return {"config": str(config), **found}
    return {"data": None, "note": f"no config.yaml beside '{run}': pretraining data unknown"}


def label_fraction(text: str) -> float:
    """``--label-fraction``: a number in (0, 1]; argparse turns the error into exit code 2."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got '{text}'")
    return value


def _add_protocol_args(p: argparse.ArgumentParser, transfer: bool = False) -> None:
    """Data and selection arguments of the supervised protocols (linear, mlp, finetune,
    transfer)."""
    from selfsup.data.dataset import SPEC_HELP

    if transfer:
        p.add_argument("--data", required=True, help=f"labelled target data B: {SPEC_HELP}")
        p.add_argument("--probe", default="linear", choices=["linear", "mlp"])
    else:
        p.add_argument("--data", default="wafers", help=f"labelled training data: {SPEC_HELP}")
    p.add_argument("--train-split", help="labelled split (wafers: train_10; IDX: train)")
    p.add_argument("--val-split", help="wafers: val (other data: 10 %% of train, stratified)")
    p.add_argument("--test-split", help="wafers, IDX: test")
    p.add_argument("--val-data", help="other data: validation set (default: 10 %% of train)")
    p.add_argument("--test-data", help="other data: test set (needed for folders and arrays)")
    p.add_argument(
        "--label-fraction", type=label_fraction, default=1.0, metavar="FRACTION",
        help="stratified share of the train labels to use, in (0, 1]",
    )  # fmt: skip
    if not transfer:
        p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
        p.add_argument(
            "--min-steps", type=int, default=FINETUNE_MIN_STEPS,
            help="fine-tuning: at least this many steps (few labels make short epochs)",
        )  # fmt: skip
        p.add_argument(
            "--head-init", default="zero", choices=["zero", "probe"],
            help="fine-tuning head start: zero, or probe (LP-FT: the linear probe, chosen on val)",
        )  # fmt: skip
        p.add_argument(
            "--views", action="append", default=[], metavar="KEY=VALUE",
            help="fine-tuning view parameter replacing the pretraining recipe's (repeatable), "
            "e.g. die_flip_p=0",
        )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)


def add_eval_commands(sub: Any) -> None:
    """``selfsup eval knn | linear | mlp | finetune | transfer`` on the ``selfsup`` subparsers."""
    from selfsup.data.dataset import SPEC_HELP

    p = sub.add_parser(
        "eval", help="evaluate a run or exported backbone", formatter_class=FORMATTER
    )
    eval_sub = p.add_subparsers(dest="protocol", required=True)
    k = eval_sub.add_parser(
        "knn", help="weighted kNN (cosine, exp(sim/t))", formatter_class=FORMATTER
    )
    add_load_args(k)
    k.add_argument("--data", default="wafers", help=f"labelled data that votes: {SPEC_HELP}")
    k.add_argument("--bank-split", help="split that votes (wafers, IDX: train)")
    k.add_argument("--split", help="query split (wafers: val; IDX: test)")
    k.add_argument("--query-data", help="other labelled data for the queries")
    k.add_argument("--k", type=int, nargs="+", default=[5, 200])
    k.add_argument("--temperature", type=float, default=0.1)
    k.set_defaults(func=cmd_eval_knn)
    for protocol, text in (
        ("linear", "logistic regression on frozen features"),
        ("mlp", "one-hidden-layer MLP on frozen features"),
        ("finetune", "backbone + linear head trained on the labels"),
        ("transfer", "a probe on other labelled data, at the backbone's size and channels"),
    ):
        e = eval_sub.add_parser(
            protocol, help=f"{text}; chosen on val, test scored once", formatter_class=FORMATTER
        )
        add_load_args(e)
        _add_protocol_args(e, transfer=protocol == "transfer")
        e.set_defaults(func=cmd_eval_transfer if protocol == "transfer" else cmd_eval_supervised)
