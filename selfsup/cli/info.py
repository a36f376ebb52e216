"""``selfsup methods`` and ``selfsup backbones``: what can be built, with its defaults."""

from __future__ import annotations

import argparse
from typing import Any

# the training-set size the listing builds for (memory banks and queues follow the data)
LISTED_IMAGES = 50_000


def cmd_methods(args: argparse.Namespace) -> int:
    """The defaults ``selfsup pretrain`` uses, then every method's own hyper-parameters and the
    head widths they give on the default backbone."""
    from selfsup.config import PretrainConfig
    from selfsup.heads import HEAD_WIDTH_FACTOR
    from selfsup.methods import list_methods
    from selfsup.methods.base import Method
    from selfsup.registry import keyword_parameters

    cfg = PretrainConfig()
    base, _ = keyword_parameters(Method)
    from selfsup.methods import METHODS

    print(
        f"selfsup pretrain defaults: method {cfg.method}, backbone {cfg.backbone}, "
        f"image_size {cfg.image_size}, optimizer {cfg.optimizer} lr {cfg.lr} weight_decay "
        f"{cfg.weight_decay} unless the method's paper says otherwise; head widths at most "
        f"{HEAD_WIDTH_FACTOR} x the backbone's feature size (--set method_kwargs.head_widths="
        "paper: the papers' widths)"
    )
    for name, defaults in list_methods().items():
        shown = ", ".join(f"{k}={v!r}" for k, v in defaults.items() if k not in base)
        print(f"{name}: {shown}")
        backbone, widths = _head_widths(name, cfg)
        print(f"  on {backbone}, {LISTED_IMAGES:,} images: {widths}")
        optimizer = METHODS.get(name).optimizer_defaults
        if optimizer:
            print("  trains with: " + ", ".join(f"{k}={v}" for k, v in optimizer.items()))
    return 0


def _head_widths(name: str, cfg: Any) -> tuple[str, str]:
    """(backbone, its feature size and head widths) of method ``name`` built as ``cfg`` builds
    it (on the meta device: shapes only, no memory). A method that refuses ``cfg``'s backbone
    (MAE needs a ViT) is shown on its own default backbone."""
    import torch

    from selfsup.methods import METHODS, build

    cls = METHODS.get(name)
    data_defaults = cls.data_defaults(LISTED_IMAGES, cfg.batch_size)
    base = {"image_size": cfg.image_size, "in_channels": cfg.in_channels or 3}
    backbone = cfg.backbone
    with torch.device("meta"):
        try:
            method = build(
                name, backbone=backbone, backbone_kwargs=dict(cfg.backbone_kwargs), **base,
                **{**data_defaults, **cfg.method_kwargs},
            )  # fmt: skip
        except ValueError:
            backbone = cls.paper_default("backbone")
            if backbone == cfg.backbone:
                raise
            method = build(
                name, backbone=backbone, **base, **{**data_defaults, **cfg.method_kwargs}
            )
    widths = {k: v for k, v in method.hyperparameters().items() if k.endswith("_dim") and v}
    shown = ", ".join(f"{k}={v}" for k, v in widths.items())
    params = sum(p.numel() for p in method.parameters()) / 1e6
    return backbone, (
        f"{method.feature_dim}-d features; {shown or 'no hidden head'} ({params:.1f} M parameters)"
    )


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
