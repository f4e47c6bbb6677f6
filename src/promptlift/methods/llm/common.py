"""What the LLM-optimizer methods share: meta-prompts, plain-text proposals, options, prompt editing.

A proposal is never parsed from JSON or tags. The meta-prompt (a text file in
`prompts/`, see its README) ends with a fixed prefix such as `New instruction: "`;
the optimizer continues it, and its answer up to the closing quote or line break
is the proposal. A proposal that is empty, unusable (fewer than three letters, too
long, or just a label word: the optimizer answered the task instead) or a copy of
one already seen is counted in `state.skipped` and dropped, never an error: a
135M-parameter proposer writes noise often, and the search goes on with the rest.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, ClassVar, Iterable, Sequence

from ...artifacts import Prompt, Reasoning, TextPrompt
from ...artifacts.wrappers import least_to_most
from ...engine.search import TIEBREAK, SearchSettings, SearchState, search
from ...engine.select import SelectConfig, estimate_calls
from ...errors import ConfigError
from ...task import Example, Task
from ..base import Method
from ..shared import balanced_sample

FORMATS = ("auto", "text", "chat")
# Lines a small proposer writes when it continues the meta-prompt's own layout instead of answering.
_ECHO = re.compile(r"\s*(?:Input|Output|Instruction(?: \d| [AB])?|New instruction|Score|score|Text|Label|"
                   r"Prediction|Correct answer|Model answer|Feedback)\s*:", re.I)
MAX_INPUT_CHARS = 300  # inputs shown to the optimizer are cut here: a small model's context is short


# --- meta-prompts ----------------------------------------------------------------------------
@dataclass(frozen=True)
class MetaPrompt:
    """A meta-prompt: the request, and the fixed prefix (its last line) the optimizer continues.

    sep: the line break(s) between the request and the prefix in the file.
    """

    name: str
    body: str
    prefix: str
    sep: str = "\n\n"

    @property
    def quoted(self) -> bool:
        """True if the prefix opens a quote: the answer ends at the closing one."""
        return self.prefix.endswith('"')

    def fill(self, **fields: Any) -> str:
        """The request with every `{name}` replaced (in one pass: values are never re-read)."""

        def sub(m: re.Match) -> str:
            if m.group(1) not in fields:
                raise ConfigError(f"meta-prompt {self.name!r} needs field {m.group(1)!r}")
            return str(fields[m.group(1)])

        return re.sub(r"\{(\w+)\}", sub, self.body)


@lru_cache(maxsize=None)
def meta_prompt(name: str) -> MetaPrompt:
    """The meta-prompt `prompts/<name>.txt`."""
    try:
        text = (resources.files(__package__) / "prompts" / f"{name}.txt").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no meta-prompt named {name!r}") from None
    body, _, prefix = text.rstrip("\n").rpartition("\n")
    stripped = body.rstrip("\n")
    return MetaPrompt(name, stripped, prefix.strip(), "\n" * (len(body) - len(stripped) + 1))


def request(lm, body: str, prefix: str, fmt: str = "auto", sep: str = "\n\n"):
    """The optimizer request for `body` + `prefix`: one text, or chat messages ending in a partial answer.

    auto: one text for a local model and a completions endpoint (the model continues the
    prefix directly; measured with SmolLM2-135M, faster and no worse than its chat template),
    chat messages for a chat endpoint. A local model continues a final assistant message
    itself; so do servers such as vLLM (`continue_final_message`).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"proposer_format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "auto":
        fmt = "text" if getattr(lm, "is_white_box", False) or getattr(lm, "api", "chat") == "completions" else "chat"
    if fmt == "text":
        return f"{body}{sep}{prefix}"
    return [{"role": "user", "content": body}, {"role": "assistant", "content": prefix}]


# --- proposals -------------------------------------------------------------------------------
def normalize(text: str) -> str:
    """Comparison form of a proposal: lower case, single spaces, no end punctuation."""
    return " ".join(text.lower().split()).strip(" .!?;:,\"'")


