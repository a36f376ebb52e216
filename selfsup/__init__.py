"""selfsup: self-supervised representation learning on images.

Building blocks (``selfsup.build``, ``selfsup.losses``, ``selfsup.views``, ``selfsup.backbones``)
and a Lightning trainer (``selfsup.pretrain``) with a ``selfsup`` command line.

The names below are imported on first use, so ``import selfsup`` (and ``selfsup --help``) does
not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from selfsup.version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "build": "selfsup.methods",
    "list_methods": "selfsup.methods",
    "pretrain": "selfsup.train.pretrain",
    "load_backbone": "selfsup.artifacts",
    "load_classifier": "selfsup.classifier",
    "predict": "selfsup.prediction",
    "evaluate": "selfsup.eval.api",
    "EvaluationResult": "selfsup.eval.api",
    "Supervisor": "selfsup.supervisor",
    "CombinedNet": "selfsup.supervisor",
    "as_image_dataset": "selfsup.data.torch_dataset",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'selfsup' has no attribute '{name}'")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = [*_PUBLIC, "__version__"]
