"""ABO: a step-by-step prompt with a demonstration per step, refined only at the step the target did not follow.

The optimizer is a `ScriptedLM` answering each meta-prompt by its fixed prefix; the target a `RuleTarget`
whose answers follow a rule on the instruction, so which rewrite the target "follows" is known exactly.
"""

from __future__ import annotations

import json

import pytest

from fakes import make_tiny_lm
from promptlift.methods.llm.abo import render_plan, step_number
from promptlift.methods.llm.common import meta_prompt
from promptlift.registry import get_method
from promptlift.task import Task
from fakes import RuleTarget, ScriptedLM, ctx, make_tiny_lm, sentiment_rule, toy_task  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

PLAN = ["Read the text.", "Find the opinion words.", "Answer with a label."]


def scripted(locate: str = " 2.", rewrite: str = "Judge the sentiment of the opinion words."):
    """An optimizer that writes PLAN one step per request, one demonstration per step, names step `locate` as
    the failing one and rewrites it as `rewrite`."""

    def reply(text: str, seed: int, j: int) -> str:
        if text.endswith('Next step: "'):
            done = text.split("Steps written so far:")[-1].count("Step ")
            return PLAN[min(done, len(PLAN) - 1)] + '"'
        if text.endswith('What the helper finds: "'):
            step = text.split("Take this step: ")[1].split("\n")[0]
            return f'Here we {step.lower()}"'
        if text.endswith("is step"):
            return locate
        if text.endswith('Rewritten step: "'):
            return rewrite + '"'
        return "???"

    return ScriptedLM(reply)


def run(tmp_path, optimizer, target=None, task=None, **options):
    cls = get_method("abo")
    # from the instruction alone (the auto start with demonstrations is tested in test_llm_methods)
    m = cls(**{"steps": 3, "decompositions": 1, "proposals": 1, "minibatch": 4, "tries": 2, "start": "zero-shot",
               **options})
    return m.fit(target or RuleTarget(sentiment_rule), task or toy_task(), ctx(tmp_path, optimizer=optimizer))


def checkpoint(path) -> dict:
    return json.loads((path / "checkpoint" / "search.json").read_text())


def test_plans_render_as_numbered_steps_with_demonstrations():
    text = render_plan("Classify.", [["Read it.", "In 'a good film': read."], ["Answer.", ""]])
    assert text == "Classify.\n\nStep 1: Read it.\nExample: In 'a good film': read.\nStep 2: Answer."
    assert render_plan("", [["Read it.", ""]]) == "Step 1: Read it."
    assert [step_number(a, 3) for a in (" 2.", "3", " two", "Step 1", " 4", "the last one", "")] == [1, 2, 1, 0, None,
                                                                                               None, None]
    for name in ("abo_step", "abo_demo", "abo_locate", "abo_rewrite"):
        t = meta_prompt(name)
        assert t.prefix and "{" not in t.prefix and t.body


def test_plan_then_rewrite_only_the_step_the_target_did_not_follow(tmp_path):
    opt = scripted(locate=" 3.", rewrite="Name the sentiment: positive or negative.")
    p = run(tmp_path, opt)
    assert p.meta["search"]["best_dev"] == 1.0 and p.meta["search"]["origin"] == "step3"
    assert p.instruction == ("Classify the input. Answer with one of: negative, positive.\n\n"
                             "Step 1: Read the text.\nExample: Here we read the text.\n"
                             "Step 2: Find the opinion words.\nExample: Here we find the opinion words.\n"
                             "Step 3: Name the sentiment: positive or negative.\n"
                             "Example: Here we name the sentiment: positive or negative.")
    # the optimizer was shown the target's wrong answer and asked which step failed; only that step was rewritten
    locate = [r for r in opt.requests if r.endswith("is step")]
    assert len(locate) == 1 and "Helper's answer: negative\nCorrect answer: positive" in locate[0]
    rewrite = [r for r in opt.requests if r.endswith('Rewritten step: "')]
    assert len(rewrite) == 1 and "It went wrong at this step: Answer with a label." in rewrite[0]
    # the new demonstration is on the failing example, with its correct output
    demo = [r for r in opt.requests if "Take this step: Name the sentiment" in r]
    assert len(demo) == 1 and "Correct output: positive" in demo[0] and "Input: a good" in demo[0]
    d = checkpoint(tmp_path)["data"]
    assert d["located"]["step"] == 2 and d["located"]["input"].startswith("a good")
    assert [s for s, _ in d["plans"][list(d["plans"])[-1]]["plan"]] == PLAN[:2] + [
        "Name the sentiment: positive or negative."]


