"""``selfsup eval``: knn, linear, mlp, finetune and transfer on a run folder or exported backbone.

Parses the options, calls ``selfsup.eval.api.evaluate`` (which loads the backbone, reads the
data and runs the protocol), prints the result table and writes the JSON record into the run
folder (``wrote <path>``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from selfsup.cli.common import FORMATTER, add_load_args
from selfsup.config import apply_overrides

# options whose evaluate() keyword differs from their argparse destination
EVALUATE_NAMES = {"split": "query_split"}
RUN_DATA = "the run's data in its config.yaml, else wafers"
RECORDS = (
    "Writes RUN/eval_<protocol>_<split>.json on the run's data with all labels; other data "
    "adds its name (and --test-data's / --query-data's), --label-fraction F adds _fF, "
    "--max-bank N adds _bankN. An existing file of the same name is replaced, and the "
    "command says so with its previous result. linear, mlp and finetune also save the selected "
    "model beside it (RUN/<record>_classifier: safetensors + JSON, calibrated on val) for "
    "selfsup predict."
)


def cmd_eval(args: argparse.Namespace) -> int:
    """Any ``selfsup eval`` protocol: evaluate, print the table, write RUN/<record>.json."""
    import inspect

    from selfsup.eval.api import evaluate, previous_result

    keywords = inspect.signature(evaluate).parameters
    options = {
        name: value
        for key, value in vars(args).items()
        if (name := EVALUATE_NAMES.get(key, key)) in keywords
    }
    if "views" in options:
        options["views"] = apply_overrides({}, options["views"], "--views")
    result = evaluate(args.run, **options)
    print("\n".join(result.notes))
    print(result.table())
    if Path(args.run).is_dir():
        previous = previous_result(Path(args.run) / f"{result.name}.json")
        path = result.save(args.run)
        print(f"wrote {path}")
        if result.classifier is not None:
            folder = path.with_name(result.record["classifier"])
            print(f"wrote {folder} (the selected classifier: selfsup predict {folder} --data ...)")
        if previous is not None:
            print(f"replaced {path} (previous result: {previous}; now {result.key_metric()})")
    else:
        print(f"no JSON written: '{args.run}' is a file, not a run folder")
    return 0


def label_fraction(text: str) -> float:
    """``--label-fraction``: a number in (0, 1]; argparse turns the error into exit code 2."""
    from selfsup.eval.protocol import check_fraction

    try:
        return check_fraction(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got '{text}'") from None


def learning_rate(text: str) -> float:
    """``--lr`` / ``--backbone-lr``: a finite number > 0; argparse turns the error into exit
    code 2."""
    from selfsup.eval.finetune import check_learning_rates

    try:
        return check_learning_rates(float(text), "learning rate")[0]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got '{text}'") from None


def ensemble_size(text: str) -> int:
    """``--ensemble``: an integer >= 1; argparse turns the error into exit code 2."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got '{text}'")
    return value


