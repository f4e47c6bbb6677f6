"""`keywords`: words appended to the instructions of several tasks, searched for one model, reused on a new
task. Causally (a rule-following endpoint that answers well only when a word is in its instruction) and on a
tiny random model: the mean over the tasks must rise over the starting instructions, the keywords must be
recorded in the artifact, and applying them to a third task must carry the gain; a resumed run ends where an
uninterrupted one ends."""

from __future__ import annotations

import random

import pytest

import promptlift
import promptlift.methods.llm.keywords as kw
from promptlift.artifacts import TextPrompt, load
from promptlift.engine.evaluate import evaluate
from promptlift.errors import ConfigError
from promptlift.task import Example, Task
from fakes import RuleTarget, ScriptedLM, learner  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def polar(name: str, fmt: str, seed: int, n_dev: int = 24) -> Task:
    """Sentiment words in a template -> 'hot'/'cold' (the synthetic task of conftest, one template per task)."""

    def split(n, s):
        rng = random.Random(s)
        pos, neg = ["great", "wonderful", "good"], ["terrible", "boring", "bad"]
        out = [Example(fmt.format(rng.choice(pos if i % 2 else neg)), "positive" if i % 2 else "negative")
               for i in range(n)]
        rng.shuffle(out)
        return out

    return Task(name=name, kind="classification", train=split(16, seed), dev=split(n_dev, seed + 1),
                test=split(48, seed + 2), labels={"negative": "cold", "positive": "hot"}, instruction="Classify.")


@pytest.fixture
def extra_tasks(monkeypatch):
    """`tasks="NAME,..."` resolves to these in-memory tasks (the CLI passes directories)."""
    known: dict[str, Task] = {}
    monkeypatch.setattr(kw, "load_task_spec", lambda spec: known[spec])
    return known


def accuracy(lm, task, instruction, split="test") -> float:
    return evaluate(lm, task, TextPrompt(instruction), split=split, progress=False).accuracy


# --- causal: an endpoint that reads the input only when its instruction says "sentiment" ----------------
def rule(instruction: str, text: str) -> str:
    if "sentiment" in instruction.lower():
        return "positive" if any(w in text for w in ("good", "great", "wonderful")) else "negative"
    return "negative"


def rule_task(name: str, fmt: str, seed: int) -> Task:
    t = polar(name, fmt, seed, n_dev=8)
    return Task(name=name, kind="classification", train=t.train, dev=t.dev, test=t.test,
                labels={"negative": "negative", "positive": "positive"}, instruction="Classify.")


def test_keywords_from_the_optimizer_raise_every_task_and_carry_to_a_new_one(tmp_path, extra_tasks):
    a, b, c = rule_task("a", "the movie was {}", 0), rule_task("b", "a {} film", 10), rule_task("c", "it is {}", 20)
    extra_tasks["b"] = b
    target = RuleTarget(rule)
    optimizer = ScriptedLM(["accurate, Sentiment, and 3 more!"])
    run = promptlift.optimize("keywords", target, a, out=tmp_path / "kw", progress=False, optimizer_lm=optimizer,
                              tasks="b", steps=2, candidates=2, dev_examples=8, seed=0)
    p = run.prompt
    assert "sentiment" in p.meta["keywords"] and p.meta["keywords_tasks"] == ["a", "b"]
    assert p.instruction == "Classify. " + " ".join(p.meta["keywords"])
    assert p.meta["search"]["best_dev"] == 1.0 and run.test.accuracy == 1.0
    assert accuracy(target, a, "Classify.") == 0.5
    # the optimizer was shown every task, and its words joined the vocabulary
    assert "the movie was" in optimizer.requests[0] and "a " in optimizer.requests[0]
    # reuse: a run on a new task that applies the keywords and searches nothing
    calls = target.answered
    again = promptlift.optimize("keywords", target, c, out=tmp_path / "kw-c", progress=False,
                                keywords_from=str(tmp_path / "kw"), eval_splits=("test",))
    assert again.prompt.instruction == "Classify. " + " ".join(p.meta["keywords"])
    assert again.prompt.meta["keywords_from"] == str(tmp_path / "kw")
    # only the evaluations on test (the prompt's, and the zero-shot baseline's for the paired gain): nothing was searched
    assert target.answered - calls == 2 * len(c.test)
    assert again.test.accuracy == 1.0 and accuracy(target, c, "Classify.") == 0.5


