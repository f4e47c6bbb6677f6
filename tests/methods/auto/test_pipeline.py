"""Composition `a+b+c`: each stage continues from the artifact of the stage before, a stage not better on dev keeps
its start, finished stages are skipped on resume, and a chain that cannot work is refused before anything loads."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import promptlift
from promptlift.artifacts import Calibrated, SoftPrompt, TextPrompt, load
from promptlift.cli import main
from promptlift.errors import ConfigError
from promptlift.registry import get_method
from fakes import learner, synth_task

pytestmark = pytest.mark.usefixtures("one_thread")

SOFT = dict(epochs=1, tokens=3, batch_size=8)


def test_the_pipeline_hands_each_artifact_to_the_next_stage(tmp_path):
    lm, task = learner(), synth_task()
    r = promptlift.optimize("zero-shot+prompt-tuning+calibrated", lm, task, out=tmp_path / "run", progress=False,
                            **SOFT)
    stages = r.details["pipeline"]["stages"]
    assert [s["name"] for s in stages] == ["zero-shot", "prompt-tuning", "calibrated"]
    first = load(tmp_path / "run" / "stages" / "1-zero-shot")
    second = load(tmp_path / "run" / "stages" / "2-prompt-tuning")
    third = load(tmp_path / "run" / "stages" / "3-calibrated")
    assert second.hash == (second.hash if stages[1]["kept"] == "stage" else first.hash)
    if stages[1]["kept"] == "stage":
        assert isinstance(second, SoftPrompt) and second.instruction == first.instruction
    if stages[2]["kept"] == "stage":  # calibration wraps whatever stage 2 kept
        assert isinstance(third, Calibrated) and third.inner.hash == second.hash
    for s in stages[1:]:  # the one best-on-dev rule (ties: the gold labels' log-probability, then the start)
        assert s["dev"] >= s["start_dev"] if s["kept"] == "stage" else s["dev"] <= s["start_dev"]
    assert r.prompt.type == third.type and [c.hash for c in r.prompt.children()] == [c.hash for c in third.children()]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["pipeline"]["name"] == "zero-shot+prompt-tuning+calibrated"
    assert all(s["dev"] is not None for s in result["pipeline"]["stages"])


def test_soft_vectors_start_from_the_previous_stage_instruction():
    from promptlift.methods.base import RunContext

    lm, task = learner(), synth_task()
    start = TextPrompt(instruction="Is it hot or cold?")
    m = get_method("prompt-tuning")(**SOFT).from_start(start)
    seen = []
    build = m.build
    m.build = lambda lm_, task_, layout, init_ids: seen.append(init_ids) or build(lm_, task_, layout, init_ids)
    p = m.fit(lm, task, RunContext(progress=False, start=start))
    assert seen == [(lm.encode(start.instruction) * 3)[:3]]  # the start's tokens, not the task's "Classify."
    assert p.instruction == start.instruction
    c = get_method("calibrated")().fit(lm, task, RunContext(progress=False, start=p))
    assert isinstance(c, Calibrated) and c.inner.hash == p.hash


def test_a_stage_not_better_on_dev_keeps_its_start(tmp_path):
    lm, task = learner(), synth_task()
    r = promptlift.optimize("zero-shot+zero-shot", lm, task, progress=False)
    s = r.details["pipeline"]["stages"][1]
    assert s["kept"] in ("start", "stage")
    # the same instruction again is not a new prompt: the start is kept, scored once
    assert s["dev"] == r.details["pipeline"]["stages"][0]["dev"]


def test_resume_skips_finished_stages(tmp_path):
    lm, task = learner(), synth_task()
    out = tmp_path / "run"
    first = promptlift.optimize("zero-shot+prompt-tuning", lm, task, out=out, progress=False, **SOFT)
    (out / "result.json").unlink()
    calls = []
    lm2 = learner()
    real_fit = get_method("prompt-tuning").fit

    def counting_fit(self, *a, **k):
        calls.append(1)
        return real_fit(self, *a, **k)

    get_method("prompt-tuning").fit = counting_fit
    try:
        again = promptlift.optimize("zero-shot+prompt-tuning", lm2, task, out=out, progress=False, resume=True, **SOFT)
    finally:
        get_method("prompt-tuning").fit = real_fit
    assert calls == []  # both stages had finished: nothing trained again
    bare = lambda p: dataclasses.replace(p, meta={}).hash  # noqa: E731  (meta: the stages' records differ)
    assert bare(again.prompt) == bare(first.prompt)
    assert all(s["resumed"] for s in again.details["pipeline"]["stages"])


@pytest.mark.parametrize("name,says", [("ape+promt-tuning", "did you mean 'prompt-tuning'"),
                                       ("prompt-tuning+ape", "ape continues from a text prompt"),
                                       ("ape++calibrated", "empty stage name")])
def test_a_bad_pipeline_is_exit_2_before_the_model_loads(name, says, tmp_path, capsys):
    code = main(["optimize", "--method", name, "--model", "no-such-model", "--data", str(tmp_path / "none"),
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert says in capsys.readouterr().err


def test_options_go_to_the_stages_that_have_them():
    cls = get_method("ape+prompt-tuning")
    m = cls(tokens=7, steps=1)
    ape, pt = m.stage_methods()
    assert pt.config.tokens == 7 and ape.config.steps == 1
    with pytest.raises(ConfigError, match="no_such"):
        cls(no_such=1)