def positive_minutes(text: str) -> float:
    """``--minutes``: a number of minutes > 0; argparse turns the error into exit code 2."""
    from selfsup.eval.finetune import check_minutes

    try:
        return check_minutes(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of minutes > 0, got '{text}'") from None


def _add_protocol_args(p: argparse.ArgumentParser, protocol: str) -> None:
    """Data and selection arguments of the supervised protocols (linear, mlp, finetune,
    transfer); the fine-tuning options only where they take effect."""
    from selfsup.data.spec import SPEC_HELP
    from selfsup.eval.finetune import FINETUNE_BACKBONE_LR, FINETUNE_LR, HEAD_INITS
    from selfsup.eval.supervised import FINETUNE_EPOCHS, FINETUNE_MIN_STEPS, SEMI_METHODS
    from selfsup.eval.test_time import TEST_TIME_VIEWS
    from selfsup.eval.transfer import PROBES

    if protocol == "transfer":
        p.add_argument("--data", required=True, help=f"labelled target data B: {SPEC_HELP}")
        p.add_argument("--probe", default=PROBES[0], choices=PROBES)
    else:
        p.add_argument("--data", help=f"labelled training data (default: {RUN_DATA}): {SPEC_HELP}")
    p.add_argument("--train-split", help="labelled split (wafers: train_10; IDX: train)")
    p.add_argument("--val-split", help="wafers: val (other data: 10 %% of train, stratified)")
    p.add_argument("--test-split", help="wafers, IDX: test")
    p.add_argument("--val-data", help="other data: validation set (default: 10 %% of train)")
    p.add_argument("--test-data", help="other data: test set (needed for folders and arrays)")
    p.add_argument(
        "--label-fraction", type=label_fraction, default=1.0, metavar="FRACTION",
        help="stratified share of the train labels to use, in (0, 1]",
    )  # fmt: skip
    if protocol == "finetune":
        p.add_argument("--epochs", type=int, default=FINETUNE_EPOCHS, help="fine-tuning epochs")
        p.add_argument(
            "--min-steps", type=int, default=FINETUNE_MIN_STEPS,
            help="fine-tuning: at least this many steps (few labels make short epochs)",
        )  # fmt: skip
        p.add_argument(
            "--minutes", type=positive_minutes, dest="max_minutes",
            help="fine-tuning wall-clock budget: the LR schedule ends and training stops when "
            "it is spent (or after the planned steps, whichever comes first)",
        )  # fmt: skip
        p.add_argument(
            "--head-init", default=HEAD_INITS[0], choices=HEAD_INITS,
            help="fine-tuning head start: zero, or probe (LP-FT: the linear probe, chosen on val)",
        )  # fmt: skip
        p.add_argument(
            "--from-projector-layer", type=int, metavar="K",
            help="fine-tune the backbone and the first K Linear-BN-ReLU layers of the method's "
            "projector (read from the run's checkpoint); 0: the backbone alone; default: the "
            "method's paper (simclrv2: 1, others: 0)",
        )  # fmt: skip
        p.add_argument(
            "--semi", choices=SEMI_METHODS,
            help="semi-supervised fine-tuning: fixmatch (Sohn et al. 2020) also learns from the "
            "unlabelled training images (confident predictions on a weak view label a strong "
            "view; threshold 0.95, 7 unlabelled per labelled image a step)",
        )  # fmt: skip
        p.add_argument(
            "--unlabeled-data",
            help="--semi: the unlabelled images (default: the data's whole training split, "
            "wafers: train; other data: train before --label-fraction)",
        )
        p.add_argument("--unlabeled-split", help="--semi: a split of --unlabeled-data / --data")
        p.add_argument(
            "--test-time-views", default=TEST_TIME_VIEWS[0], choices=TEST_TIME_VIEWS,
            help="test-time augmentation: selection, test scores and the saved classifier "
            "average the logits over the image and its mirror image (hflip) or its 8 turns and "
            "mirror images (dihedral: wafer maps, top-down images)",
        )  # fmt: skip
        p.add_argument(
            "--lr", type=learning_rate, nargs="+", default=[FINETUNE_LR], metavar="LR",
            help="the head's SGD learning rate; several: every (--lr, --backbone-lr) pair is "
            "fine-tuned and the best on val is kept (--minutes covers them all)",
        )  # fmt: skip
        p.add_argument(
            "--backbone-lr", type=learning_rate, nargs="+", default=[FINETUNE_BACKBONE_LR],
            metavar="LR", help="the backbone's SGD learning rate; several: as --lr",
        )  # fmt: skip
        p.add_argument(
            "--ensemble", type=ensemble_size, default=1, metavar="N",
            help="fine-tune N members with seeds --seed ... --seed + N - 1 and average their "
            "logits (val score, test scores, the saved classifier); --minutes covers them all",
        )  # fmt: skip
        p.add_argument(
            "--views", action="append", default=[], metavar="KEY=VALUE",
            help="fine-tuning view parameter replacing the pretraining recipe's (repeatable), "
            "e.g. die_flip_p=0",
        )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)


def add_eval_commands(sub: Any) -> None:
    """``selfsup eval knn | linear | mlp | finetune | transfer`` on the ``selfsup`` subparsers."""
    from selfsup.data.spec import SPEC_HELP
    from selfsup.eval.knn import KNN_K, KNN_TEMPERATURE

    p = sub.add_parser(
        "eval", help="evaluate a run or exported backbone", formatter_class=FORMATTER
    )
    eval_sub = p.add_subparsers(dest="protocol", required=True)
    k = eval_sub.add_parser(
        "knn", help="weighted kNN (cosine, exp(sim/t))", description=RECORDS,
        formatter_class=FORMATTER,
    )  # fmt: skip
    add_load_args(k)
    k.add_argument("--data", help=f"labelled data that votes (default: {RUN_DATA}): {SPEC_HELP}")
    k.add_argument(
        "--bank-split", help="split that votes (wafers: the run's train_split; IDX: train)"
    )
    k.add_argument("--split", help="query split (wafers: the run's val_split; IDX: test)")
    k.add_argument(
        "--query-data", help="other labelled data for the queries (default: the run's val_data)"
    )
    k.add_argument(
        "--max-bank", type=int, metavar="N",
        help="vote with a seeded random N of the bank (the training monitor's knn_max_train "
        "draw: --max-bank 20000 --seed S reproduces its number); default: the whole bank",
    )  # fmt: skip
    k.add_argument("--seed", type=int, default=0, help="seed of the --max-bank draw")
    k.add_argument("--k", type=int, nargs="+", default=list(KNN_K))
    k.add_argument("--temperature", type=float, default=KNN_TEMPERATURE)
    k.set_defaults(func=cmd_eval)
    for protocol, text in (
        ("linear", "logistic regression on frozen features"),
        ("mlp", "one-hidden-layer MLP on frozen features"),
        ("finetune", "backbone + linear head trained on the labels"),
        ("transfer", "a probe on other labelled data, at the backbone's size and channels"),
    ):
        e = eval_sub.add_parser(
            protocol, help=f"{text}; chosen on val, test scored once", description=RECORDS,
            formatter_class=FORMATTER,
        )  # fmt: skip
        add_load_args(e)
        _add_protocol_args(e, protocol)
        e.set_defaults(func=cmd_eval)
