"""What a trained run hands over, loaded back: the backbone and its preprocessing from a run
folder, an export folder or a checkpoint (read safely), and the view recipe it expects."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_trained(
    path: str | Path, checkpoint: str = "auto", *, trust_checkpoint: bool = False
) -> tuple[Any, Any, dict[str, Any]]:
    """(backbone, preprocess, metadata) from a run folder, an export folder or a .ckpt file.

    A run folder gives its exported backbone; a killed run (no export yet) its last checkpoint.
    ``checkpoint`` = best | last picks a checkpoint explicitly. Checkpoints are read without
    running code from them unless ``trust_checkpoint`` (see ``load_checkpoint_file``).
    """
    from selfsup.export import META, backbone_metadata, load_backbone, load_method_from_checkpoint

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
    from selfsup.views.recipes import make_views

    style = meta.get("view_style", "natural")
    overrides: dict[str, Any] = {}
    if style == "natural" and meta.get("mean") and meta.get("std"):
        overrides = {"mean": tuple(meta["mean"]), "std": tuple(meta["std"])}
    if style == "wafer" and meta.get("wafer_encoding", "codes") != "codes":
        overrides = {"encoding": meta["wafer_encoding"]}
    return make_views(
        "simclr",
        image_size=meta["image_size"],
        in_channels=meta["in_channels"],
        style=style,
        **overrides,
    )


def preprocess_for(meta: dict[str, Any]) -> Any:
    return recipe_for(meta).preprocess
