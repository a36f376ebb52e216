"""A method's hyper-parameters: its constructor arguments as JSON/YAML-safe data.

Checkpoints (read with ``torch.load(weights_only=True)``), ``config.yaml`` and ``method.json``
hold them, so they may contain only None, bool, int, float, str, lists and string-keyed dicts.
An argument that is an object (a user's ``nn.Module`` backbone, a views callable) is recorded as
a marker naming its type, ``{"custom_module": "MyNet"}`` or ``{"custom_object": "MyViews"}``:
the object is not saved, so rebuilding the method needs it passed again.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from torch import nn

CUSTOM_MODULE = "custom_module"
CUSTOM_OBJECT = "custom_object"


def json_safe(value: Any) -> Any:
    """``value`` as plain data: tuples become lists, objects become markers naming their type."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    key = CUSTOM_MODULE if isinstance(value, nn.Module) else CUSTOM_OBJECT
    return {key: type(value).__name__}


def marker_type(value: Any) -> str | None:
    """The type name a marker stands for (``"MyNet"``), or None when ``value`` is no marker."""
    if isinstance(value, Mapping) and len(value) == 1:
        for key in (CUSTOM_MODULE, CUSTOM_OBJECT):
            if key in value:
                return str(value[key])
    return None


def refuse_markers(method_name: str, arguments: Mapping[str, Any]) -> None:
    """ValueError naming the first argument that is a marker instead of the object it stands for."""
    for name, value in arguments.items():
        kind = marker_type(value)
        if kind is not None:
            raise ValueError(
                f"{method_name}: {name}={dict(value)} stands for your own {kind}, which is not "
                f"saved with the method; pass it again: {name}=<your {kind}> "
                f"(e.g. load_method(path, {name}=...))"
            )


def refuse_renamed(
    method_name: str, renamed: Mapping[str, tuple[str, str]], arguments: Mapping[str, Any]
) -> None:
    """ValueError for an argument under its old name; ``renamed``: old -> (new, what it is)."""
    for old, (new, meaning) in renamed.items():
        if old in arguments:
            raise ValueError(f"{method_name}: '{old}' is now '{new}' ({meaning})")
