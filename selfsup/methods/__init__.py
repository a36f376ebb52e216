"""Methods: the registry, ``build`` by name, the method classes (PySSL style) and save / load.

A new method is one file here (a ``Method`` subclass under ``@register("name")``) plus one
import line below.

```
method = selfsup.build("simclr", backbone="resnet18", image_size=32)
model = SimCLR(my_module, 512, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
save_method(model, "out/simclr");  model = load_method("out/simclr", backbone=my_module)
```
"""

from typing import Any

from selfsup.methods.barlow_twins import BarlowTwins
from selfsup.methods.base import METHODS, LossOutput, Method, register
from selfsup.methods.bigan import BiGAN
from selfsup.methods.byol import BYOL
from selfsup.methods.cmc import CMC
from selfsup.methods.context_autoencoder import ContextAutoencoder
from selfsup.methods.cpc import CPC
from selfsup.methods.dcl import DCL, DCLW
from selfsup.methods.denoising import DenoisingAutoencoder
from selfsup.methods.dino import DINO
from selfsup.methods.exemplar import Exemplar
from selfsup.methods.fastsiam import FastSiam
from selfsup.methods.instdisc import InstDisc
from selfsup.methods.jigsaw import Jigsaw
from selfsup.methods.mae import MAE
from selfsup.methods.mocov1 import MoCoV1
from selfsup.methods.mocov2 import MoCoV2
from selfsup.methods.mocov3 import MoCoV3
from selfsup.methods.nnclr import NNCLR
from selfsup.methods.pirl import PIRL
from selfsup.methods.rotnet import RotNet
from selfsup.methods.saving import load_method, save_method
from selfsup.methods.simclr import SimCLR
from selfsup.methods.simclrv2 import SimCLRV2
from selfsup.methods.simsiam import SimSiam
from selfsup.methods.split_brain import SplitBrain
from selfsup.methods.supcon import SupCon
from selfsup.methods.swav import SwAV
from selfsup.methods.vicreg import VICReg
from selfsup.registry import keyword_parameters


def build(name: str, **kwargs: Any) -> Method:
    """Build a registered method: ``selfsup.build("simclr", backbone="resnet18", image_size=32)``.

    Keyword arguments are the method's hyper-parameters and the base arguments (``backbone``,
    ``feature_size``, ``in_channels``, ``image_size``, ``mean``, ``std``, ``views``,
    ``view_style``, ``backbone_kwargs``); ``build(name, **method.hyperparameters())`` rebuilds.
    """
    return METHODS.get(name)(**kwargs)


def list_methods() -> dict[str, dict[str, Any]]:
    """Every registered method with its hyper-parameters' defaults (the base arguments too)."""
    out: dict[str, dict[str, Any]] = {}
    for name in METHODS.names():
        parameters, _ = keyword_parameters(METHODS.get(name))
        out[name] = {k: p.default for k, p in parameters.items() if p.default is not p.empty}
    return out


__all__ = [
    "BYOL",
    "CMC",
    "CPC",
    "DCL",
    "DCLW",
    "DINO",
    "METHODS",
    "BarlowTwins",
    "ContextAutoencoder",
    "DenoisingAutoencoder",
    "BiGAN",
    "Exemplar",
    "FastSiam",
    "InstDisc",
    "Jigsaw",
    "LossOutput",
    "MAE",
    "Method",
    "MoCoV1",
    "MoCoV2",
    "MoCoV3",
    "NNCLR",
    "PIRL",
    "RotNet",
    "SimCLR",
    "SimCLRV2",
    "SimSiam",
    "SplitBrain",
    "SupCon",
    "SwAV",
    "VICReg",
    "build",
    "list_methods",
    "load_method",
    "register",
    "save_method",
]
