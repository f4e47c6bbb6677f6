"""Method registry: a method registers itself by name where it is defined.

    @register("few-shot")
    class FewShot(Method): ...

`get_method("few-shot")` returns the class; `list_methods()` lists names.
"""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

from .errors import ConfigError

T = TypeVar("T")
_METHODS: dict[str, type] = {}

# Modules that register methods on import. Adding a method means adding its
# module here (one line) and the file itself.
_METHOD_MODULES = (
    "promptlift.methods.baseline.zero_shot",
    "promptlift.methods.baseline.few_shot",
    "promptlift.methods.baseline.calibrated",
    "promptlift.methods.baseline.zero_shot_cot",
    "promptlift.methods.soft.prompt_tuning",
    "promptlift.methods.soft.p_tuning",
    "promptlift.methods.soft.prefix_tuning",
    "promptlift.methods.soft.p_tuning_v2",
)


def register(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a method class under `name`."""

    def deco(cls: type[T]) -> type[T]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name  # type: ignore[attr-defined]
        _METHODS[name] = cls
        return cls

    return deco


def _load_all() -> None:
    for mod in _METHOD_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a module not written yet must not break the others
            if e.name != mod:
                raise


def get_method(name: str) -> type:
    """Return the method class registered as `name` (ConfigError if unknown)."""
    _load_all()
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; expected one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> dict[str, type]:
    """All registered methods, by name."""
    _load_all()
    return dict(sorted(_METHODS.items()))
