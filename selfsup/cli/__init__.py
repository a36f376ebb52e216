"""The ``selfsup`` command: one thin module per verb group (pretrain, eval, embed / export /
report, data, wafers, methods / backbones). Each parses arguments and calls library functions;
no library module imports this package."""

from __future__ import annotations

import argparse
import logging
import sys

from selfsup.cli.common import FORMATTER

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    from selfsup.cli.data import add_data_commands
    from selfsup.cli.eval import add_eval_commands
    from selfsup.cli.info import add_info_commands
    from selfsup.cli.predict import add_predict_command
    from selfsup.cli.pretrain import add_pretrain_command
    from selfsup.cli.runs import add_run_commands
    from selfsup.cli.wafers import add_wafer_commands

    parser = argparse.ArgumentParser(
        prog="selfsup",
        description="Self-supervised pretraining and evaluation on images: pretrain, eval "
        "(knn, linear, mlp, finetune, transfer), predict, embed, export, report, data (check, "
        "coco-crops, wafers convert), wafers (similar, synth), methods, backbones.",
        formatter_class=FORMATTER,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_pretrain_command(sub)
    add_eval_commands(sub)
    add_predict_command(sub)
    add_run_commands(sub)
    add_wafer_commands(sub)
    add_info_commands(sub)
    add_data_commands(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not to the stream of the
    first ``main`` call (a later caller may have replaced or closed that one)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; nothing to keep
        pass


def _configure_logging(verbose: bool) -> None:
    """selfsup's own messages on stderr; Lightning keeps its handler, minus its advertising."""
    logger = logging.getLogger("selfsup")
    if not logger.handlers:
        handler = _StderrHandler()
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
    # a resumed run's checkpoints folder holds its checkpoints: that is the point of resuming
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "💡 Tip" not in record.getMessage()
    )
    # Lightning's handlers keep the stderr of the first import; a later ``main`` in the same
    # process (a notebook, a test) may have closed or replaced it: write to the current one
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr  # not setStream: it flushes the old, maybe closed


def main(argv: list[str] | None = None) -> int:
    """Run one ``selfsup`` command; a user error is one line on stderr and exit 2."""
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
