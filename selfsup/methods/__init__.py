"""Method registry. A new method is one file here plus one line in the import below."""

from typing import Any

# importing a method's module registers it (@register in the file)
from selfsup.methods import (  # noqa: F401
    barlow_twins,
    byol,
    dino,
    fastsiam,
    moco,
    rotnet,
    simclr,
    simsiam,
)
from selfsup.methods.base import METHODS, LossOutput, Method, register
from selfsup.registry import keyword_parameters


def build(name: str, **kwargs: Any):
    """Build a registered method: ``selfsup.build("simclr", backbone="resnet18", image_size=32)``.

    Keyword arguments are the method's hyper-parameters and the base arguments
    (``backbone``, ``in_channels``, ``image_size``, ``views``, ``view_style``, ``backbone_kwargs``).
    """
    cls = METHODS.get(name)
    method = cls(**kwargs)
    method._build_kwargs = {
        k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool, list, dict, tuple))
    }
    return method


def list_methods() -> dict[str, dict[str, Any]]:
    """Every registered method with its hyper-parameters' defaults (the base arguments too)."""
    out: dict[str, dict[str, Any]] = {}
    for name in METHODS.names():
        parameters, _ = keyword_parameters(METHODS.get(name))
        out[name] = {k: p.default for k, p in parameters.items() if p.default is not p.empty}
    return out


__all__ = ["METHODS", "LossOutput", "Method", "build", "list_methods", "register"]
