"""Keywords: after Memon 2024, "LLM-Informed Discrete Prompt Optimization".

Learns, for one target model, a short set of keywords that, appended to the
instructions of several tasks, raises the model's mean score over those tasks;
the keywords are kept so they can be applied to a task the search never saw.

A candidate is a keyword set (the words, in order). The search
starts from the empty set (each task's own instruction) and edits the best sets
found so far: add a word, drop one, or swap one for another. Words come from a
vocabulary (a built-in list of 40 general instruction words, or `vocab`, a file
of one word per line) and, with `proposals` > 0, from the optimizer model, asked
for more words like the ones that helped (meta-prompt
`llm/prompts/keywords_propose.txt`); its words join the vocabulary.

Several tasks, one run: `tasks` names extra task directories (or `demo:NAME`),
comma-separated, beside the task of the run. A keyword set's score is the mean
over the tasks of its score on each task's dev set (the same number of dev
examples from each, at most `dev_examples`; a task without a dev file gets one
carved from train by the loader, never from test). Each task is scored with its
own instruction plus the keywords, through the one engine (`engine.evaluate`).

A candidate is the `TextPrompt` for the run's task (its instruction followed by
the keywords, `template`; the words in `meta["keywords"]`). The shared search
loop (`engine.search`) keeps the candidates, ranks them, owns the budget (one
target call per example scored), checkpoint and resume; its dev set is the
joint dev set (`JointTask`: every task's dev examples, tagged with their task).
`evaluate` scores one task at a time, so the method scores a candidate on every
task itself (`score`, paid through `state.target_call`, only the examples the
loop's score cache lacks) and hands the per-example scores to the loop's score
cache before the loop reads them; the loop never evaluates a candidate on the
joint task itself (its metric refuses to). Selection is therefore always on
the whole joint dev set.

The result is the best candidate, with `meta["keywords"]`,
`meta["keywords_template"]` and `meta["keywords_tasks"]` (the tasks it was
learnt on; `best_dev` in `meta["search"]` is the mean over them). To reuse the
keywords on a new task, run `keywords` there with `keywords_from=RUN_DIR` (or a
prompt.json): the keywords are applied to that task's instruction, nothing is
searched, and the run evaluates the result:

    promptlift optimize --method keywords --data A --tasks B,C --out runs/kw
    promptlift optimize --method keywords --data D --keywords-from runs/kw --out runs/kw-on-d

Measured with SmolLM2-135M (SST-2 + two instruction-induction tasks, 8-12 dev
examples each): no keyword set beat the plain instructions, every candidate tied
them (the model's SST-2 answers hardly move, exact match on the generation tasks
stays near 0); the optimizer's own keyword proposals were mostly not words.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ...artifacts import TextPrompt, load
from ...engine.evaluate import evaluate
from ...engine.search import Candidate, SearchSettings, SearchState, dev_subset, example_key, search
from ...errors import ConfigError
from ...registry import register
from ...task import Example, Task
from ..base import Method
from .common import clean, meta_prompt, request, short

# General instruction words; what helps a given model is what the search finds out.
VOCAB = (
    "accurate", "concise", "correct", "precise", "exact", "careful", "brief", "short", "simple", "clear",
    "direct", "only", "answer", "one word", "final", "important", "expert", "step by step", "think", "best",
    "true", "factual", "relevant", "strictly", "exactly", "output", "lowercase", "single", "quick", "focus",
    "honest", "specific", "literal", "complete", "consistent", "confident", "plain", "neutral", "reliable", "right",
)
OPS = ("add", "drop", "swap")
MAX_WORD_CHARS = 24
_WORD = re.compile(r"^[A-Za-z][A-Za-z' -]*[A-Za-z]$")


def with_keywords(instruction: str, keywords: Sequence[str], template_: str) -> str:
    """`instruction` with `keywords` appended by `template_` ({instruction}, {keywords}: the words, space-separated)."""
    if not keywords:
        return instruction
    text = template_.replace("{keywords}", " ".join(keywords)).replace("{instruction}", instruction)
    return text.strip()


@dataclass
class JointTask(Task):
    """The dev examples of several tasks as one task: the loop's dev set for keyword sets.

    Inputs are tagged `[i] input` (i: the task's index in `parts`), references are the
    JSON `[i, reference]`. Scores come from the method (`KeywordsSearch.score`): the
    metric refuses to score, so the loop can never score a candidate on it by mistake.
    """

    parts: list[Task] = field(default_factory=list, repr=False, compare=False)
    examples: list[list[Example]] = field(default_factory=list, repr=False, compare=False)  # per part, in dev order

    @classmethod
    def of(cls, tasks: Sequence[Task], n: int) -> "JointTask":
        """`n` dev examples of each task (0 = as many as the smallest dev set has), drawn with a fixed seed."""
        devs = [t.split("dev") for t in tasks]
        n = min([n or len(d) for d in devs] + [len(d) for d in devs])
        examples = [dev_subset(d, n) for d in devs]
        dev = [Example(f"[{i}] {e.input}", json.dumps([i, e.output], ensure_ascii=False))
               for i, exs in enumerate(examples) for e in exs]
        return cls(name="+".join(t.name for t in tasks), kind="generation", dev=dev, metric=_refuse,
                   instruction="(joint task)", source=", ".join(t.source for t in tasks), parts=list(tasks),
                   examples=examples)


def _refuse(pred, gold) -> float:
    raise ConfigError("a keyword set is scored on each of its tasks by the keywords method, not on the joint task")


@dataclass
class KeywordsConfig:
    """Keywords options: the tasks, the keyword sets searched, the vocabulary and the optimizer's proposals."""

    tasks: str = field(default="", metadata={
        "help": "extra tasks scored with the run's task, comma-separated: data directories or demo:NAME "
                "(dev splits only; '' = the run's task alone)"})
    keywords_from: str = field(default="", metadata={
        "help": "a keywords run directory or prompt.json: apply its keywords to this task's instruction and "
                "search nothing"})
    steps: int = field(default=6, metadata={"help": "search steps after scoring the starting prompt"})
    candidates: int = field(default=4, metadata={"help": "keyword sets proposed per step"})
    max_keywords: int = field(default=3, metadata={"help": "most keywords in a set"})
    beam: int = field(default=2, metadata={"help": "edits start from one of the best `beam` sets so far"})
    vocab: str = field(default="", metadata={
        "help": "file of candidate keywords, one per line ('' = the built-in 40 general words)"})
    start: str = field(default="", metadata={
        "help": "comma-separated keywords scored beside the empty set at the start"})
    template: str = field(default="{instruction} {keywords}", metadata={
        "help": "how keywords join an instruction: {instruction} and {keywords} (space-separated words)"})
    proposals: int = field(default=1, metadata={
        "help": "optimizer-model samples per step asking for new keywords (0 = vocabulary only)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the optimizer model"})
    dev_examples: int = field(default=32, metadata={
        "help": "dev examples per task (the same number from each, drawn with a fixed seed; 0 = all)"})
    patience: int = field(default=0, metadata={"help": "stop after this many steps without a better set (0 = never)"})

    def __post_init__(self):
        if self.steps < 0 or self.candidates < 1 or self.max_keywords < 1 or self.beam < 1:
            raise ValueError("steps must be >= 0; candidates, max_keywords and beam >= 1")
        if self.proposals < 0 or self.dev_examples < 0 or self.patience < 0 or self.temperature < 0:
            raise ValueError("proposals, dev_examples, patience and temperature must be >= 0")
        if "{keywords}" not in self.template:
            raise ValueError("template must contain {keywords}")


def split_list(text: str) -> list[str]:
    """Comma-separated items, stripped, empty ones dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def load_task_spec(spec: str) -> Task:
    """A task directory or `demo:NAME` (an extra task of a keywords run)."""
    if spec.startswith("demo:"):
        return Task.demo(spec.split(":", 1)[1])
    return Task.from_dir(Path(spec))


def usable_word(text: str) -> str | None:
    """A proposed keyword in its kept form (lower case, single spaces), or None if it is not a short word group."""
    w = " ".join(text.strip().strip(".!?;:\"'`()[]").lower().split())
    if not w or len(w) > MAX_WORD_CHARS or len(w.split()) > 3 or not _WORD.match(w):
        return None
    return w


def learned_keywords(path: str) -> tuple[list[str], str, list[str]]:
    """(keywords, template, tasks) recorded in a keywords run's artifact."""
    p = load(path)
    kws = p.meta.get("keywords")
    if not isinstance(kws, list) or not all(isinstance(w, str) for w in kws):
        raise ConfigError(f"{path}: not a keywords artifact (its meta has no 'keywords' list)")
    return list(kws), str(p.meta.get("keywords_template", "{instruction} {keywords}")), \
        list(p.meta.get("keywords_tasks", []))


class KeywordsSearch:
    """One keywords run as the loop's method; its vocabulary grows in `state.data["learned"]`."""

    def __init__(self, name: str, config: KeywordsConfig, lm, joint: JointTask):
        self.name, self.config, self.lm, self.joint = name, config, lm, joint
        c = config
        self.vocab = list(VOCAB) if not c.vocab else [w for w in (usable_word(x) for x in
                                                                   Path(c.vocab).read_text("utf-8").splitlines()) if w]
        if not self.vocab:
            raise ConfigError(f"{c.vocab}: no usable keyword in the vocabulary file")
        self.start = [w for w in (usable_word(x) for x in split_list(c.start)) if w][: c.max_keywords]

    # --- what the loop asks ----------------------------------------------------------------
    def search_settings(self) -> SearchSettings:
        c = self.config
        return SearchSettings(steps=c.steps, selection="full", patience=c.patience)

    def initial(self, state: SearchState) -> list[TextPrompt]:
        sets = [[]] + ([self.start] if self.start else [])
        return [self.score(state, self.candidate(s)) for s in sets]

    def propose(self, state: SearchState) -> list[Candidate]:
        c = self.config
        ranked = state.ranking()
        if not ranked:  # a budget stop before the starting sets were scored: score them now
            return [Candidate(p, origin="initial") for p in self.initial(state)]
        parents = [state.prompts[k] for k, _ in ranked[: c.beam]]
        parent = parents[state.rng.randrange(len(parents))]
        words = list(parent.meta["keywords"])
        tried = {tuple(p.meta["keywords"]) for p in state.prompts.values()}
        out: list[Candidate] = []

        def offer(new: list[str], origin: str) -> None:
            if tuple(new) in tried:
                state.skip("tried")
                return
            tried.add(tuple(new))
            out.append(Candidate(self.candidate(new), origin=origin, parent=parent.hash))

        if c.proposals:
            for w in self.ask_words(state, words):
                if len(out) < c.candidates and w not in words:
                    offer((words + [w]) if len(words) < c.max_keywords else words[:-1] + [w], "llm")
        pool = [w for w in dict.fromkeys(self.vocab + state.data.get("learned", [])) if w not in words]
        for _ in range(20 * c.candidates):
            if len(out) >= c.candidates:
                break
            ops = [op for op in OPS if (op != "add" or len(words) < c.max_keywords) and (op == "add" or words)]
            op = ops[state.rng.randrange(len(ops))]
            if op == "add" and pool:
                new = words + [pool[state.rng.randrange(len(pool))]]
            elif op == "drop":
                i = state.rng.randrange(len(words))
                new = words[:i] + words[i + 1:]
            elif op == "swap" and pool:
                i = state.rng.randrange(len(words))
                new = words[:i] + [pool[state.rng.randrange(len(pool))]] + words[i + 1:]
            else:
                continue
            if tuple(new) not in tried:
                offer(new, op)
        if not out:
            state.finish("no untried keyword set left")
        for cand in out:
            self.score(state, cand.prompt)
        return out

    def update(self, state: SearchState, scored) -> None:
        """Nothing to learn beyond the loop's scores: parents are read from its ranking."""

    def estimate(self, state: SearchState) -> dict:
        c = self.config
        return {"target_calls": len(state.dev) * (1 + bool(self.start) + c.steps * c.candidates),
                "optimizer_calls": c.steps * c.proposals}

    # --- candidates and proposals ----------------------------------------------------------
    def candidate(self, words: list[str]) -> TextPrompt:
        """The run task's prompt with these keywords (the words in `meta["keywords"]`)."""
        instruction = with_keywords(self.joint.parts[0].instruction, words, self.config.template)
        return TextPrompt(instruction=instruction, meta={"keywords": list(words)})

    def score(self, state: SearchState, prompt: TextPrompt) -> TextPrompt:
        """Score `prompt`'s keywords on every task (its instruction + the keywords) and put the per-example
        scores in the loop's score cache under `prompt`; only examples the cache lacks cost target calls."""
        model, key = state.target.model_id, prompt.hash
        tagged = iter(self.joint.dev)
        for part, exs in zip(self.joint.parts, self.joint.examples):
            keys = [example_key(next(tagged)) for _ in exs]
            missing = [(e, k) for e, k in zip(exs, keys) if state.scores.get(model, key, k) is None]
            if not missing:
                continue
            words = prompt.meta["keywords"]
            text = TextPrompt(instruction=with_keywords(part.instruction, words, self.config.template))

            def run(part=part, text=text, missing=missing):
                return evaluate(self.lm, part, text, examples=[e for e, _ in missing], progress=False)

            res = state.target_call(run, len(missing))
            for (_, k), rec in zip(missing, res.predictions):
                state.scores.put(model, key, k, {"pred": rec["pred"], "score": float(rec["score"])})
        return prompt

    def ask_words(self, state: SearchState, current: list[str]) -> list[str]:
        """New keywords from the optimizer model (`proposals` calls); kept in `state.data["learned"]`."""
        t = meta_prompt("keywords_propose")
        tasks = "\n".join(f"- {short(p.instruction, 150)} (example input: {short(p.split('dev')[0].input, 80)})"
                          for p in self.joint.parts)
        best = ", ".join(current) or ", ".join(self.vocab[:3])
        req = request(state.optimizer, t.fill(tasks=tasks, keywords=best), t.prefix, "auto", t.sep)
        raws = state.ask(req, n=self.config.proposals, temperature=self.config.temperature, max_tokens=24,
                         stop=["\n", '"'] if isinstance(req, str) else ["\n\n"])
        learned = state.data.setdefault("learned", [])
        known = set(self.vocab) | set(learned)
        new = []
        for raw in raws:
            for piece in re.split(r"[,;/]| and ", clean(raw, t.prefix)):
                w = usable_word(piece)
                if w is None:
                    if piece.strip():
                        state.skip("unusable")
                elif w not in known:
                    known.add(w)
                    learned.append(w)
                    new.append(w)
        return new


@register("keywords")
class Keywords(Method):
    """Keywords appended to the instructions of several tasks, searched for one model; reusable on new tasks."""

    family = "llm"
    Config = KeywordsConfig
    smoke = {"steps": 2, "candidates": 2, "dev_examples": 4, "proposals": 1}

    def fit(self, lm, task, ctx):
        c = self.config
        if c.keywords_from:
            kws, tmpl, tasks = learned_keywords(c.keywords_from)
            return TextPrompt(instruction=with_keywords(task.instruction, kws, tmpl),
                              meta={"keywords": kws, "keywords_template": tmpl, "keywords_tasks": tasks,
                                    "keywords_from": str(c.keywords_from)})
        tasks = [task] + [load_task_spec(s) for s in split_list(c.tasks)]
        if len({t.name for t in tasks}) < len(tasks):
            raise ConfigError(f"tasks: each task must have its own name, got {[t.name for t in tasks]}")
        joint = JointTask.of(tasks, c.dev_examples)
        best = search(KeywordsSearch(self.name, c, lm, joint), lm, joint, ctx)
        kws = list(best.meta.get("keywords", []))
        best = TextPrompt(instruction=with_keywords(task.instruction, kws, c.template), demos=list(best.demos),
                          meta=dict(best.meta))  # the starting prompt when the budget paid for nothing
        best.meta.update({"keywords": kws, "keywords_template": c.template,
                          "keywords_tasks": [t.name for t in tasks]})
        return best