def test_keyword_candidates_are_scored_on_every_task_with_its_own_instruction(extra_tasks):
    seen = []

    def recording(instruction, text):
        seen.append(instruction)
        return rule(instruction, text)

    a, b = rule_task("a", "the movie was {}", 0), rule_task("b", "a {} film", 10)
    b.instruction = "Judge the film."
    extra_tasks["b"] = b
    promptlift.optimize("keywords", RuleTarget(recording), a, progress=False, eval_splits=(), tasks="b", steps=1,
                        candidates=1, proposals=0, dev_examples=3, vocab="", seed=0)
    assert {"Classify.", "Judge the film."} <= set(seen)
    assert any(s.startswith("Judge the film. ") for s in seen) and any(s.startswith("Classify. ") for s in seen)


# --- a tiny random model ----------------------------------------------------------------------------
def test_keywords_raise_the_mean_over_two_tasks_on_a_tiny_model_and_apply_to_a_third(tmp_path, extra_tasks):
    lm = learner()
    a, b, c = polar("a", "the movie was {}", 0), polar("b", "a {} film", 10), polar("c", "the story is {}", 20)
    extra_tasks["b"] = b
    run = promptlift.optimize("keywords", lm, a, out=tmp_path / "kw", progress=False, eval_splits=(), tasks="b",
                              steps=8, candidates=4, proposals=0, seed=0)
    kws = run.prompt.meta["keywords"]
    assert kws and run.prompt.instruction == "Classify. " + " ".join(kws)
    start = [accuracy(lm, t, "Classify.", "dev") for t in (a, b)]
    after = [accuracy(lm, t, run.prompt.instruction, "dev") for t in (a, b)]
    assert run.prompt.meta["search"]["best_dev"] == pytest.approx(sum(after) / 2)
    assert sum(after) > sum(start) + 0.2  # measured: dev 0.54/0.71 -> 0.75/0.75
    # held-out test of the two tasks: the gain is not only selection on dev (measured 0.60/0.67 -> 0.83/0.79)
    assert sum(accuracy(lm, t, "Classify. " + " ".join(kws)) for t in (a, b)) > \
        sum(accuracy(lm, t, "Classify.") for t in (a, b)) + 0.2
    # a third task the search never saw, through keywords_from. On a random model a transfer gain is not
    # guaranteed (seeds 0-3 measured on this task's test: +8, -2, -12, +21 points); seed 0 is pinned here.
    on_c = promptlift.optimize("keywords", lm, c, out=tmp_path / "kw-c", progress=False, eval_splits=("test",),
                               keywords_from=str(tmp_path / "kw"))
    assert on_c.prompt.instruction == "Classify. " + " ".join(kws)
    assert on_c.test.accuracy > accuracy(lm, c, "Classify.")  # measured 0.667 -> 0.750


def test_keywords_resumed_after_a_budget_stop_end_as_an_uninterrupted_run(tmp_path, extra_tasks):
    extra_tasks["b"] = polar("b", "a {} film", 10)
    a = polar("a", "the movie was {}", 0)
    opts = {"tasks": "b", "steps": 4, "candidates": 3, "dev_examples": 8, "proposals": 1}
    full = promptlift.optimize("keywords", learner(), a, out=tmp_path / "full", progress=False, eval_splits=(),
                               **opts)
    cut = promptlift.optimize("keywords", learner(), a, out=tmp_path / "cut", progress=False, eval_splits=(),
                              budget="forward=60", **opts)
    assert cut.stopped == "budget" and cut.prompt.meta["search"]["steps"] < 4
    resumed = promptlift.optimize("keywords", learner(), a, out=tmp_path / "cut", progress=False, eval_splits=(),
                                  resume=True, **opts)
    assert resumed.prompt.instruction == full.prompt.instruction
    assert resumed.prompt.meta["keywords"] == full.prompt.meta["keywords"]
    assert resumed.prompt.meta["search"]["best_dev"] == full.prompt.meta["search"]["best_dev"]


def test_keywords_refuse_what_they_cannot_use(tmp_path):
    with pytest.raises(ConfigError, match="template"):
        kw.Keywords.make_config(template="{instruction}")
    TextPrompt("Classify.").save(tmp_path / "plain")
    with pytest.raises(ConfigError, match="not a keywords artifact"):
        promptlift.optimize("keywords", learner(), polar("a", "{}", 0), progress=False, eval_splits=(),
                            keywords_from=str(tmp_path / "plain"))
    assert load(tmp_path / "plain").instruction == "Classify."
