"""Files: atomic writes (a killed run never leaves a half-written file behind) and safe
checkpoint reads (a checkpoint never runs code unless the user trusts it explicitly).

selfsup's own checkpoints hold only tensors, containers and numbers, so they load with
``torch.load(..., weights_only=True)``: the restricted unpickler refuses any other global, which
is how a crafted file would run code. ``trust=True`` (``--trust-checkpoint``) unpickles fully,
for files from elsewhere that the user vouches for.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("selfsup.files")

TRUST_HINT = (
    "if you trust where the file came from, pass --trust-checkpoint "
    "(trust_checkpoint=True), which lets it run code"
)


class CheckpointError(ValueError):
    """A file given as a checkpoint cannot be used: unreadable, not selfsup's, or not plain
    weights. A ValueError, so the CLI reports it in one line (exit 2)."""


class UntrustedCheckpointError(CheckpointError):
    """The checkpoint holds pickled objects other than tensors and plain containers."""


def _refused_global(err: Exception) -> str | None:
    """The class or function the restricted unpickler refused (``posix.system``), if any."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    return found.group(1) if found else None


def _first_reason(err: Exception) -> str:
    """The weights-only unpickler's reason, e.g. ``Unsupported operand 49``, else the first line."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
    text = found.group(1) if found else (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def load_checkpoint_file(
    path: str | os.PathLike, *, trust: bool = False, map_location: Any = "cpu"
) -> dict[str, Any]:
    """Read a ``.ckpt`` (or any ``torch.save`` file) as a dict without running code from it.

    Raises ``UntrustedCheckpointError`` when the file holds other objects than plain weights
    (unless ``trust``), ``CheckpointError`` when it is not a readable PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    if trust:
        log.warning("loading '%s' with full unpickling (--trust-checkpoint)", path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as err:
        refused = None if trust else _refused_global(err)
        if refused:
            raise UntrustedCheckpointError(
                f"checkpoint '{path}' holds objects that are not plain weights ({refused}); "
                "it was not loaded, since unpickling them could run code. selfsup's own "
                f"checkpoints never hold such objects; {TRUST_HINT}"
            ) from err
        raise CheckpointError(
            f"'{path}' is not a selfsup checkpoint: the safe reader refuses its contents "
            f"({_first_reason(err)}){'' if trust else '; ' + TRUST_HINT}"
        ) from err
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(
            f"'{path}' is not a selfsup checkpoint: PyTorch cannot read it ({_first_reason(err)})"
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"'{path}' is not a selfsup checkpoint: it holds a {type(ckpt).__name__}, not a dict"
        )
    return ckpt


def load_weights(
    module: torch.nn.Module, state: dict[str, Any], error: Callable[[str], Exception]
) -> None:
    """``module.load_state_dict(state)`` (strict); weights that do not fit raise
    ``error(<the first line of torch's message>)`` (the caller names the file)."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise error(str(err).splitlines()[0]) from None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save_weights(module: torch.nn.Module, path: str | os.PathLike) -> Path:
    """``module``'s state dict as safetensors (detached, on the CPU, contiguous), written to a
    temporary file and renamed, so a crash never leaves half a weights file; returns ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(state, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
