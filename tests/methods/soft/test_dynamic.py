"""Dynamic prompting (Yang et al. 2023) on a tiny random model: a pool of prompts of different lengths, one picked
per input (hard Gumbel-softmax in training, argmax at inference); the gate learns to pick the useful prompt."""

from __future__ import annotations

import pytest
import torch

import promptlift
from promptlift.artifacts import MixturePrompt, load
from promptlift.engine.apply import applier_for
from promptlift.engine.backends import WhiteBox
from promptlift.engine.evaluate import evaluate
from promptlift.engine.train import TrainConfig, train
from promptlift.errors import ConfigError
from promptlift.methods.soft.dynamic import DynamicModule
from promptlift.methods.soft.mixture import mixture_loss
from promptlift.template import build_layout
from fakes import ctx, learner, synth_task  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dynamic_prompting_learns_and_answers_with_each_inputs_prompt(tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize("dynamic-prompting", lm, task, out=tmp_path / "run", progress=False, epochs=6,
                              tokens=8, lr=0.1)
    p = run.prompt
    assert isinstance(p, MixturePrompt) and p.choose == "argmax" and p.gated
    assert [m.embeds.shape[0] for m in p.members] == [2, 4, 8]
    assert run.test.accuracy >= 0.8
    assert sum(m["weight"] for m in run.details["members"]) == pytest.approx(1)  # share of inputs each prompt gets
    loaded = load(tmp_path / "run")
    assert loaded.hash == p.hash and loaded.choose == "argmax"
    # argmax: each input is answered by its chosen prompt alone
    rows = task.test[:12]
    chosen = applier_for(p).chosen(p, WhiteBox(lm), [ex.input for ex in rows])
    got = evaluate(lm, task, p, examples=rows, progress=False).predictions
    for r, ex, k in zip(got, rows, chosen):
        alone = evaluate(lm, task, p.members[k], examples=[ex], progress=False).predictions[0]
        s = torch.log_softmax(torch.tensor([alone["scores"][n] for n in task.label_names]), 0)
        assert [r["scores"][n] for n in task.label_names] == pytest.approx(s.tolist(), abs=2e-3)


def test_gumbel_gate_learns_to_pick_the_useful_prompt():
    lm, task = learner(), synth_task()
    useful = promptlift.optimize("prompt-tuning", lm, task, progress=False, eval_splits=(), epochs=6, tokens=4,
                                 lr=0.1).prompt
    layout = build_layout(lm, useful.instruction, [], task.labels)
    module = DynamicModule(lm, [[0] * 4, [0] * 2], "after_header", useful.instruction, True)
    with torch.no_grad():
        module.embeds[0].copy_(useful.embeds)
        module.embeds[1].zero_()
    module.embeds.requires_grad_(False)
    torch.manual_seed(0)
    p = train(module, lm, task, layout, TrainConfig(epochs=4, lr=0.1), ctx(),
              loss=mixture_loss(module, lm, task, layout)).prompt
    chosen = applier_for(p).chosen(p, WhiteBox(lm), [ex.input for ex in task.test])
    assert sum(c == 0 for c in chosen) / len(chosen) > 0.8, chosen


def test_bad_lengths_are_refused():
    with pytest.raises(ConfigError, match="lengths"):
        promptlift.optimize("dynamic-prompting", learner(), synth_task(), progress=False, lengths="4,x")
