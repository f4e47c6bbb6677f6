"""Progress, notes and step records: the one channel through which the engine and the methods talk to a person.

Engine and method code never write to stderr, print or open a tqdm bar themselves; they are handed a
`Reporter` (on the run context, or as an argument of `evaluate`) and call:

    bar = reporter.progress(total=40, desc="train", unit="step")   # bar.update(1); bar.set_postfix(loss=..); bar.close()
    reporter.note("budget exhausted; keeping the best prompt so far")
    reporter.record({"step": 3, "loss": 0.41})                       # one history row, as the run logs it

`Console` renders them as today's command line does (tqdm bars on stderr, `promptlift: ...` notes on
stderr); `Quiet` drops them; `Capture` keeps the notes, records and the bars' shown values in lists (for a notebook or a test).
The CLI and `promptlift.optimize` choose with `reporter=` ("console" by default, None or "quiet", or an object).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ConfigError


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, **values: Any) -> Any: ...
    def close(self) -> Any: ...


class Reporter(Protocol):
    def progress(self, total: int, desc: str, *, initial: int = 0, unit: str = "step") -> Bar: ...
    def note(self, message: str) -> None: ...
    def record(self, row: dict) -> None: ...


class _NoBar:
    """A bar that shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class _CaptureBar(_NoBar):
    """A bar that shows nothing and keeps what it was asked to show."""

    desc: str
    shown: list

    def set_postfix(self, **values: Any) -> None:
        self.shown.append((self.desc, dict(values)))


class Quiet:
    """Shows nothing."""

    def progress(self, total: int, desc: str, *, initial: int = 0, unit: str = "step") -> Bar:
        return _NoBar()

    def note(self, message: str) -> None:
        pass

    def record(self, row: dict) -> None:
        pass


@dataclass
class Console:
    """tqdm bars (when `bars`) and `promptlift: ` notes on stderr; each note once per reporter."""

    bars: bool = True
    _noted: set[str] = field(default_factory=set, repr=False)

    def progress(self, total: int, desc: str, *, initial: int = 0, unit: str = "step") -> Bar:
        if not self.bars:
            return _NoBar()
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False)

    def note(self, message: str) -> None:
        if message not in self._noted:
            self._noted.add(message)
            print(f"promptlift: {message}", file=sys.stderr)

    def record(self, row: dict) -> None:
        pass


@dataclass
class Capture(Quiet):
    """Keeps every note and record (no output): `notes`, `records`, and `postfixes`: (bar description, the
    values a bar was asked to show) for each `set_postfix`."""

    notes: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    postfixes: list[tuple[str, dict]] = field(default_factory=list)

    def progress(self, total: int, desc: str, *, initial: int = 0, unit: str = "step") -> Bar:
        return _CaptureBar(desc, self.postfixes)

    def note(self, message: str) -> None:
        self.notes.append(message)

    def record(self, row: dict) -> None:
        self.records.append(dict(row))


def make_reporter(spec: Any = "console", progress: bool = True) -> Reporter:
    """"console": bars (if `progress`) and notes on stderr; None or "quiet": nothing; an object: itself."""
    if spec is None or spec == "quiet":
        return Quiet()
    if spec == "console":
        return Console(bars=progress)
    if isinstance(spec, str):
        raise ConfigError(f"reporter must be 'console', 'quiet', None or an object, got {spec!r}")
    return spec

