"""Save a method and load it back: ``method.safetensors`` + ``method.json`` in one folder.

The JSON holds ``{"method": name, **method.hyperparameters()}``; the weights are every
parameter and buffer (backbone, heads, momentum targets, queues, centres). A method built on
your own ``nn.Module`` records it as a marker, so loading needs the module passed again:
``load_method(path, backbone=MyNet())`` (its weights come from the file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from selfsup.methods.arguments import marker_type
from selfsup.methods.base import METHODS, Method
from selfsup.runtime.files import atomic_save_weights, atomic_write_text, load_weights

WEIGHTS = "method.safetensors"
CONFIG = "method.json"


def save_method(method: Method, path: str | Path) -> Path:
    """Write ``method`` into the folder ``path`` (created); returns the folder."""
    folder = Path(path)
    atomic_save_weights(method, folder / WEIGHTS)
    config = {"method": method.method_name, **method.hyperparameters()}
    atomic_write_text(folder / CONFIG, json.dumps(config, indent=2) + "\n")
    return folder


def load_method(path: str | Path, backbone: nn.Module | None = None, **custom: Any) -> Method:
    """Rebuild a method written by ``save_method`` from its folder (or one of its two files).

    ``backbone`` (and any other argument in ``custom``, e.g. ``views``) replaces an argument
    that was your own object when saved; leaving one out raises ValueError naming it.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for needed in (CONFIG, WEIGHTS):
        if not (folder / needed).is_file():
            raise FileNotFoundError(f"saved method '{folder}' has no {needed}")
    config = json.loads((folder / CONFIG).read_text())
    name = config.pop("method")
    given = {"backbone": backbone, **custom} if backbone is not None else custom
    for key, value in given.items():
        if marker_type(config.get(key)) is None:
            raise ValueError(
                f"'{folder}' was saved with {key}={config.get(key)!r}, not your own object; "
                f"leave {key} out"
            )
        config[key] = value
    method = METHODS.get(name)(**config)
    load_weights(
        method,
        load_file(str(folder / WEIGHTS)),
        lambda first: ValueError(f"'{folder}': the weights do not fit {name} ({first})"),
    )
    return method