def test_a_rewrite_the_target_does_not_follow_is_not_kept(tmp_path):
    opt = scripted(rewrite="Write a poem about the text.")
    p = run(tmp_path, opt)
    s = p.meta["search"]
    assert s["best_dev"] == 0.5 and s["skipped"].get("no-minibatch-gain", 0) >= 1
    assert "Step" not in p.instruction  # the plan ties the start (0.5): the earlier candidate wins
    d = checkpoint(tmp_path)
    assert all(c["origin"] in ("initial", "plan") for c in d["candidates"])  # the rewrite was never a candidate
    assert len(d["data"]["plans"]) == 1


def all_positive_rule(instruction: str, text: str) -> str:
    """Says 'positive' to everything when told to; otherwise reads the sentiment only when told to."""
    if "always positive" in instruction.lower():
        return "positive"
    return sentiment_rule(instruction, text)


def skewed_task() -> Task:
    """Mostly negative training examples: answering 'positive' to all fixes one and breaks more."""
    words = ["film", "plot", "cast", "music", "story", "end", "start", "acting", "score", "pace", "script", "set"]
    train = [{"text": f"a bad {w}", "label": "negative"} for w in words[:6]] + [{"text": "a good film",
                                                                                 "label": "positive"}]
    dev = [{"text": f"a {q} {w}", "label": "positive" if q == "good" else "negative"}
           for w in words[6:10] for q in ("good", "bad")]
    return Task.from_rows({"train": train, "dev": dev, "test": dev}, name="skewed",
                          labels={"negative": "negative", "positive": "positive"})


def test_a_rewrite_that_fixes_the_example_but_lowers_the_minibatch_score_is_not_kept(tmp_path):
    opt = scripted(rewrite="Always positive, whatever the text says.")
    p = run(tmp_path, opt, target=RuleTarget(all_positive_rule), task=skewed_task(), minibatch=7)
    assert p.meta["search"]["skipped"].get("no-minibatch-gain", 0) >= 1
    assert "always positive" not in p.instruction.lower() and p.meta["search"]["best_dev"] == 0.5
    assert len([r for r in opt.requests if r.endswith('Rewritten step: "')]) >= 1


def test_an_answer_that_names_no_step_is_skipped_before_any_rewrite(tmp_path):
    opt = scripted(locate=" the last one")
    p = run(tmp_path, opt, steps=2)
    assert p.meta["search"]["skipped"].get("unusable", 0) == 1
    assert not [r for r in opt.requests if r.endswith('Rewritten step: "')]
    assert checkpoint(tmp_path)["data"]["located"]["step"] is None


def test_unusable_plans_are_counted_and_the_start_is_kept():
    p = run(None, ScriptedLM(["", "Output:", "!!"]), steps=2)
    assert p.meta["search"]["best_dev"] == 0.5 and p.meta["search"]["skipped"]["empty"] >= 1
    assert p.meta["search"]["candidates"] == 1


def test_tiny_local_model_as_target_and_proposer(capsys):
    """The white-box path end to end: the tiny model writes the plan and is scored by the engine; the spend stays
    within the printed estimate."""
    import re

    lm = make_tiny_lm()
    cls = get_method("abo")
    p = cls(**cls.smoke).fit(lm, toy_task(), ctx())
    err = capsys.readouterr().err
    est = re.search(r"about (\d+) target calls \+ (\d+) optimizer calls", err)
    cost = p.meta["cost"]
    assert cost["optimizer_calls"] >= 1 and cost["target_calls"] >= 8
    assert cost["target_calls"] <= int(est.group(1)) and cost["optimizer_calls"] <= int(est.group(2))
    assert p.meta["search"]["best_dev"] is not None
