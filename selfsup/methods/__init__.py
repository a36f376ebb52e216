"""Method registry. A new method is one file here plus one import line below."""

from selfsup.methods.base import METHODS, LossOutput, Method, register

# one line per method file: importing it registers the method
from selfsup.methods import simclr  # noqa: E402,F401
from selfsup.methods import moco  # noqa: E402,F401
from selfsup.methods import byol  # noqa: E402,F401
from selfsup.methods import simsiam  # noqa: E402,F401
from selfsup.methods import fastsiam  # noqa: E402,F401
from selfsup.methods import barlow_twins  # noqa: E402,F401
from selfsup.methods import dino  # noqa: E402,F401
from selfsup.methods import rotnet  # noqa: E402,F401

__all__ = ["METHODS", "LossOutput", "Method", "register"]
