"""Method registry: a method registers itself by name where it is defined.

    @register("few-shot")
    class FewShot(Method): ...

Every module under `promptlift.methods` is imported on first lookup, so a new
method is its module (and its test): no list to edit.

`get_method("few-shot")` returns the class; `list_methods()` lists names. A name joining
registered names with "+" ("ape+prompt-tuning+calibrated") is a pipeline, built by the composer
that `methods/auto/pipeline.py` registers with `register_composer`.
"""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

from .errors import ConfigError

T = TypeVar("T")
_METHODS: dict[str, type] = {}
_COMPOSER: list[Callable[[str], type]] = []  # builds the method class of a "a+b" name (at most one)


def register(name: str, *aliases: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a method class under `name` (and any `aliases`)."""

    def deco(cls: type[T]) -> type[T]:
        for n in (name, *aliases):
            if n in _METHODS and _METHODS[n] is not cls:
                raise ValueError(f"method {n!r} registered twice")
            _METHODS[n] = cls
        cls.name = name  # type: ignore[attr-defined]
        cls.aliases = tuple(aliases)  # type: ignore[attr-defined]
        return cls

    return deco


def register_composer(build: Callable[[str], type]) -> Callable[[str], type]:
    """Register the function that turns a name "a+b+c" into one method class running those stages."""
    _COMPOSER[:] = [build]
    return build


_LOADED = False


def _load_all() -> None:
    """Import every module under `promptlift.methods` once: each registers its methods where it is defined."""
    global _LOADED
    if _LOADED:
        return
    import pkgutil

    import promptlift.methods as pkg

    for info in pkgutil.walk_packages(pkg.__path__, prefix="promptlift.methods."):
        try:
            importlib.import_module(info.name)
        except Exception as e:  # name the broken module instead of failing somewhere inside it
            raise ImportError(f"method module {info.name} failed to import: {type(e).__name__}: {e}") from e
    _LOADED = True


def get_method(name: str) -> type:
    """Return the method class registered as `name` (ConfigError if unknown)."""
    _load_all()
    if name not in _METHODS and "+" in name and _COMPOSER:
        return _COMPOSER[0](name)
    if name not in _METHODS:
        import difflib

        close = difflib.get_close_matches(name, list(_METHODS), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown method {name!r}; {hint}expected one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> dict[str, type]:
    """All registered methods, by their main name (aliases left out)."""
    _load_all()
    return dict(sorted((n, c) for n, c in _METHODS.items() if n == c.name))
