"""Backbone export: ``backbone.safetensors`` + ``backbone.json``, loadable without the method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from selfsup.backbones import Backbone, build_backbone
from selfsup.train.checkpoint import atomic_write_text

WEIGHTS = "backbone.safetensors"
META = "backbone.json"


def backbone_metadata(method: Any) -> dict[str, Any]:
    """What ``load_backbone`` needs to rebuild the backbone and preprocess images for it."""
    kwargs = method.hyperparameters()
    views = method.views
    return {
        "name": method.backbone.name,
        "backbone_kwargs": kwargs.get("backbone_kwargs", {}),
        "in_channels": method.in_channels,  # of the data the views take
        "backbone_in_channels": method.backbone.in_channels,
        "wafer_encoding": getattr(views, "encoding", "codes"),
        "feature_dim": method.backbone.feature_dim,
        "image_size": method.image_size,
        "view_style": method.view_style,
        "method": getattr(method, "method_name", None),
        "mean": list(getattr(views, "mean", []) or []),
        "std": list(getattr(views, "std", []) or []),
    }


def export_backbone(method: Any, out_dir: str | Path) -> Path:
    """Write the backbone weights and metadata into ``out_dir``; returns the weights path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in method.backbone.state_dict().items()}
    tmp = out_dir / f".{WEIGHTS}.tmp"
    save_file(state, str(tmp))
    tmp.replace(out_dir / WEIGHTS)
    atomic_write_text(out_dir / META, json.dumps(backbone_metadata(method), indent=2) + "\n")
    return out_dir / WEIGHTS


def load_backbone(path: str | Path) -> Backbone:
    """Rebuild an exported backbone from a folder (or its .safetensors/.json file), in eval mode.

    The returned module has ``feature_dim``, ``in_channels`` and a ``metadata`` dict
    (image_size, view_style, normalisation) to preprocess new images the way training did.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta_path, weights_path = folder / META, folder / WEIGHTS
    for needed in (meta_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"exported backbone '{folder}' has no {needed.name}")
    meta = json.loads(meta_path.read_text())
    name = meta["name"]
    kwargs = dict(meta.get("backbone_kwargs") or {})
    if name.startswith("cifar_") and name[len("cifar_") :].startswith("resnet"):
        kwargs.pop("cifar_stem", None)
    channels = meta.get("backbone_in_channels", meta["in_channels"])
    backbone = build_backbone(name, channels, **kwargs)
    state = load_file(str(weights_path))
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"'{weights_path}' does not match backbone '{name}': "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    backbone.metadata = meta
    return backbone.eval()


def load_method_from_checkpoint(ckpt_path: str | Path, map_location: str = "cpu") -> Any:
    """Rebuild the trained Method from a Lightning checkpoint written by ``selfsup pretrain``."""
    import selfsup

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint '{ckpt_path}' does not exist")
    ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=False)
    build_config = dict(ckpt.get("hyper_parameters", {}).get("build_config") or {})
    name = build_config.pop("method", None)
    if name is None:
        raise ValueError(f"checkpoint '{ckpt_path}' was not written by selfsup pretrain")
    method = selfsup.build(name, **build_config)
    prefix = "method."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    method.load_state_dict(state)
    return method
