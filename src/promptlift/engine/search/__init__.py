"""The one ask/tell search loop, shared by every search method (LLM optimizers, black-box ones such as BBT).

Three modules, the way GEPA splits engine / state / adapter:

- `protocol`: what a method and the loop exchange (`SearchMethod`, `SearchSettings`, `Candidate`, `Result`);
- `state`: the resumable state a method works on (candidates, score cache, spend, checkpoint JSON);
- `loop`: `search()`, the loop alone (selection, ranking and ties, budget stops, history, progress), and
  `best_of()`, the one "best on dev" rule as a zero-step search for methods that choose among given prompts.
"""

from .loop import Choice, best_of, search
from .protocol import TIEBREAK, Candidate, Result, SearchMethod, SearchSettings
from .state import Limits, ScoreCache, SearchState, Spend, dev_subset, example_key

__all__ = ["search", "best_of", "Choice", "dev_subset", "SearchState", "SearchSettings", "Candidate", "Result", "Limits", "Spend",
           "ScoreCache", "example_key", "SearchMethod", "TIEBREAK"]
