"""selfsup: self-supervised representation learning on images.

Building blocks (``selfsup.build``, ``selfsup.losses``, ``selfsup.views``, ``selfsup.backbones``)
and a Lightning trainer (``selfsup.pretrain``) with a ``selfsup`` command line.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def build(name: str, **kwargs: Any):
    """Build a registered method: ``selfsup.build("simclr", backbone="resnet18", image_size=32)``.

    Keyword arguments are the method's hyper-parameters and the base arguments
    (``backbone``, ``in_channels``, ``image_size``, ``views``, ``view_style``, ``backbone_kwargs``).
    """
    from selfsup.methods import METHODS

    cls = METHODS.get(name)
    method = cls(**kwargs)
    method._build_kwargs = {
        k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool, list, dict, tuple))
    }
    return method


def list_methods() -> dict[str, dict[str, Any]]:
    """Every registered method with its hyper-parameters' defaults (the base arguments too)."""
    from selfsup.methods import METHODS
    from selfsup.registry import keyword_parameters

    out: dict[str, dict[str, Any]] = {}
    for name in METHODS.names():
        parameters, _ = keyword_parameters(METHODS.get(name))
        out[name] = {k: p.default for k, p in parameters.items() if p.default is not p.empty}
    return out


def pretrain(config: Any = None, **kwargs: Any):
    """Pretrain with the Lightning trainer; returns ``(method, run_dir)`` (see PretrainConfig)."""
    from selfsup.train.pretrain import pretrain as _pretrain

    return _pretrain(config, **kwargs)


def load_backbone(path: Any):
    """Load a backbone exported by ``selfsup export`` (``backbone.safetensors`` + ``.json``)."""
    from selfsup.export import load_backbone as _load

    return _load(path)


__all__ = ["build", "list_methods", "pretrain", "load_backbone", "__version__"]
