"""Arguments shared by the commands that take a trained run."""

from __future__ import annotations

import argparse

# every command shows its defaults in --help
FORMATTER = argparse.ArgumentDefaultsHelpFormatter

TRUST_CHECKPOINT_HELP = (
    "read checkpoints with full unpickling, which can run code from the file: only for "
    "checkpoints you trust (selfsup's own never need it)"
)


def add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_CHECKPOINT_HELP)


def add_run_args(p: argparse.ArgumentParser, run_help: str, auto_help: str) -> None:
    """RUN, ``--checkpoint auto|best|last`` (``auto_help`` says what auto picks) and
    ``--trust-checkpoint``."""
    p.add_argument("run", help=run_help)
    p.add_argument("--checkpoint", default="auto", choices=["auto", "best", "last"], help=auto_help)
    add_trust_arg(p)


def add_load_args(p: argparse.ArgumentParser) -> None:
    add_run_args(
        p,
        "run folder, export folder or .ckpt file",
        "auto: the exported backbone, else the last checkpoint",
    )
