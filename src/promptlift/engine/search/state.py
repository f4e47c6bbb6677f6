"""The resumable state of a search: candidates, the per-example score cache, the spend, the checkpoint.

Every model call a method makes goes through the state's verbs (`ask`, `score`,
`target_call`), so that it is counted against the limits and cached. After every
step the loop writes `run_dir/checkpoint/search.json` (JSON, atomic) from `to_json`:
the method's state, the random state, every candidate, the score cache and the spend;
`read_checkpoint` loads it back so a resumed search ends with the same result as an
uninterrupted one. A candidate that holds tensors (a soft or prefix prompt) is saved
once, through the artifact's own serialisation (safetensors, content hash), to
`checkpoint/candidates/<hash>/` before the JSON that refers to it by hash; resume loads
it back bit-exact and checks its hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ...artifacts import Prompt
from ...artifacts.base import from_json, load as load_artifact, save as save_artifact
from ...errors import ArtifactError, BudgetExceeded, ConfigError, UnsupportedError
from ...lm.base import GenerationConfig
from ...lm.budget import Budget, ledger_of
from ...files import write_json
from ...reporter import Console, Reporter
from ...task import Example, Task
from ..evaluate import answer_scores, evaluate, gold_label_logprob
from .protocol import Candidate, SearchSettings

CHECKPOINT = "search.json"
CANDIDATES = "candidates"  # beside search.json: one folder per tensor-holding candidate, by hash
FORMAT = "promptlift.search/v1"
LIMITS = ("calls", "target_calls", "optimizer_calls", "tokens", "time")  # time: the ledger's clock checks it


# --- limits and spend ------------------------------------------------------------------------
@dataclass
class Limits:
    """Caps on what a search spends (inf = none). See the module docstring for the units."""

    calls: float = math.inf
    target_calls: float = math.inf
    optimizer_calls: float = math.inf
    tokens: float = math.inf
    time: float = math.inf  # seconds

    @classmethod
    def from_budget(cls, budget: Budget | None, extra: dict | None = None) -> "Limits":
        """The search limits among `budget.limits`, overridden by `extra`."""
        src = dict(getattr(budget, "limits", {}) or {})
        src.update(extra or {})
        unknown = sorted(set(extra or {}) - set(LIMITS[:-1]))  # time only on the ledger (its clock)
        if unknown:
            raise ConfigError(f"unknown search limit(s) {', '.join(unknown)}; expected: {', '.join(LIMITS[:-1])}")
        return cls(**{k: float(v) for k, v in src.items() if k in LIMITS})

    def describe(self) -> str:
        parts = [f"{k}={getattr(self, k):g}" for k in LIMITS if math.isfinite(getattr(self, k))]
        return ",".join(parts) or "none"


class Spend:
    """What the searches of a run spent: a view of the run's budget ledger (`lm.budget.Budget`), never a
    second counter. The limits are checked against the ledger's totals (a method's other use included);
    this is the search's share, what `meta["cost"]` reports:

    calls = target_calls + optimizer_calls (the loop's units; the backends' own requests are `requests`
    in the ledger); tokens = target_tokens + optimizer_tokens (of those calls); cache hits are counted apart:
    cached_target_calls: example scores served by the score cache (free).
    lm_cached_calls: requests the models' own call caches answered (these are still
      counted in target/optimizer calls, which do not depend on how warm a cache is).
    """

    FIELDS = ("calls", "target_calls", "optimizer_calls", "tokens", "target_tokens", "optimizer_tokens",
              "cached_target_calls", "lm_cached_calls")

    def __init__(self, ledger: Budget):
        self.ledger = ledger

    def __getattr__(self, name: str):
        if name in Spend.FIELDS:
            return self.as_dict()[name]
        raise AttributeError(name)

    def as_dict(self) -> dict:
        b = self.ledger
        return {"calls": b.target_calls + b.optimizer_calls, "target_calls": b.target_calls,
                "optimizer_calls": b.optimizer_calls, "tokens": b.target_tokens + b.optimizer_tokens,
                "target_tokens": b.target_tokens, "optimizer_tokens": b.optimizer_tokens,
                "cached_target_calls": b.cached_target_calls, "lm_cached_calls": b.lm_cached_calls}


def dev_subset(dev: Sequence[Example], n: int) -> list[Example]:
    """The selection examples: all of dev (n = 0), else n of them drawn with a fixed seed, in file order.

    Not the first n: data files are often sorted by label. The draw does not depend on the
    run's seed, so every method and seed selects on the same examples.
    """
    if not n or n >= len(dev):
        return list(dev)
    keep = sorted(random.Random(0).sample(range(len(dev)), n))
    return [dev[i] for i in keep]


def example_key(ex: Example) -> str:
    """Stable key of an example (its input and reference) in the score cache."""
    return hashlib.sha256(json.dumps([ex.input, ex.output], ensure_ascii=False).encode()).hexdigest()[:20]


class ScoreCache:
    """Per-example evaluation records by (target model id, prompt hash, example key)."""

    def __init__(self, data: dict | None = None):
        self.data: dict[str, dict[str, dict[str, dict]]] = data or {}

    def get(self, model: str, prompt: str, ex: str) -> dict | None:
        return self.data.get(model, {}).get(prompt, {}).get(ex)

    def put(self, model: str, prompt: str, ex: str, record: dict) -> None:
        self.data.setdefault(model, {}).setdefault(prompt, {})[ex] = record


# --- the state a method works on ------------------------------------------------------------
class SearchState:
    """Everything a search knows: candidates, their scores, the method's own data, the spend.

    Methods read `task`, `train`, `dev`, `rng`, `step`, `data` (their own JSON-serialisable
    state, checkpointed) and use the verbs below; every model call goes through them so
    that it is counted and cached.
    """

    def __init__(self, method_name: str, task: Task, target, optimizer, settings: SearchSettings, seed: int,
                 limits: Limits, reporter: Reporter | None = None, ledger: Budget | None = None):
        self.method_name = method_name
        self.reporter = reporter or Console(bars=False)  # the run's notes (the loop's `ctx.reporter`)
        self.task = task
        self.target = target
        self.optimizer = optimizer
        self.settings = settings
        self.seed = seed
        self.limits = limits
        self.rng = random.Random(seed)
        self.step = 0
        self.data: dict = {}
        self.prompts: dict[str, Prompt] = {}  # every candidate ever proposed, by hash, in order
        self.info: dict[str, dict] = {}  # hash -> {"origin", "parent", "step"}
        self.scores = ScoreCache()
        # the run's ledger (else the target's own budget): every call below is charged to it
        self.ledger = ledger if ledger is not None else ledger_of(target)
        self.spend = Spend(self.ledger)
        self.skipped: dict[str, int] = {}
        self.stopped = ""
        self.stale = 0  # whole steps since the best prompt last changed (for `patience`)
        self.dev: list[Example] = dev_subset(task.split("dev"), settings.dev_examples)
        self.train: list[Example] = list(task.train)
        self._dev_keys = [example_key(e) for e in self.dev]
        self._on_disk: set[str] = set()  # tensor-holding candidates already saved beside the checkpoint
        self._no_tiebreak = ""  # why reference answers cannot be scored here (then ties go to the earlier)

    # --- model calls ---------------------------------------------------------------------
    def ask(self, prompt, *, n: int = 1, temperature: float = 1.0, max_tokens: int = 64,
            stop: Sequence[str] = ()) -> list[str]:
        """`n` samples of the optimizer model for one request (a string or chat messages).

        Costs n optimizer calls (fewer if the budget has fewer left; BudgetExceeded if none).
        Each request gets its own seed from `rng`, so samples are distinct yet reproducible
        (and cached by the model's call cache under that seed).
        """
        left = min(self.limits.optimizer_calls - self.ledger.optimizer_calls, self.limits.calls - self.ledger.calls)
        self._check_tokens()
        if left < 1:
            raise BudgetExceeded(f"budget exhausted: optimizer calls ({self.ledger.optimizer_calls}) "
                                 f"/ calls ({self.ledger.calls}) at their limit ({self.limits.describe()})")
        n = int(min(n, left))
        cfg = GenerationConfig(n=n, temperature=temperature, max_tokens=max_tokens, stop=list(stop),
                               seed=self.rng.randrange(2**31))
        with self._charged() as m:
            out = self.optimizer.generate([prompt], cfg)
        self.ledger.add({"calls": n, "optimizer_calls": n, "optimizer_tokens": m.tokens, "lm_cached_calls": m.cached})
        return [str(t) for t in (out[0] if out else [])]

    def score(self, prompt: Prompt, examples: Sequence[Example]) -> list[dict]:
        """Per-example records {"input", "gold", "pred", "score"} of `prompt` on `examples`.

        Only examples not in the score cache are evaluated (one target call each); if the
        budget cannot pay for all of them, nothing is evaluated and BudgetExceeded is raised.
        """
        examples = list(examples)
        key = prompt.hash
        model = self.target.model_id
        keys = [example_key(e) for e in examples]
        missing, seen = [], set()
        for e, k in zip(examples, keys):
            if self.scores.get(model, key, k) is None and k not in seen:
                missing.append(e)
                seen.add(k)
        self.ledger.add({"cached_target_calls": len(examples) - len(missing)})
        if missing:
            def run():
                return evaluate(self.target, self.task, prompt, examples=missing, progress=False,
                                reporter=self.reporter)

            res = self.target_call(run, len(missing))
            for e, p in zip(missing, res.predictions):
                rec = {"pred": p.get("pred"), "score": float(p["score"])}
                if self.task.is_classification and (v := gold_label_logprob(self.task, p)) is not None:
                    rec["ref_logp"] = v  # the tie value, free with the label scores
                self.scores.put(model, key, example_key(e), rec)
        out = []
        for e, k in zip(examples, keys):
            rec = self.scores.get(model, key, k)
            out.append({"input": e.input, "gold": e.output, "pred": rec["pred"], "score": rec["score"]})
        return out

    def target_calls_left(self) -> float:
        """Target calls the budget can still pay for (inf without a limit)."""
        return min(self.limits.target_calls - self.ledger.target_calls, self.limits.calls - self.ledger.calls)

    def target_call(self, fn: Callable[[], Any], n: int) -> Any:
        """Run `fn` (any other use of the target model by a method), counted as `n` target calls."""
        left = self.target_calls_left()
        self._check_tokens()
        if n > left:
            raise BudgetExceeded(f"budget exhausted: {n} more target calls needed, {max(0, int(left))} left "
                                 f"({self.limits.describe()})")
        with self._charged() as m:
            out = fn()
        self.ledger.add({"calls": n, "target_calls": n, "target_tokens": m.tokens, "lm_cached_calls": m.cached})
        return out

    @contextmanager
    def _charged(self) -> Iterator["_Meter"]:
        """A model call: both models charge the ledger (their calls in the loop's units, counted by the caller);
        yields the tokens and cache hits charged inside."""
        with self.ledger.running(), self.ledger.counted_by_search(), _meter(self.ledger) as m:
            yield m

    def _check_tokens(self) -> None:
        self.ledger.check()  # the other limits (time, passes) first
        tokens = self.ledger.prompt_tokens + self.ledger.completion_tokens
        if tokens >= self.limits.tokens:
            raise BudgetExceeded(f"budget exhausted: tokens = {tokens} >= limit {self.limits.tokens:g}")

    # --- candidates and scores -----------------------------------------------------------
    def add(self, cand: Candidate) -> str:
        """Register a candidate (idempotent); return its hash."""
        key = cand.prompt.hash
        if key not in self.prompts:
            self.prompts[key] = cand.prompt
            self.info[key] = {"origin": cand.origin, "parent": cand.parent, "step": self.step}
        return key

    def finish(self, reason: str) -> None:
        """End the search after this step (e.g. nothing left to try)."""
        self.stopped = reason

    def skip(self, reason: str, k: int = 1) -> None:
        """Count `k` proposals that were skipped (empty, duplicate, unusable, ...)."""
        if k:
            self.skipped[reason] = self.skipped.get(reason, 0) + k

    def dev_scores(self, key: str) -> list[float | None]:
        """Per-dev-example scores of candidate `key` (None where not scored yet)."""
        cached = self.scores.data.get(self.target.model_id, {}).get(key, {})
        return [cached[k]["score"] if k in cached else None for k in self._dev_keys]

    def dev_score(self, key: str) -> float | None:
        """Mean score of candidate `key` on the whole dev set, or None if not scored on all of it."""
        s = self.dev_scores(key)
        if not s or any(v is None for v in s):
            return None
        return sum(s) / len(s)  # type: ignore[arg-type]

    def tie_rows(self) -> int:
        """How many dev rows (the first ones) a tie value averages over: all of dev on classification,
        where the values come free with the label scores; `tiebreak` on generation; 0 = no tie-break."""
        if not self.settings.tiebreak:
            return 0
        return len(self.dev) if self.task.is_classification else min(self.settings.tiebreak, len(self.dev))

    def tie_value(self, key: str) -> float | None:
        """Mean log-probability of the reference answers of candidate `key` on the tie-break dev rows
        (None where the target gave none, or not paid for yet; see `break_ties`)."""
        n = self.tie_rows()
        cached = self.scores.data.get(self.target.model_id, {}).get(key, {})
        vals = [cached.get(k, {}).get("ref_logp") for k in self._dev_keys[:n]]
        if not n or any(v is None for v in vals):
            return None
        return sum(vals) / n  # type: ignore[arg-type]

    def rank_key(self, key: str, score: float) -> tuple[float, float]:
        """Sort key of a candidate with dev score `score`, best first: the score, then its tie value."""
        tie = self.tie_value(key)
        return (-score, -tie if tie is not None else math.inf)

    def ranking(self) -> list[tuple[str, float]]:
        """(hash, dev score) of every candidate scored on the whole dev set, best first (ties: the higher
        tie value, then the earlier candidate)."""
        scored = [(k, self.dev_score(k)) for k in self.prompts]
        done = [(k, s) for k, s in scored if s is not None]
        order = {k: i for i, k in enumerate(self.prompts)}
        return sorted(done, key=lambda t: (*self.rank_key(t[0], t[1]), order[t[0]]))

    def beats(self, a: str, b: str) -> bool:
        """Whether candidate `a` ranks above candidate `b` (both scored on the whole dev set)."""
        sa, sb = self.dev_score(a), self.dev_score(b)
        if sa is None or sb is None:
            return False
        return self.rank_key(a, sa) < self.rank_key(b, sb)

    def break_ties(self) -> None:
        """Pay for the tie values of the candidates tied at the best dev score (see the module docstring).

        Generation tasks only (on classification `score` keeps the values from the label scores);
        skipped when fewer target calls are left than it needs, and for the rest of the search
        when the target cannot score a given answer (a chat endpoint, a reasoning prompt).
        """
        n = self.tie_rows()
        if not n or self.task.is_classification or self._no_tiebreak:
            return
        ranking = self.ranking()
        tied = [k for k, s in ranking if s == ranking[0][1]] if ranking else []
        if len(tied) < 2:
            return
        model, exs = self.target.model_id, self.dev[:n]
        for key in tied:
            if self.tie_value(key) is not None:
                continue
            if self.target_calls_left() < n:
                return
            try:
                vals = self.target_call(lambda: answer_scores(self.target, self.task, self.prompts[key], exs), n)
            except UnsupportedError as e:
                self._no_tiebreak = str(e) or type(e).__name__
                self.reporter.note(f"note: {self.method_name}: ties go to the earlier candidate: {self._no_tiebreak}")
                return
            for k, v in zip(self._dev_keys[:n], vals.tolist()):
                self.scores.get(model, key, k)["ref_logp"] = float(v)

    def best(self) -> tuple[str | None, float | None]:
        """(hash, dev score) of the prompt the search keeps so far ((None, None) before any is scored): the top of
        `ranking`, except that a candidate replaces the best start (origin "initial") only with a dev score
        strictly higher than the start's. The tie value orders starts among themselves and candidates among
        themselves, never a candidate above the start it came from: a tie on the metric keeps the start."""
        r = self.ranking()
        if not r:
            return None, None
        start = next(((k, s) for k, s in r if self.info[k]["origin"] == "initial"), None)
        return start if start is not None and r[0][1] <= start[1] else r[0]

    def kept_start(self) -> bool:
        """Whether the kept prompt is a start although other candidates were scored on all of dev (none
        scored higher)."""
        key = self.best()[0]
        return key is not None and self.info[key]["origin"] == "initial" and any(
            self.info[k]["origin"] != "initial" for k, _ in self.ranking())

    # --- checkpoint ----------------------------------------------------------------------
    def to_json(self, method_config: dict, data: str, rng_state, step: int) -> dict:
        """The checkpoint's JSON; tensor-holding candidates appear by reference (see `save_candidates`)."""
        return {
            "format": FORMAT, "method": self.method_name, "config": method_config, "seed": self.seed,
            "target": self.target.model_id, "optimizer": self.optimizer.model_id, "step": step,
            "rng": _rng_to_json(rng_state), "data": json.loads(data),
            "candidates": [{"key": k, **_prompt_entry(k, p), **self.info[k]} for k, p in self.prompts.items()],
            "scores": self.scores.data, "spend": self.ledger.counters(), "skipped": dict(self.skipped),
            "stopped": self.stopped, "stale": self.stale,
        }

    def save_candidates(self, folder: Path) -> None:
        """Write each tensor-holding candidate not yet on disk to `folder/<hash>/` (atomic, content-hashed).

        Candidates never change once proposed (the key is their content hash), so each is
        written once; `prompt.json` is written last, so a folder with it is complete.
        """
        for k, p in self.prompts.items():
            if p.text_only or k in self._on_disk:
                continue
            if not (folder / k / "prompt.json").exists():
                save_artifact(p, folder / k)
            self._on_disk.add(k)

    def load_json(self, d: dict, where: str) -> None:
        self.step = int(d["step"])
        self.rng.setstate(_rng_from_json(d["rng"]))
        self.data = d["data"]
        self.prompts, self.info = {}, {}
        folder = Path(where).parent / CANDIDATES
        for c in d["candidates"]:
            self.prompts[c["key"]] = _load_candidate(c, folder, where)
            if "saved" in c:
                self._on_disk.add(c["key"])
            self.info[c["key"]] = {"origin": c.get("origin", ""), "parent": c.get("parent"), "step": c.get("step", 0)}
        self.scores = ScoreCache(d["scores"])
        self.ledger.at_least(d.get("spend") or {})  # a run directory's spend.json was counted already
        self.skipped = dict(d.get("skipped", {}))
        self.stale = int(d.get("stale", 0))
        # a search that ended by itself stays ended; one stopped by the budget may go on with a larger one
        self.stopped = "" if d.get("stopped") == "budget" else str(d.get("stopped") or "")


def _prompt_entry(key: str, p: Prompt) -> dict:
    """How a candidate appears in search.json: inline JSON, or a reference to its saved folder."""
    return {"prompt": p.to_dict()} if p.text_only else {"saved": f"{CANDIDATES}/{key}"}


def _load_candidate(c: dict, folder: Path, where: str) -> Prompt:
    if "saved" not in c:
        return from_json(c["prompt"], {}, f"{where}: candidate")
    path = folder / c["key"]
    if c["saved"] != f"{CANDIDATES}/{c['key']}":
        raise ArtifactError(f"{where}: candidate {c['key'][:12]} refers to {c['saved']!r}, not {CANDIDATES}/<hash>")
    p = load_artifact(path)  # checks the file's own hash
    if p.hash != c["key"]:
        raise ArtifactError(f"{path}: holds another candidate than {c['key'][:12]} (hash {p.hash[:12]})")
    return p


def _rng_to_json(s) -> list:
    return [s[0], list(s[1]), s[2]]


def _rng_from_json(s) -> tuple:
    return (s[0], tuple(s[1]), s[2])



# --- metering ----------------------------------------------------------------------------------
@dataclass
class _Meter:
    tokens: int = 0
    cached: int = 0


@contextmanager
def _meter(b: Budget) -> Iterator[_Meter]:
    """Tokens and cache hits charged to ledger `b` inside the block."""
    t0, c0 = b.prompt_tokens + b.completion_tokens, b.cached_calls
    m = _Meter()
    try:
        yield m
    finally:
        m.tokens = b.prompt_tokens + b.completion_tokens - t0
        m.cached = b.cached_calls - c0


# --- checkpoint files --------------------------------------------------------------------------
def write_checkpoint(state: SearchState, ckpt: Path, d: dict) -> None:
    """The candidates' tensors first, then search.json (atomic) that refers to them."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    state.save_candidates(ckpt.parent / CANDIDATES)
    write_json(ckpt, d)


def read_checkpoint(state: SearchState, ckpt: Path, config: dict) -> None:
    """Load `ckpt` into `state`; ConfigError if it was written by a search with other settings."""
    try:
        d = json.loads(ckpt.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{ckpt}: unreadable search checkpoint ({e})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ArtifactError(f"{ckpt}: not a promptlift search checkpoint")
    mine = {"method": state.method_name, "config": config, "seed": state.seed, "target": state.target.model_id,
            "optimizer": state.optimizer.model_id}
    theirs = {k: d.get(k) for k in mine}
    if theirs != mine:
        diff = ", ".join(f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in mine if theirs[k] != mine[k])
        raise ConfigError(f"{ckpt}: cannot resume a search with other settings ({diff})")
    state.load_json(d, str(ckpt))

