"""One contract, every registered method, on a tiny model built in the test.

fit -> artifact -> save/load bit-exact -> evaluate; resume; budget stop; unknown option refused.
A new method is covered as soon as it is registered (its `smoke` options keep it fast).
"""

from __future__ import annotations

import random

import pytest
import torch

import promptlift
from promptlift.artifacts import load
from promptlift.cli import main
from promptlift.errors import BudgetExceeded, ConfigError
from promptlift.registry import get_method, list_methods
from promptlift.task import Example, Task
from fakes import make_tiny_lm  # noqa: F401

METHODS = sorted(list_methods())
NOTHING_TO_FIT = {"zero-shot", "zero-shot-cot", "least-to-most", "calibrated"}  # fit builds the prompt from the task


pytestmark = pytest.mark.usefixtures("one_thread")


def task_for(cls) -> Task:
    rng = random.Random(0)
    if "classification" in cls.task_kinds:
        words = {"pos": ["great", "wonderful", "good", "hot", "big"], "neg": ["terrible", "boring", "bad", "cold"]}
        exs = []
        for i in range(32):
            lab = "pos" if i % 2 else "neg"
            exs.append(Example(f"the movie was {rng.choice(words[lab])} {rng.choice(['news', 'sports', 'film'])}",
                               lab))
        return Task(name="synth", kind="classification", train=exs[:16], dev=exs[16:24], test=exs[24:],
                    labels={"pos": "positive", "neg": "negative"}, instruction="Classify the input.")
    pairs = [("hot", "cold"), ("up", "down"), ("big", "small"), ("good", "bad"), ("great", "terrible")] * 3
    exs = [Example(a, b) for a, b in pairs]
    return Task(name="synth-gen", kind="generation", train=exs[:8], dev=exs[8:11], test=exs[11:],
                instruction="Give the antonym.")


def run(name, tmp, **kw):
    cls = get_method(name)
    lm, task = make_tiny_lm(), task_for(cls)
    return lm, task, promptlift.optimize(name, lm, task, out=tmp, progress=False, seed=0, **{**cls.smoke, **kw})


def _same(a, b) -> None:
    assert type(a) is type(b) and a.hash == b.hash and a.to_dict() == b.to_dict()
    for k, t in a.tensors().items():
        assert torch.equal(t, b.tensors()[k])


@pytest.mark.parametrize("name", METHODS)
def test_fit_save_load_evaluate(name, tmp_path):
    lm, task, r = run(name, tmp_path / "run")
    assert r.prompt.method == name and r.prompt.model == lm.model_id and r.prompt.task == task.name
    loaded = load(tmp_path / "run")
    _same(loaded, r.prompt)
    again = promptlift.evaluate(lm, task, loaded, split="test", progress=False)
    assert [p["pred"] for p in again.predictions] == [p["pred"] for p in r.test.predictions]
    assert again.accuracy == r.test.accuracy and 0.0 <= again.accuracy <= 1.0


@pytest.mark.parametrize("name", METHODS)
def test_resume_ends_where_the_run_ended(name, tmp_path):
    _, _, first = run(name, tmp_path / "run")
    _, _, resumed = run(name, tmp_path / "run", resume=True)
    _same(resumed.prompt, first.prompt)
    with pytest.raises(ConfigError, match="already holds a run"):
        run(name, tmp_path / "run")  # neither --resume nor --overwrite: refused, nothing lost


@pytest.mark.parametrize("name", METHODS)
def test_budget_stops_and_keeps_a_prompt(name, tmp_path):
    try:
        _, _, r = run(name, tmp_path / "run", budget="forward=3")
    except BudgetExceeded:
        pytest.fail(f"{name}: a budget stop must keep the best prompt so far, not raise")
    assert r.cost["forward"] <= 3 + 1  # a limit stops at the first charge past it
    assert load(tmp_path / "run").hash == r.prompt.hash
    # every method that spends in fit stops at the limit and says so; the few whose fit only reads the task spend
    # nothing, so no budget can stop them
    expected = "" if name in NOTHING_TO_FIT else "budget"
    assert r.stopped == r.summary()["stopped"] == expected, (name, r.stopped, r.cost)
    assert (r.cost["forward"] == 0) == (name in NOTHING_TO_FIT), (name, r.cost)


@pytest.mark.parametrize("name", METHODS)
def test_unknown_option_is_refused(name, tmp_path, capsys):
    cls = get_method(name)
    with pytest.raises(ConfigError, match="unknown option"):
        cls.make_config(no_such_option=1)
    code = main(["optimize", "--method", name, "--data", "demo:demo_topics", "--out", str(tmp_path / "r"),
                 "--no-such-option", "3"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--no-such-option" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


@pytest.mark.parametrize("name", METHODS)
def test_config_is_typed_and_documented(name):
    cls = get_method(name)
    for opt in cls.options():
        assert opt["help"], f"{name}: option {opt['name']} has no help"
        assert opt["type"] in ("int", "float", "str", "bool", "list", "dict") or opt["type"].startswith(
            ("list", "dict")), f"{name}: option {opt['name']} has type {opt['type']}"
    assert cls.make_config(**cls.smoke) is not None


def test_spend_survives_resume(tmp_path):
    _, _, first = run("few-shot", tmp_path / "run")
    spent = first.cost["forward"]
    assert spent > 0 and (tmp_path / "run" / "spend.json").exists()
    _, _, resumed = run("few-shot", tmp_path / "run", resume=True)
    # the resumed run redoes the fit (few-shot keeps no checkpoint) and still counts what was spent before
    assert resumed.cost["forward"] == 2 * spent
