"""What a search method and the loop exchange: the method protocol, its settings, candidates and results.

A method answers `initial(state)`, `propose(state)` and `update(state, scored)` (see
`SearchMethod`); the loop (`engine.search.loop`) does everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ...artifacts import Prompt
from ...errors import ConfigError
from ..select import STRATEGIES, SelectConfig

if TYPE_CHECKING:
    from .state import SearchState

TIEBREAK = 8  # dev rows whose reference answers' log-probability breaks ties (generation tasks)


@dataclass
class SearchSettings:
    """How the loop runs a method (built by the method from its config).

    steps: propose/update rounds after the initial evaluation.
    selection: "full" | "ucb" | "halving" (see `engine.select`).
    select: options of the selection strategy.
    dev_examples: selection examples: N of the dev split, the same for every run (0 = all; see `dev_subset`).
    patience: stop after this many steps without a better best prompt (0 = never).
    tiebreak: candidates tied at the best dev score are ranked by the mean log-probability of the
      reference answers: on this many dev rows on a generation task, on all of dev (free) on
      classification; 0 = ties go to the earlier one.
    """

    steps: int = 1
    selection: str = "full"
    select: SelectConfig = field(default_factory=SelectConfig)
    dev_examples: int = 0
    patience: int = 0
    tiebreak: int = TIEBREAK

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError("steps must be >= 0")
        if self.selection not in STRATEGIES:
            raise ConfigError(f"selection must be one of {', '.join(STRATEGIES)}, got {self.selection!r}")
        if self.dev_examples < 0 or self.patience < 0 or self.tiebreak < 0:
            raise ConfigError("dev_examples, patience and tiebreak must be >= 0")


@dataclass
class Candidate:
    """A proposed prompt and where it came from (origin: e.g. "induce", "edit", "paraphrase")."""

    prompt: Prompt
    origin: str = ""
    parent: str | None = None  # hash of the candidate it was derived from


@dataclass
class Result:
    """A candidate after selection: its hash, mean score and how many examples back it."""

    candidate: Candidate
    key: str
    score: float
    n: int

    @property
    def prompt(self) -> Prompt:
        return self.candidate.prompt


class SearchMethod(Protocol):
    """What the loop asks of a method."""

    name: str

    def search_settings(self) -> SearchSettings: ...

    def initial(self, state: "SearchState") -> list[Prompt]: ...

    def propose(self, state: "SearchState") -> list[Candidate]: ...

    def update(self, state: "SearchState", scored: list[Result]) -> None: ...

