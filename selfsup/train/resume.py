"""``--resume``: which run folder and checkpoint, and the run's saved config with what the
caller may change (how long, which devices, where the data is now)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfsup.config import PretrainConfig, load_yaml
from selfsup.data.spec import spec_kind
from selfsup.runtime.files import load_checkpoint_file


def explicit_keys(config: Any, kwargs: dict[str, Any]) -> set[str]:
    """Keys the caller set (not defaults): these may override a resumed run's saved config."""
    keys = set(kwargs)
    if isinstance(config, dict):
        keys |= set(config)
    elif isinstance(config, PretrainConfig):
        default = PretrainConfig().to_dict()
        keys |= {k for k, v in config.to_dict().items() if v != default[k]}
        keys |= getattr(config, "given_keys", frozenset())  # resolve_config's: set to a default too
    elif isinstance(config, (str, Path)):
        keys |= set(load_yaml(config))
    return keys


def _resume_target(resume: str, out: str) -> tuple[Path, Path]:
    """(run folder, checkpoint) for ``resume`` = a run folder or a .ckpt file."""
    path = Path(resume)
    if path.is_file() and path.suffix == ".ckpt":
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run_dir, path
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"resume: run folder '{path}' has no checkpoints/last.ckpt")
        return path, ckpt
    raise FileNotFoundError(f"resume: '{resume}' is neither a run folder nor a .ckpt file")


# settings a resumed run takes from the command rather than from its saved config.yaml: how
# long to train, where the devices are, and where the data is now (if it moved)
RESUME_OVERRIDES = frozenset(
    {"epochs", "max_steps", "devices", "num_nodes", "accelerator", "progress_bar", "data",
     "val_data"}
)  # fmt: skip


def resumed_config(cfg: PretrainConfig, explicit: set[str]) -> tuple[PretrainConfig, Path, Path]:
    """(the run's saved config with the caller's overrides, run folder, checkpoint)."""
    run_dir, ckpt = _resume_target(cfg.resume, cfg.out)
    saved = load_yaml(run_dir / "config.yaml")
    given = {k: v for k, v in cfg.to_dict().items() if k in RESUME_OVERRIDES & explicit}
    # trust is the caller's decision now, never a saved value
    trust = {"trust_checkpoint": cfg.trust_checkpoint}
    resumed = PretrainConfig.from_dict(
        {**saved, **given, "resume": None, **trust}, source=str(run_dir / "config.yaml")
    )
    for key, option in (("data", "--data NEW_PATH"), ("val_data", "--set val_data=NEW_PATH")):
        spec = getattr(resumed, key)
        if spec and _is_missing(spec):
            raise FileNotFoundError(
                f"resume: the run's {key} '{spec}' (from {run_dir / 'config.yaml'}) no longer "
                f"exists; if it moved, give its new place with {option}"
            )
    # the checkpoint resumed from, and best.ckpt (read at the end to export the best epoch):
    # an unsafe or damaged one is refused now, before the trainer starts or prints anything
    best = run_dir / "checkpoints" / "best.ckpt"
    for checkpoint in (ckpt, best) if best.is_file() and best != ckpt else (ckpt,):
        load_checkpoint_file(checkpoint, trust=resumed.trust_checkpoint)
    return resumed, run_dir, ckpt


def _is_missing(spec: str) -> bool:
    """True when the spec names a file or folder that does not exist."""
    try:
        spec_kind(spec)
    except FileNotFoundError:
        return True
    return False
