"""``selfsup predict``: a saved classifier on new data, one row per input in a CSV or JSON file.

Parses the options and calls ``selfsup.prediction.predict``; prints the summary.
"""

from __future__ import annotations

import argparse
from typing import Any

from selfsup.cli.common import FORMATTER


def cmd_predict(args: argparse.Namespace) -> int:
    from selfsup.prediction import predict

    result = predict(
        args.model, args.data, split=args.split, top_k=args.top_k,
        min_confidence=args.min_confidence, batch_size=args.batch_size,
    )  # fmt: skip
    path = result.write(args.out, args.format)
    print(result.summary_text())
    print(f"wrote {path}")
    return 0


def add_predict_command(sub: Any) -> None:
    from selfsup.data.spec import SPEC_HELP
    from selfsup.prediction import DEFAULT_MIN_CONFIDENCE, DEFAULT_TOP_K, FORMATS

    p = sub.add_parser(
        "predict",
        help="classify new images with a classifier saved by selfsup eval (linear, mlp, finetune)",
        description="Every input gets a row: its source, the top-k classes with calibrated "
        "probabilities (temperature scaling fitted on val) and a low-confidence flag; "
        "unreadable files are rows too, with the reason. With labelled data the summary adds "
        "accuracy and macro-F1.",
        formatter_class=FORMATTER,
    )
    p.add_argument(
        "model",
        help="classifier folder (RUN/eval_<protocol>_<split>_classifier) or the eval record "
        "JSON that names it",
    )
    p.add_argument("--data", required=True, help=f"images to classify: {SPEC_HELP}")
    p.add_argument("--split", help="a split of data that has them (wafers: train, val, test, ...)")
    p.add_argument("--out", required=True, help="output file (.csv or .json)")
    p.add_argument("--format", choices=FORMATS, help="default: from --out's suffix, else csv")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="classes per input")
    p.add_argument(
        "--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE,
        help="inputs whose top probability is below this are flagged low_confidence",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.set_defaults(func=cmd_predict)
