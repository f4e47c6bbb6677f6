"""`probe`: a short token prompt that makes the model emit a target string. On a tiny random model the
search must raise the target's log-likelihood over the prompt it starts from, make greedy decoding emit a
one-token target, report both in meta honestly, and end a resumed run where an uninterrupted one ends."""

from __future__ import annotations

import pytest

import promptlift
from promptlift.artifacts import TokenPrompt, load
from promptlift.engine.evaluate import generate_with_prompt
from promptlift.methods.hard.probe import ProbeSearch, default_target
from promptlift.registry import get_method
from fakes import learner, synth_task  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

# "the" is one token of the test tokenizer; 4 tokens and 25 swap steps reach it on the learner
LEARNABLE = {"target": "the", "tokens": 4, "steps": 25, "candidates": 16}


def probe(lm, task, **kw):
    return promptlift.optimize("probe", lm, task, progress=False, eval_splits=(), **kw)


def test_probe_makes_greedy_decoding_emit_the_target(tmp_path):
    lm, task = learner(), synth_task()
    run = probe(lm, task, out=tmp_path / "run", **LEARNABLE)
    p, m = run.prompt, run.prompt.meta
    assert isinstance(p, TokenPrompt) and p.model == lm.model_id
    assert m["target"] == "the" and m["inputs"] == [task.train[0].input]
    assert m["target_logprob_after"] > m["target_logprob_before"] + 3  # measured: -8.7 -> -1.9
    assert m["emits_before"] == 0.0 and m["emits_after"] == 1.0
    assert m["search"]["stopped"] == "target emitted" and m["search"]["steps"] < LEARNABLE["steps"]
    # the claim holds outside the method: the saved artifact, decoded greedily as in serving
    loaded = load(tmp_path / "run")
    again = ProbeSearch("probe", get_method("probe").make_config(**LEARNABLE), lm, task, 0)
    out = generate_with_prompt(lm, loaded, [task.train[0].input], max_tokens=len(again.answer) + 4, task=again.task)
    assert out == m["greedy_after"] and out[0].startswith("the")
    start = again.prompt(again.start)
    assert float(again.logprobs(start)[0]) == pytest.approx(m["target_logprob_before"], abs=1e-4)
    assert float(again.logprobs(loaded)[0]) == pytest.approx(m["target_logprob_after"], abs=1e-4)
    assert loaded.ids[: LEARNABLE["tokens"]] != start.ids[: LEARNABLE["tokens"]]


def test_probe_raises_a_multi_token_target_over_several_inputs():
    lm, task = learner(), synth_task()
    m = probe(lm, task, target="hot", inputs=3, tokens=4, steps=6, candidates=8).prompt.meta
    assert len(m["inputs"]) == 3 and len(m["greedy_after"]) == 3
    assert m["target_logprob_after"] > m["target_logprob_before"] + 2
    assert m["cost"]["target_calls"] > 0


def test_default_target_is_the_first_training_answer():
    task = synth_task()
    assert default_target(task) == task.labels[task.train[0].output]
    lm = learner()
    m = probe(lm, task, tokens=2, steps=0).prompt.meta
    assert m["target"] == default_target(task) and m["target_logprob_after"] == m["target_logprob_before"]


def test_probe_resumed_after_a_budget_stop_ends_as_an_uninterrupted_run(tmp_path):
    opts = {"target": "hot", "tokens": 3, "steps": 5, "candidates": 6}
    full = probe(learner(), synth_task(), out=tmp_path / "full", **opts)
    cut = probe(learner(), synth_task(), out=tmp_path / "cut", budget="forward=40", **opts)
    assert cut.stopped == "budget" and cut.prompt.meta["search"]["steps"] < 5
    resumed = probe(learner(), synth_task(), out=tmp_path / "cut", resume=True, **opts)
    assert resumed.prompt.meta["search"]["steps"] == full.prompt.meta["search"]["steps"]
    assert resumed.prompt.ids == full.prompt.ids
    for k in ("target_logprob_before", "target_logprob_after", "greedy_after"):
        assert resumed.prompt.meta[k] == full.prompt.meta[k]