def clean(raw: str, prefix: str = "") -> str:
    """The proposal in a raw answer: after an echoed prefix, inside the quotes the prefix opened, on its first
    line, before any echoed field label."""
    t = raw.strip()
    for p in dict.fromkeys([prefix.strip(), prefix.strip().rstrip('"').strip()]):
        if p and t.lower().startswith(p.lower()):  # a chat model that cannot continue a prefix repeats it
            t = t[len(p):].strip()
            break
    if prefix.strip().endswith('"'):
        t = t[1:] if t.startswith('"') else t
        t = t.split('"', 1)[0]
    t = t.split("\n", 1)[0]
    m = _ECHO.search(t)
    if m and m.start() > 0:
        t = t[: m.start()]
    elif m:  # the answer opens with a field label: keep what follows it on that line
        t = t[m.end():]
    t = t.strip().strip("\"'`[]<>").strip()
    return " ".join(t.split())


def unusable(text: str, max_chars: int = 600) -> str | None:
    """Why a cleaned proposal cannot be used ("empty", "unusable", "too-long"), or None."""
    if not text:
        return "empty"
    if sum(c.isalpha() for c in text) < 3:
        return "unusable"
    if len(text) > max_chars:
        return "too-long"
    return None


def propose(state: SearchState, name: str, fields: dict, *, n: int, temperature: float, fmt: str = "auto",
            seen: Iterable[str] = (), max_tokens: int = 64, max_chars: int = 600) -> list[str]:
    """Up to `n` distinct usable proposals from meta-prompt `name` (n optimizer calls).

    Drops (and counts in `state.skipped`) empty, unusable and duplicate ones, where a
    duplicate repeats `seen` (e.g. every instruction tried so far) or an earlier sample.
    """
    t = meta_prompt(name)
    req = request(state.optimizer, t.fill(**fields), t.prefix, fmt, t.sep)
    # a model that continues the text stops at the closing quote; a chat model that answers anew may
    # open its answer with a quote of its own, so it stops at a blank line and `clean` finds the quotes
    stop = ["\n\n", '"'] if t.quoted and isinstance(req, str) else ["\n\n"]
    raws = state.ask(req, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop)
    known = {normalize(s) for s in seen}
    answers = {normalize(w) for lab, w in state.task.labels.items()} | {normalize(lab) for lab in state.task.labels}
    out = []
    for raw in raws:
        text = clean(raw, t.prefix)
        why = unusable(text, max_chars)
        if why:
            state.skip(why)
        elif normalize(text) in answers:  # the optimizer answered the task instead of writing an instruction
            state.skip("unusable")
        elif normalize(text) in known:
            state.skip("duplicate")
        else:
            known.add(normalize(text))
            out.append(text)
    return out


def as_instruction(text: str) -> str:
    """A proposal continuing "The instruction was to ..." as an instruction: capitalised."""
    return text[:1].upper() + text[1:]


# --- prompts: the instruction inside wrappers ---------------------------------------------
def instruction_of(prompt: Prompt) -> str:
    """The instruction of a text prompt, looking inside wrappers (Reasoning, Calibrated)."""
    if hasattr(prompt, "instruction"):
        return prompt.instruction  # type: ignore[attr-defined]
    for child in prompt.children():
        return instruction_of(child)
    raise ConfigError(f"a {type(prompt).__name__} prompt has no instruction to optimize")


def with_instruction(prompt: Prompt, instruction: str) -> Prompt:
    """A copy of `prompt` with its (innermost) instruction replaced; demos and wrappers are kept."""
    if hasattr(prompt, "instruction"):
        return dataclasses.replace(prompt, instruction=instruction, meta={})
    for f in dataclasses.fields(prompt):
        if f.metadata.get("kind") == "prompt":
            return dataclasses.replace(prompt, **{f.name: with_instruction(getattr(prompt, f.name), instruction)},
                                       meta={})
    raise ConfigError(f"a {type(prompt).__name__} prompt has no instruction to optimize")


def tried(state: SearchState) -> list[str]:
    """The instruction of every candidate proposed so far."""
    out = []
    for p in state.prompts.values():
        try:
            out.append(instruction_of(p))
        except ConfigError:
            pass
    return out


