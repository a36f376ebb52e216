"""``selfsup methods`` and ``selfsup backbones``: what can be built, with its defaults."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_methods(args: argparse.Namespace) -> int:
    from selfsup.methods import list_methods

    for name, defaults in list_methods().items():
        shown = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
        print(f"{name}: {shown}")
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from selfsup.backbones import list_backbones

    print("\n".join(list_backbones()))
    return 0


def add_info_commands(sub: Any) -> None:
    p = sub.add_parser("methods", help="list methods and their default hyper-parameters")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("backbones", help="list backbones")
    p.set_defaults(func=cmd_backbones)
