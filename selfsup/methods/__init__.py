"""Method registry. A new method is one file here plus one line in the import below."""

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

__all__ = ["METHODS", "LossOutput", "Method", "register"]
