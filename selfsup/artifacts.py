"""What a run hands over, and loading it back: the exported backbone (``backbone.safetensors`` +
``backbone.json``, loadable without the method), the trained method from a checkpoint (read
safely), and the backbone with its preprocessing from a run folder, export folder or ``.ckpt``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from selfsup.backbones import Backbone, build_backbone
from selfsup.runtime.files import (
    CheckpointError,
    atomic_save_weights,
    atomic_write_text,
    load_checkpoint_file,
    load_weights,
)

WEIGHTS = "backbone.safetensors"
META = "backbone.json"


def backbone_metadata(method: Any) -> dict[str, Any]:
    """What ``load_backbone`` needs to rebuild the backbone and preprocess images for it."""
    kwargs = method.hyperparameters()
    views = method.views
    return {
        "name": method.backbone.name,
        # a composite (CMC's channel_split) knows the keywords that rebuild it, not the method's
        "backbone_kwargs": getattr(method.backbone, "build_kwargs", None)
        or kwargs.get("backbone_kwargs")
        or {},
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
    weights = atomic_save_weights(method.backbone, out_dir / WEIGHTS)
    atomic_write_text(out_dir / META, json.dumps(backbone_metadata(method), indent=2) + "\n")
    return weights


def load_backbone(path: str | Path) -> Backbone:
    """Rebuild an exported backbone from a folder (or its .safetensors/.json file), in eval mode.

    The returned module has ``feature_dim``, ``in_channels`` and a ``metadata`` dict
    (image_size, view_style, normalisation) to preprocess new images the way training did.
    """
    meta_path, weights_path = artifact_files(path, META, WEIGHTS, "exported backbone")
    meta = json.loads(meta_path.read_text())
    backbone = build_backbone_from_metadata(meta)
    state = load_file(str(weights_path))
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"'{weights_path}' does not match backbone '{meta['name']}': "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return backbone.eval()


def artifact_files(
    path: str | Path, meta_name: str, weights_name: str, kind: str
) -> tuple[Path, Path]:
    """(JSON, weights) of a saved artifact: ``path`` is its folder or a file in it;
    FileNotFoundError names the ``kind`` ("exported backbone") and the missing file."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta_path, weights_path = folder / meta_name, folder / weights_name
    for needed in (meta_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{kind} '{folder}' has no {needed.name}")
    return meta_path, weights_path


def build_backbone_from_metadata(meta: dict[str, Any]) -> Backbone:
    """An untrained backbone of the architecture ``meta`` (``backbone_metadata``) describes,
    with ``meta`` as its ``metadata``."""
    name = meta["name"]
    kwargs = dict(meta.get("backbone_kwargs") or {})
    if name.startswith("cifar_") and name[len("cifar_") :].startswith("resnet"):
        kwargs.pop("cifar_stem", None)
    channels = meta.get("backbone_in_channels", meta["in_channels"])
    backbone = build_backbone(name, channels, **kwargs)
    backbone.metadata = meta
    return backbone


def load_method_from_checkpoint(
    ckpt_path: str | Path,
    map_location: str = "cpu",
    *,
    trust: bool = False,
    backbone: Any = None,
) -> Any:
    """Rebuild the trained Method from a Lightning checkpoint written by ``selfsup pretrain``.

    The file is read without running code from it (``weights_only``); ``trust=True`` allows
    full unpickling for a checkpoint from elsewhere that the user vouches for. ``backbone``:
    the user's own ``nn.Module`` when the run was trained with one (its place in the saved
    hyper-parameters is a marker, not the module).
    """
    from selfsup.methods import build

    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint_file(ckpt_path, trust=trust, map_location=map_location)
    hparams = ckpt.get("hyper_parameters")
    build_config = hparams.get("build_config") if isinstance(hparams, dict) else None
    state = ckpt.get("state_dict")
    if not isinstance(build_config, dict) or "method" not in build_config:
        raise CheckpointError(
            f"'{ckpt_path}' is not a selfsup checkpoint: it has no hyper_parameters.build_config "
            "(written by selfsup pretrain)"
        )
    if not isinstance(state, dict):
        raise CheckpointError(f"'{ckpt_path}' is not a selfsup checkpoint: it has no state_dict")
    build_config = dict(build_config)
    if backbone is not None:
        build_config["backbone"] = backbone
    method = build(build_config.pop("method"), **build_config)
    prefix = "method."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    load_weights(method, weights, lambda first: CheckpointError(
        f"'{ckpt_path}': its weights do not fit the method it names ({first})"))  # fmt: skip
    return method


def run_checkpoint(path: str | Path, checkpoint: str = "auto") -> Path:
    """The checkpoint holding a run's whole method: ``path`` itself when it is a .ckpt, else the
    run folder's ``checkpoints/<checkpoint>.ckpt``; ``checkpoint`` auto is best.ckpt when the run
    kept one (the epoch its export holds), else last.ckpt. FileNotFoundError when there is none
    (an export folder holds the backbone alone)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".ckpt":
        return path
    names = [f"{checkpoint}.ckpt"] if checkpoint in ("best", "last") else ["best.ckpt", "last.ckpt"]
    for name in names:
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    raise FileNotFoundError(
        f"'{path}' holds no checkpoints/{' or '.join(names)}: the method's heads are only in a "
        "run's checkpoints (an export folder holds the backbone alone); pass the run folder or "
        "its .ckpt"
    )


def load_trained(
    path: str | Path, checkpoint: str = "auto", *, trust_checkpoint: bool = False
) -> tuple[Any, Any, dict[str, Any]]:
    """(backbone, preprocess, metadata) from a run folder, an export folder or a .ckpt file.

    A run folder gives its exported backbone; a killed run (no export yet) its last checkpoint.
    ``checkpoint`` = best | last picks a checkpoint explicitly. Checkpoints are read without
    running code from them unless ``trust_checkpoint`` (see ``load_checkpoint_file``).
    """
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
    method = load_method_from_checkpoint(ckpt, trust=trust_checkpoint)
    return method.backbone.eval(), method.views.preprocess, backbone_metadata(method)


def recipe_for(meta: dict[str, Any]) -> Any:
    """The view recipe a trained backbone expects (size, channels, style, normalisation, wafer
    encoding), from its metadata; its ``preprocess`` is the evaluation transform."""
    from selfsup.views.recipes import evaluation_recipe

    normalised = bool(meta.get("mean") and meta.get("std"))
    return evaluation_recipe(
        image_size=meta["image_size"],
        in_channels=meta["in_channels"],
        style=meta.get("view_style", "natural"),
        mean=tuple(meta["mean"]) if normalised else None,
        std=tuple(meta["std"]) if normalised else None,
        encoding=meta.get("wafer_encoding", "codes"),
    )


def preprocess_for(meta: dict[str, Any]) -> Any:
    return recipe_for(meta).preprocess
