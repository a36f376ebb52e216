"""Registry look-ups and the keyword check against constructor signatures."""

from typing import Any

import pytest

import selfsup
from selfsup.backbones import BACKBONES
from selfsup.methods import METHODS
from selfsup.registry import Registry, keyword_parameters

TOY: Registry[Any] = Registry("widget")


class Base:
    def __init__(self, size: int = 1, *, colour: str = "red") -> None:
        self.size, self.colour = size, colour


class Passthrough(Base):
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # adds no parameters of its own
        super().__init__(*args, **kwargs)


@TOY.register("gear")
class Gear(Passthrough):
    def __init__(self, size: int = 2, *, teeth: int = 12, **kwargs: Any) -> None:
        super().__init__(size, **kwargs)
        self.teeth = teeth


@TOY.register("spring")
def spring(stiffness: float = 1.0) -> dict:
    return {"stiffness": stiffness}


@TOY.register("anything")
def anything(**options: Any) -> dict:
    return options


def test_class_parameters_follow_the_mro_while_kwargs_are_forwarded():
    parameters, takes_any = keyword_parameters(Gear)
    assert list(parameters) == ["size", "teeth", "colour"]  # Passthrough adds none
    assert parameters["size"].default == 2  # the subclass's default is the one that applies
    assert not takes_any  # Base names everything it takes
    parameters, takes_any = keyword_parameters(spring)
    assert list(parameters) == ["stiffness"] and not takes_any
    assert keyword_parameters(anything) == ({}, True)  # a factory passing **options on


def test_check_kwargs_names_the_unknown_key_and_lists_the_known():
    TOY.check_kwargs("gear", {"teeth": 8, "colour": "blue", "size": 3}, "gear_kwargs")
    with pytest.raises(ValueError) as err:
        TOY.check_kwargs("gear", {"teth": 8}, "gear_kwargs")
    assert str(err.value) == (
        "unknown gear_kwargs key 'teth' (did you mean 'teeth'?) for widget 'gear' "
        "(known: size, teeth, colour)"
    )
    with pytest.raises(ValueError, match="unknown spring_kwargs keys 'a', 'b' for widget 'spring'"):
        TOY.check_kwargs("spring", {"b": 1, "a": 2}, "spring_kwargs")
    TOY.check_kwargs("anything", {"whatever": 1}, "options")  # **options: its own to refuse
    with pytest.raises(ValueError, match=r"unknown widget 'gera' \(did you mean 'gear'\?\)"):
        TOY.check_kwargs("gera", {}, "gear_kwargs")


def test_reserved_keys_may_not_be_repeated_and_are_not_listed_as_known():
    with pytest.raises(ValueError) as err:
        TOY.check_kwargs("gear", {"size": 3}, "gear_kwargs", reserved=["size"])
    assert "gear_kwargs key 'size'" in str(err.value) and "set size instead" in str(err.value)
    with pytest.raises(ValueError, match=r"\(known: teeth, colour\)"):
        TOY.check_kwargs("gear", {"x": 1}, "gear_kwargs", reserved=["size"])


def test_backbone_kwargs_checked_against_the_backbone():
    BACKBONES.check_kwargs("convnet_small", {"width": 16}, "backbone_kwargs", ["in_channels"])
    with pytest.raises(ValueError) as err:
        BACKBONES.check_kwargs("convnet_small", {"foo": 1}, "backbone_kwargs", ["in_channels"])
    assert str(err.value) == (
        "unknown backbone_kwargs key 'foo' for backbone 'convnet_small' (known: width)"
    )


def test_method_kwargs_accept_the_whole_constructor_chain():
    chain = {
        "temperature": 0.2,  # SimCLR's own
        "proj_dim": 64,
        "image_size": 32,  # Method's base arguments, forwarded through **kwargs
        "in_channels": 1,
        "views": {"crop_scale": [0.2, 1.0]},
        "view_style": "wafer",
        "backbone_kwargs": {"width": 8},
        "backbone": "convnet_tiny",
    }
    METHODS.check_kwargs("simclr", chain, "method_kwargs")
    METHODS.check_kwargs("byol", {"base_momentum": 0.99, "image_size": 32}, "method_kwargs")
    with pytest.raises(ValueError, match=r"'temprature' \(did you mean 'temperature'\?\)"):
        METHODS.check_kwargs("simclr", {"temprature": 0.2}, "method_kwargs")


def test_keyword_parameters_give_the_defaults_list_methods_shows():
    for name, defaults in selfsup.list_methods().items():
        parameters, takes_any = keyword_parameters(METHODS.get(name))
        assert not takes_any, name
        shown = {k: p.default for k, p in parameters.items() if p.default is not p.empty}
        assert shown == defaults, name