# --- examples as the optimizer reads them ----------------------------------------------------
def answer(task: Task, output: Any) -> str:
    """What an answer looks like in text: a label's words, or the text itself."""
    if output is None:
        return "(no answer)"
    return task.labels.get(output, str(output)) if task.is_classification else str(output)


def short(text: str, limit: int = MAX_INPUT_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_pairs(task: Task, examples: Sequence[Example]) -> str:
    """Input/output pairs, one blank line apart."""
    return "\n\n".join(f"Input: {short(e.input)}\nOutput: {answer(task, e.output)}" for e in examples)


def format_errors(task: Task, records: Sequence[dict]) -> str:
    """Wrongly answered examples: input, correct answer, the model's answer."""
    return "\n\n".join(f"Input: {short(r['input'])}\nCorrect answer: {answer(task, r['gold'])}\n"
                       f"Model answer: {answer(task, r['pred'])}" for r in records)


def feedback(task: Task, record: dict) -> str:
    """The metric's textual feedback on one answer (GEPA's "feedback" for reflection)."""
    if record["score"] >= 1:
        return "correct."
    gold, pred = answer(task, record["gold"]), answer(task, record["pred"])
    if task.is_classification:
        return f'wrong: the answer was "{pred}", the correct answer is "{gold}".'
    return f'wrong (score {record["score"]:.2f}): the answer was "{pred}", the expected answer is "{gold}".'


def sample(rng: random.Random, pool: Sequence, k: int) -> list:
    """k items of `pool` without replacement (all of them if it has fewer)."""
    return rng.sample(list(pool), min(k, len(pool)))


def error_pool(state: SearchState) -> list[Example]:
    """Where methods look for errors: the train split, else dev."""
    return state.train or state.dev


# --- demonstrations ------------------------------------------------------------------------------
DEMO_SOURCES = ("random", "correct")


def draw(state: SearchState, pool: Sequence[Example], k: int, rng: random.Random) -> list[Example]:
    """k demonstrations from `pool`, as class-balanced as it allows."""
    return balanced_sample(state.task.with_splits(train=list(pool)), min(k, len(pool)), rng)


def correct_sample_size(k: int) -> int:
    """Most training examples scored to find the ones the target gets right (a large pool would eat the budget)."""
    return max(4 * k, 16)


def demo_pool(state: SearchState, prompt: Prompt, source: str, k: int) -> list[Example]:
    """Training examples to draw demonstrations from: all of them (`random`), or those `prompt` gets
    right on the target (`correct`).

    `correct` scores a seeded order of the training examples k at a time (one target call each) and
    stops once 2k are right (enough for different demonstration sets; DSPy's bootstrapping stops early
    too) or `correct_sample_size(k)` are scored; if fewer than k are right, every training example is
    the pool (a start that gets nothing right must not spend the budget looking)."""
    pool = list(state.train)
    if source == "correct" and pool:
        order = state.rng.sample(pool, min(len(pool), correct_sample_size(k)))
        right: list[Example] = []
        for i in range(0, len(order), k):
            chunk = order[i : i + k]
            right += [e for e, r in zip(chunk, state.score(prompt, chunk)) if r["score"] >= 1]
            if len(right) >= 2 * k:
                break
        if len(right) >= k:
            return right
        state.skip("too-few-correct")  # the model gets too little right: fall back to any examples
    return pool


# --- reasoning strategies ------------------------------------------------------------------------
COT_TRIGGER = "Let's think step by step."
STRATEGIES = ("cot", "least-to-most")


def reasoning_prompt(inner: Prompt, config) -> Reasoning:
    """`inner` wrapped for the config's reasoning strategy: chain of thought after `trigger`, or least-to-most."""
    if config.strategy == "least-to-most":
        return least_to_most(inner)
    return Reasoning(inner=inner, trigger=config.trigger)


# --- the base of every method here ---------------------------------------------------------
# A 135M model answers a generation task in sentences with an instruction alone, and in the task's
# format once it sees a few demonstrations (SmolLM2-135M on singular_to_plural dev: 0 % alone, 47-56 %
# with 4 random demonstrations; bench/LLM_PEERS_RESULTS.md). So the search may start from either; dev decides.
STARTS = ("auto", "zero-shot", "demos")


def start_key(state: SearchState) -> str:
    """The starting prompt the search builds on: the best starting prompt on dev, as the loop ranks
    candidates (ties: the reference answers' log-probability, then the first)."""
    keys = [k for k in state.prompts if state.info[k]["origin"] == "initial"]
    return next((k for k, _ in state.ranking() if k in keys), keys[0])


@dataclass
class LLMConfig:
    """Options every LLM-optimizer method has (each method adds its own and its defaults)."""

    steps: int = field(default=3, metadata={"help": "search steps after scoring the starting prompt"})
    selection: str = field(default="full", metadata={"help": "candidate selection: full | ucb | halving"})
    dev_examples: int = field(default=0, metadata={
        "help": "selection examples: N of dev, drawn once with a fixed seed (0 = all)"})
    instruction: str = field(default="", metadata={"help": "starting instruction; empty = the task's default"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the optimizer model"})
    proposer_format: str = field(default="auto", metadata={
        "help": "how the optimizer is asked: auto | text (one text it continues) | chat (messages + partial answer)"})
    patience: int = field(default=0, metadata={"help": "stop after this many steps without a better prompt (0 = never)"})
    tiebreak: int = field(default=TIEBREAK, metadata={
        "help": "candidates tied on dev are ranked by the reference answers' log-probability: generation, on "
                "this many dev rows (one target call each, only when tied); classification, the gold label's "
                "probability on all of dev (free with the label scores); 0 = ties go to the earlier"})
    reasoning: bool = field(default=False, metadata={
        "help": "chain of thought: the prompt reasons after `trigger` before answering (the instruction is optimized)"})
    trigger: str = field(default=COT_TRIGGER, metadata={"help": "reasoning trigger (cot)"})
    strategy: str = field(default="cot", metadata={
        "help": "reasoning strategy when reasoning is on: cot (reason, then answer) | least-to-most (list simpler "
                "sub-questions, answer them in order, then answer; Zhou et al. 2023)"})
    demos: int = field(default=4, metadata={
        "help": "demonstrations of the demo start, kept while its instruction is optimized (0 = none)"})
    start: str = field(default="auto", metadata={
        "help": "starting prompt: auto (the instruction alone and with `demos` demonstrations are both scored "
                "on dev; the search builds on the better, ties as the loop breaks them, then alone) | zero-shot | demos"})
    demo_source: str = field(default="random", metadata={
        "help": "where the demos come from: random | correct (training examples the target answers correctly)"})
    min_examples: int = field(default=4, metadata={"help": "halving: examples per candidate in the first round"})
    ucb_sample: int = field(default=4, metadata={"help": "ucb: examples per bandit pull"})
    ucb_pulls: int = field(default=2, metadata={"help": "ucb: pulls per candidate on average"})

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError("steps must be >= 0")
        if self.selection not in ("full", "ucb", "halving"):
            raise ValueError(f"selection must be full, ucb or halving, got {self.selection!r}")
        if self.proposer_format not in FORMATS:
            raise ValueError(f"proposer_format must be one of {', '.join(FORMATS)}, got {self.proposer_format!r}")
        if self.demos < 0:
            raise ValueError("demos must be >= 0")
        if self.tiebreak < 0:
            raise ValueError("tiebreak must be >= 0")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, got {self.start!r}")
        if self.start == "demos" and not self.demos:
            raise ValueError("start=demos needs demos >= 1")
        if self.demo_source not in DEMO_SOURCES:
            raise ValueError(f"demo_source must be one of {', '.join(DEMO_SOURCES)}, got {self.demo_source!r}")
        if self.reasoning and not self.trigger.strip():
            raise ValueError("reasoning needs a non-empty trigger")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.strategy != "cot" and not self.reasoning:
            raise ValueError(f"strategy={self.strategy} is a reasoning strategy: turn reasoning on (--reasoning)")
        if self.strategy != "cot" and self.trigger != COT_TRIGGER:
            raise ValueError(f"trigger is the chain-of-thought trigger; strategy={self.strategy} has its own")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        for name in ("dev_examples", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("min_examples", "ucb_sample", "ucb_pulls"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


class LLMMethod(Method):
    """Base of the LLM optimizers: `fit` runs the shared search loop on this method's propose/update.

    smoke: options that make a run tiny (a contract test runs every method with them).
    keep: how many candidates selection keeps (halving survivors; a beam).
    """

    family = "llm"
    smoke: ClassVar[dict] = {}
    takes = ("text",)  # a pipeline's earlier instruction is the search's starting one
    makes = "text"

    Config = LLMConfig

    def fit(self, lm, task, ctx):
        return search(self, lm, task, ctx)

    # --- what the loop asks ---------------------------------------------------------------
    def keep(self) -> int:
        return 1

    def search_settings(self) -> SearchSettings:
        c = self.config
        return SearchSettings(steps=c.steps, selection=c.selection, dev_examples=c.dev_examples, patience=c.patience,
                              tiebreak=c.tiebreak,
                              select=SelectConfig(keep=self.keep(), min_examples=c.min_examples,
                                                  ucb_sample=c.ucb_sample, ucb_pulls=c.ucb_pulls))

    def initial(self, state: SearchState) -> list[Prompt]:
        """The starting prompts (`start`): the given (or the task's) instruction alone, and/or with `demos`
        demonstrations; each wrapped for reasoning if asked (chain of thought, or least-to-most: `strategy`).
        The loop scores them on dev; `start_key` is the better one."""
        c = self.config
        alone = TextPrompt(instruction=c.instruction or state.task.instruction)
        keep_alone, with_demos = self.start_kinds(state)
        starts = [alone] if keep_alone else []
        if with_demos:
            pool = demo_pool(state, alone, c.demo_source, c.demos)
            starts.append(TextPrompt(instruction=alone.instruction, demos=draw(state, pool, c.demos, state.rng)))
        return [reasoning_prompt(p, c) if c.reasoning else p for p in starts]

    def start_kinds(self, state: SearchState) -> tuple[bool, bool]:
        """Which starts `initial` scores: (the instruction alone, the instruction with `demos` demonstrations)."""
        c = self.config
        with_demos = bool(c.demos and state.train and c.start != "zero-shot")
        return (not (with_demos and c.start == "demos"), with_demos)

    def propose(self, state: SearchState) -> list:
        raise NotImplementedError(f"{type(self).__name__} must define propose()")

    def update(self, state: SearchState, scored: list) -> None:
        """Default: nothing to learn (the loop keeps every score)."""

    # --- estimates ------------------------------------------------------------------------
    def selection_calls(self, state: SearchState, n_candidates: int) -> int:
        """Most target calls selecting among `n_candidates` costs (plus the top's whole-dev score)."""
        s = self.search_settings()
        return estimate_calls(s.selection, n_candidates, len(state.dev), s.select) + len(state.dev)

    def estimate(self, state: SearchState) -> dict:
        """{"target_calls", "optimizer_calls"} a run costs at most, from the per-step counts below."""
        proposals, extra_target = self.per_step(state)
        steps = self.config.steps
        return {"target_calls": self.initial_calls(state)
                + steps * (self.selection_calls(state, proposals) + extra_target),
                "optimizer_calls": steps * self.optimizer_calls_per_step()}

    def initial_calls(self, state: SearchState) -> int:
        """Target calls of the starting prompt: its dev score (and choosing its demos from correct answers)."""
        c = self.config
        keep_alone, with_demos = self.start_kinds(state)
        return (keep_alone + with_demos) * len(state.dev) + (min(len(state.train), correct_sample_size(c.demos))
                                                             if with_demos and c.demo_source == "correct" else 0)

    def per_step(self, state: SearchState) -> tuple[int, int]:
        """(candidates per step, other target calls per step)."""
        return self.optimizer_calls_per_step(), 0

    def optimizer_calls_per_step(self) -> int:
        return 0
