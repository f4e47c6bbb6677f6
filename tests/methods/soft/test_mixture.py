"""Mixtures of soft prompts (soft-mixture, Qin & Eisner 2021) on a tiny random model: the mixture learns, the
weights find the useful member, the one batched pass equals scoring each member alone, artifacts round-trip
bit-exactly, generation decodes with each input's highest-weight member, bad input is refused."""

from __future__ import annotations

import json

import pytest
import torch

import promptlift
from promptlift.artifacts import MixturePrompt, SoftPrompt, TextPrompt, load
from promptlift.engine.apply import applier_for
from promptlift.engine.backends import WhiteBox
from promptlift.engine.evaluate import evaluate, generate_with_prompt
from promptlift.engine.mixture import input_features
from promptlift.engine.train import TrainConfig, train
from promptlift.errors import ArtifactError, ConfigError
from promptlift.methods.soft.mixture import MixtureModule, mixture_loss
from promptlift.task import Example, Task
from promptlift.template import build_layout
from fakes import ctx, learner, make_tiny_lm, synth_task  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_soft_mixture_learns_and_reports_each_member(tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize("soft-mixture", lm, task, out=tmp_path / "run", progress=False, epochs=6, tokens=4,
                              lr=0.1, members=2, inits="Is the review positive or negative?")
    hist = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    epochs = [h for h in hist if "dev_score" in h]
    assert epochs[-1]["loss"] < 0.5 * epochs[0]["loss"], "the mixture's loss must go down"
    assert run.test.accuracy >= 0.8
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    members = result["members"]
    assert [m["init"] for m in members] == [task.instruction, "Is the review positive or negative?"]
    assert all(0 <= m["dev"] <= 1 and 0 <= m["test"] <= 1 for m in members)
    assert sum(m["weight"] for m in members) == pytest.approx(1, abs=1e-3)
    assert isinstance(run.prompt, MixturePrompt) and not run.prompt.gated


def _members(lm, ks=(3, 5), instruction="Classify."):
    g = torch.Generator().manual_seed(0)
    return [SoftPrompt(instruction=instruction, embeds=torch.randn(k, lm.hidden_size, generator=g),
                       hidden_size=lm.hidden_size, num_layers=lm.num_layers) for k in ks]


def test_one_batched_pass_equals_mixing_each_member_scored_alone():
    """Members of different lengths (padded prefixes) and a text member (scored apart): the mixture's label scores
    are log sum_k w_k softmax(member k's scores), each member's scores as `evaluate` gives them."""
    lm, task = learner(), synth_task()
    rows = task.test[:10]
    for members in (_members(lm), [*_members(lm), TextPrompt(instruction="Say it.")]):
        w = torch.tensor([0.3, -0.2, 0.5][: len(members)])
        mixture = MixturePrompt(members=members, weights=w)
        got = evaluate(lm, task, mixture, examples=rows, progress=False).predictions
        alone = torch.stack([torch.tensor([[r["scores"][n] for n in task.label_names] for r in
                                           evaluate(lm, task, m, examples=rows, progress=False).predictions])
                             for m in members], dim=1)  # (N, K, L)
        want = torch.logsumexp(torch.log_softmax(alone, -1) + torch.log_softmax(w, 0)[None, :, None], dim=1)
        assert torch.tensor([[r["scores"][n] for n in task.label_names] for r in got]) == pytest.approx(want, abs=2e-3)


def test_mixture_of_a_useful_and_a_useless_prompt_weights_the_useful_one(tmp_path):
    """Members frozen, weights trained: a prompt trained on the task against vectors that carry nothing (zeros)."""
    lm, task = learner(), synth_task()
    useful = promptlift.optimize("prompt-tuning", lm, task, progress=False, eval_splits=(), epochs=6, tokens=4,
                                 lr=0.1).prompt
    layout = build_layout(lm, useful.instruction, [], task.labels)
    module = MixtureModule(lm, [[0] * 4, [0] * 4], "after_header", useful.instruction, gate=False)
    with torch.no_grad():
        module.embeds[0].copy_(useful.embeds)
        module.embeds[1].zero_()
    module.embeds.requires_grad_(False)
    result = train(module, lm, task, layout, TrainConfig(epochs=4, lr=0.1), ctx(),
                   loss=mixture_loss(module, lm, task, layout))
    w = torch.softmax(result.prompt.weights, 0)
    assert w[0] > 0.8, f"the useful member should get the weight, got {w.tolist()}"
    assert torch.equal(result.prompt.members[0].embeds, useful.embeds)  # members stayed frozen


def test_gated_mixture_round_trips_bit_exactly_and_generates_with_each_inputs_member(tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize("soft-mixture", lm, task, out=tmp_path / "run", progress=False, epochs=2, tokens=3,
                              lr=0.1, gate="input", eval_splits=("dev",))
    p = run.prompt
    assert p.gated and p.gate.shape == (3, lm.hidden_size)
    loaded = load(tmp_path / "run")
    assert type(loaded) is MixturePrompt and loaded.hash == p.hash and loaded.to_dict() == p.to_dict()
    assert sorted(loaded.tensors()) == ["gate", "members.0.embeds", "members.1.embeds", "members.2.embeds", "weights"]
    for name, t in loaded.tensors().items():
        assert torch.equal(t, p.tensors()[name])
    a = evaluate(lm, task, p, split="test", progress=False).predictions
    b = evaluate(lm, task, loaded, split="test", progress=False).predictions
    assert [x["scores"] for x in a] == [x["scores"] for x in b]
    # generation: each input decoded with its highest-weight member
    inputs = list(dict.fromkeys(ex.input for ex in task.test))
    f = input_features(lm, inputs)
    with torch.no_grad():  # a gate that sends the first two inputs to members 0 and 1
        p.gate.copy_(torch.stack([f[0] - f.mean(0), f[1] - f.mean(0), torch.zeros_like(f[0])]) * 100)
    chosen = applier_for(p).chosen(p, WhiteBox(lm), inputs)
    assert len(set(chosen)) > 1, "the gate should send these inputs to different members"
    got = generate_with_prompt(lm, p, inputs, max_tokens=4, task=task)
    assert got == [generate_with_prompt(lm, p.members[k], [x], max_tokens=4, task=task)[0]
                   for x, k in zip(inputs, chosen)]
    # a changed weight is refused
    from safetensors.torch import load_file, save_file

    st = tmp_path / "run" / "prompt.safetensors"
    t = load_file(str(st))
    t["weights"] = t["weights"] + 1
    save_file(t, str(st))
    with pytest.raises(ArtifactError, match="hash"):
        load(tmp_path / "run")


def test_soft_mixture_on_a_generation_task_lowers_its_loss(tmp_path):
    lm = learner()
    pairs = [("hot", "cold"), ("up", "down"), ("big", "small"), ("good", "bad")] * 3
    task = Task(name="ant", kind="generation", train=[Example(a, b) for a, b in pairs], dev=[Example("hot", "cold")],
                instruction="Give the antonym.")
    rows: list = []
    train_ctx = ctx(rows=rows)
    from promptlift.registry import get_method

    m = get_method("soft-mixture")(epochs=3, tokens=2, lr=0.1, members=2)
    p = m.fit(lm, task, train_ctx)
    losses = [r["loss"] for r in rows if "dev_score" in r]
    assert losses[-1] < losses[0] and isinstance(p, MixturePrompt)
    assert applier_for(p).answer_scores(p, WhiteBox(lm), task, ["hot"], ["cold"]).shape == (1,)


def test_bad_mixtures_are_refused(tmp_path):
    lm, task = learner(), synth_task()
    with pytest.raises(ConfigError, match="raise members"):
        promptlift.optimize("soft-mixture", lm, task, progress=False, members=2, inits="A|B")
    with pytest.raises(ConfigError, match="gate"):
        promptlift.optimize("soft-mixture", lm, task, progress=False, gate="output")
    with pytest.raises(ConfigError, match="weights_lr"):
        promptlift.optimize("soft-mixture", lm, task, progress=False, weights_lr=0)
    (tmp_path / "inits.txt").write_text("Is it good?\n\nRate it.\n")
    from promptlift.methods.soft.mixture import init_texts

    assert init_texts(str(tmp_path / "inits.txt")) == ["Is it good?", "Rate it."]
    other = make_tiny_lm(hidden=32)
    mixture = MixturePrompt(members=_members(lm), weights=torch.zeros(2))
    with pytest.raises(ArtifactError, match="hidden size"):
        evaluate(other, task, mixture, split="test", progress=False)
    with pytest.raises(ValueError, match="weights"):
        MixturePrompt(members=_members(lm), weights=torch.zeros(3))
