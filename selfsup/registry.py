"""Name -> constructor registries (one for methods, one for backbones)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'epochs'?)`` when a known name is close to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def keyword_parameters(
    constructor: Callable[..., Any],
) -> tuple[dict[str, inspect.Parameter], bool]:
    """(parameters ``constructor`` takes by keyword, whether it also takes names not listed).

    A class's parameters are those of the ``__init__`` methods along its MRO for as long as each
    forwards ``**kwargs`` to the next: a method's hyper-parameters, then ``Method``'s base
    arguments. Where two ``__init__`` name the same parameter, the subclass's (and its default)
    is kept. The second value is True when the chain ends in ``**kwargs`` that nothing names
    (a factory passing ``**kw`` on): then any keyword may be meant for something further down.
    """
    if isinstance(constructor, type):
        chain = [k.__init__ for k in constructor.__mro__ if "__init__" in vars(k)]
        skip = 1  # self
    else:
        chain, skip = [constructor], 0
    found: dict[str, inspect.Parameter] = {}
    for function in chain:
        parameters = list(inspect.signature(function).parameters.values())[skip:]
        for p in parameters:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                found.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return found, False
    return found, True


class Registry(Generic[T]):
    """A dictionary of named constructors with errors that list what exists.

    ``@REG.register("name")`` adds a class or factory; ``REG.get("name")`` returns it.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(constructor: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = constructor
            return constructor

        return add

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            hint = did_you_mean(name, self._entries)
            raise ValueError(f"unknown {self.kind} '{name}'{hint} (known: {known})") from None

    def check_kwargs(
        self, name: str, kwargs: Mapping[str, Any], label: str, reserved: Iterable[str] = ()
    ) -> None:
        """Raise ValueError for a key of ``kwargs`` that ``name``'s constructor does not take.

        ``label`` says where the keywords come from (``"backbone_kwargs"``); ``reserved`` are the
        parameters the caller passes itself (from top-level settings), so they may not be repeated
        in ``kwargs``. Keywords of a constructor that passes ``**kwargs`` on unnamed are not
        checked (they are the callee's to refuse).
        """
        parameters, takes_any = keyword_parameters(self.get(name))
        reserved = set(reserved)
        repeated = sorted(set(kwargs) & reserved)
        if repeated:
            key = repeated[0]
            raise ValueError(
                f"{label} key '{key}' for {self.kind} '{name}' repeats a setting passed on "
                f"its own: set {key} instead of {label}.{key}"
            )
        unknown = sorted(set(kwargs) - set(parameters))
        if unknown and not takes_any:
            known = [p for p in parameters if p not in reserved]
            keys = ", ".join(f"'{k}'{did_you_mean(k, known)}" for k in unknown)
            raise ValueError(
                f"unknown {label} key{'s' if len(unknown) > 1 else ''} {keys} for {self.kind} "
                f"'{name}' (known: {', '.join(known) or 'none'})"
            )

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
