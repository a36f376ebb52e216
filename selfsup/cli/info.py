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
    """Every backbone with its keyword options (``--set backbone_kwargs.<option>=...``)."""
    from selfsup.backbones import BACKBONES, list_backbones
    from selfsup.registry import keyword_parameters

    for name in list_backbones():
        options = ""
        if name in BACKBONES:
            parameters, _ = keyword_parameters(BACKBONES.get(name))
            shown = [f"{k}={p.default!r}" for k, p in parameters.items() if k != "in_channels"]
            options = f"  (backbone_kwargs: {', '.join(shown)})" if shown else ""
        print(f"{name}{options}")
    return 0


def add_info_commands(sub: Any) -> None:
    p = sub.add_parser("methods", help="list methods and their default hyper-parameters")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("backbones", help="list backbones")
    p.set_defaults(func=cmd_backbones)
