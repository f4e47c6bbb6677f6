"""prompt_tokens: the positions a prompt puts before each input, text and virtual alike (`Applier.prompt_tokens`)."""

from __future__ import annotations

import pytest
import torch
from fakes import make_tiny_lm, serving, synth_task

from promptlift.artifacts import KnnPrompt, PrefixPrompt, SoftPrompt, TextPrompt, TokenPrompt
from promptlift.engine.apply import TOKEN_SLOT
from promptlift.engine.evaluate import evaluate
from promptlift.template import to_ids
from promptlift.render import render

pytestmark = pytest.mark.usefixtures("one_thread")


def _tokens(lm, task, prompt, limit=8):
    return evaluate(lm, task, prompt, split="dev", limit=limit, progress=False).prompt_tokens


def test_text_prompt_counts_its_instruction_and_demonstrations_exactly(tiny_lm):
    task = synth_task()
    zero, demos2, demos4 = (TextPrompt(instruction=task.instruction, demos=task.train[:n]) for n in (0, 2, 4))
    x = task.dev[0].input
    bare = len(to_ids(tiny_lm, render("", [], x, task.labels)))
    want = len(to_ids(tiny_lm, render(task.instruction, task.train[:4], x, task.labels))) - bare
    r = evaluate(tiny_lm, task, demos4, split="dev", limit=1, progress=False)
    assert r.prompt_tokens == want and r.prompt_tokens_unit == "tokens"
    assert r.to_dict()["prompt_tokens"] == want
    t0, t2, t4 = (_tokens(tiny_lm, task, p) for p in (zero, demos2, demos4))
    assert 0 < t0 < t2 < t4  # N demonstrations cost more than zero-shot, and more of them more
    assert _tokens(tiny_lm, task, TextPrompt(instruction="")) == 0  # the bare input: nothing before it


def test_virtual_tokens_count_as_positions(tiny_lm):
    task = synth_task()
    k, h = 5, tiny_lm.hidden_size
    instr = _tokens(tiny_lm, task, TextPrompt(instruction=task.instruction))
    soft = SoftPrompt(embeds=torch.randn(k, h), instruction=task.instruction, model="", hidden_size=h)
    assert _tokens(tiny_lm, task, soft) == k + instr  # k vectors plus the instruction's tokens
    bare_soft = SoftPrompt(embeds=torch.randn(k, h), model="", hidden_size=h)
    assert _tokens(tiny_lm, task, bare_soft) == k
    layers, kvh, hd = tiny_lm.num_layers, tiny_lm.num_kv_heads, tiny_lm.head_dim
    prefix = PrefixPrompt(keys=torch.randn(layers, kvh, 3, hd), values=torch.randn(layers, kvh, 3, hd), model="")
    assert _tokens(tiny_lm, task, prefix) == 3
    ids = tiny_lm.encode(" one two three four")
    # the ids take an instruction's place: they and the instruction's separator from the input
    sep = _tokens(tiny_lm, task, TextPrompt(instruction=TOKEN_SLOT)) - len(tiny_lm.encode(TOKEN_SLOT))
    assert sep >= 0
    assert _tokens(tiny_lm, task, TokenPrompt(ids=ids, text="one two three four", model=tiny_lm.model_id)) == len(ids) + sep


def test_knn_prompt_averages_its_per_input_demonstrations(tiny_lm):
    task = synth_task()
    knn = KnnPrompt(instruction=task.instruction, pool=task.train, k=2, embedder="tfidf")
    fixed = TextPrompt(instruction=task.instruction, demos=task.train[:2])
    zero = _tokens(tiny_lm, task, TextPrompt(instruction=task.instruction))
    assert _tokens(tiny_lm, task, knn) > zero
    assert abs(_tokens(tiny_lm, task, knn) - _tokens(tiny_lm, task, fixed)) < 10  # two short demonstrations each


def test_endpoint_estimates_from_characters_and_says_so():
    from promptlift.lm.cache import CallCache
    from promptlift.lm.openai import OpenAIModel

    lm, task = make_tiny_lm(), synth_task()
    with serving(lm) as up:
        ep = OpenAIModel("tiny", base_url=up.base_url, cache=CallCache(enabled=False))
        zero = evaluate(ep, task, TextPrompt(instruction=task.instruction), split="dev", limit=2, progress=False)
        shots = evaluate(ep, task, TextPrompt(instruction=task.instruction, demos=task.train[:4]), split="dev",
                         limit=2, progress=False)
    assert zero.prompt_tokens_unit.startswith("estimated tokens (characters")
    want = (len(task.instruction) + 2 + sum(len(d.input) + len(task.labels[d.output]) for d in task.train[:4])) / 4
    assert shots.prompt_tokens == pytest.approx(want, abs=0.01)
    assert 0 < zero.prompt_tokens < shots.prompt_tokens


def test_a_mixture_counts_every_member_it_runs(tiny_lm):
    from promptlift.artifacts import MixturePrompt

    task, h = synth_task(), tiny_lm.hidden_size
    a = SoftPrompt(embeds=torch.randn(2, h), model="", hidden_size=h)
    b = SoftPrompt(embeds=torch.randn(3, h), model="", hidden_size=h)
    mixture = MixturePrompt(members=[a, b], weights=torch.zeros(2), model="")
    assert _tokens(tiny_lm, task, mixture) == 5


def test_result_json_reports_prompt_tokens_of_dev_test_and_the_baseline(tiny_lm, tmp_path):
    import json

    import promptlift

    task = synth_task()
    promptlift.optimize("few-shot", tiny_lm, task, out=tmp_path / "run", progress=False, shots=2)
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    zero = _tokens(tiny_lm, task, TextPrompt(instruction=task.instruction))
    assert res["gain"]["baseline_prompt_tokens"] == zero
    assert res["dev"]["prompt_tokens"] > zero and res["test"]["prompt_tokens"] > zero
    assert res["test"]["prompt_tokens_unit"] == "tokens"
