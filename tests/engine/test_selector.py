"""The prompt selector: routing between tasks, per-input choice within a task, bit-exact files, answers equal to
its chosen members' (engine and proxy), and the `select` verb's one-line errors."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from fakes import make_tiny_lm, synth_task
from promptlift.artifacts import SelectorPrompt, SoftPrompt, TextPrompt, load
from promptlift.cli import main
from promptlift.engine.apply import applier_for
from promptlift.engine.backends import WhiteBox
from promptlift.engine.evaluate import evaluate, generate_with_prompt
from promptlift.selector import Member, select_across, select_within
from promptlift.task import Example, Task

pytestmark = pytest.mark.usefixtures("one_thread")

ANIMALS = ["cat", "dog", "horse", "tiger", "rabbit", "wolf", "eagle", "shark", "whale", "lion"]
WEATHER = ["rain", "snow", "sunny", "cloudy", "storm", "wind", "fog", "thunder", "frost", "drizzle"]
FILLER = ["the", "a", "is", "today", "very", "and", "it", "was"]


def synth(name: str, vocab: list[str], labels: dict, seed: int) -> Task:
    """A task whose inputs mix its own words with filler words shared by every task."""
    rng = random.Random(seed)

    def rows(n):
        out = []
        for i in range(n):
            words = rng.sample(vocab, 2) + rng.sample(FILLER, 3)
            rng.shuffle(words)
            out.append(Example(" ".join(words), list(labels)[i % len(labels)]))
        return out

    return Task(name=name, kind="classification", train=rows(40), dev=rows(20), test=rows(60), labels=labels,
                instruction=f"Classify the {name} sentence.")


def two_tasks():
    a = synth("animals", ANIMALS, {"wild": "wild", "pet": "pet"}, 0)
    b = synth("weather", WEATHER, {"warm": "warm", "cold": "cold"}, 1)
    return a, b


def cross_selector():
    a, b = two_tasks()
    members = [Member(TextPrompt(instruction=t.instruction).made_for(t), t.name, t) for t in (a, b)]
    p, result = select_across(members, features="tfidf", backend=None, seed=0, limit=None, model=None)
    return p, result, a, b


def test_selector_routes_held_back_inputs_of_two_tasks_to_their_member():
    p, result, a, b = cross_selector()
    assert result["test"]["routing_accuracy"]["accuracy"] >= 0.95
    # the applier (what eval, generate and serve run) makes the same choice on the held-back rows
    inputs = [ex.input for ex in a.test + b.test]
    chosen = applier_for(p).chosen(p, None, inputs)
    truth = [0] * len(a.test) + [1] * len(b.test)
    assert sum(c == t for c, t in zip(chosen, truth)) / len(truth) >= 0.95
    assert p.label_task() is None and p.text_only  # members of two label sets; tfidf over text: any endpoint


def test_selector_save_load_is_bit_exact(tmp_path, ):
    p, *_ = cross_selector()
    lm = make_tiny_lm()
    g = torch.Generator().manual_seed(0)
    soft = SoftPrompt(instruction="Say.", embeds=torch.randn(3, lm.hidden_size, generator=g),
                      hidden_size=lm.hidden_size, num_layers=lm.num_layers, model=lm.model_id)
    p.members = [p.members[0], soft]
    p.save(tmp_path / "sel")
    back = load(tmp_path / "sel")
    assert isinstance(back, SelectorPrompt) and back.hash == p.hash and back.vocab == p.vocab
    for name, t in p.tensors().items():
        u = back.tensors()[name]
        assert u.dtype == t.dtype and torch.equal(u, t), name
    assert back.children()[1].embeds.equal(soft.embeds)


@pytest.fixture(scope="module")
def within():
    """A selector within one task between three prompts of different kinds, on the tiny model's embeddings."""
    lm = make_tiny_lm(seed=1, init_range=0.5)
    task = synth_task()
    g = torch.Generator().manual_seed(3)
    members = [TextPrompt(instruction="Classify."), TextPrompt(instruction="Sentiment?", demos=task.train[:2]),
               SoftPrompt(instruction="Classify.", embeds=torch.randn(2, lm.hidden_size, generator=g),
                          hidden_size=lm.hidden_size, num_layers=lm.num_layers, model=lm.model_id)]
    members = [Member(m.made_for(task), f"m{i}") for i, m in enumerate(members)]
    p, result = select_within(members, task, lm, features="model", backend=WhiteBox(lm), seed=0, limit=None,
                              model=lm.model_id)
    # the same pool behind a classifier that varies its choice with the input, for the equality checks
    g = torch.Generator().manual_seed(0)
    varied = dataclasses.replace(p, w1=torch.zeros(0, 0), b1=torch.zeros(0), b2=torch.zeros(3),
                                 w2=torch.randn(3, p.dim, generator=g))
    return lm, task, p, result, varied


def test_eval_through_the_selector_equals_eval_through_its_chosen_members(within):
    lm, task, trained, result, p = within
    test = result["test"]
    assert test["n"] == len(task.test) and 0 <= test["accuracy"] <= test["oracle"]
    assert test["members"] == [evaluate(lm, task, m, split="test", progress=False).accuracy for m in trained.members]
    # the result's number is eval's through the trained selector
    assert evaluate(lm, task, trained, split="test", progress=False).accuracy == pytest.approx(test["accuracy"])
    through = evaluate(lm, task, p, split="test", progress=False)
    chosen = applier_for(p).chosen(p, WhiteBox(lm), [ex.input for ex in task.test])
    assert len(set(chosen)) > 1  # a per-input choice, not one member for all
    want = [None] * len(task.test)
    for k in set(chosen):
        idx = [i for i, c in enumerate(chosen) if c == k]
        alone = evaluate(lm, task, p.members[k], examples=[task.test[i] for i in idx], progress=False).predictions
        for i, r in zip(idx, alone):
            want[i] = r
    assert [r["pred"] for r in through.predictions] == [r["pred"] for r in want]
    for got, w in zip(through.predictions, want):
        assert got["scores"] == pytest.approx(w["scores"], abs=1e-4)


def _proxy(tmp_path, lm, p, **route):
    from promptlift.serve.app import build_app
    from promptlift.serve.config import parse_config
    from promptlift.serve.routes import Resources
    from promptlift.serve.server import ServerThread
    import openai

    p.save(tmp_path / "sel")
    cfg = parse_config({"routes": [{"name": "sel", "upstream": f"local:{lm.model_id}", "prompt": str(tmp_path / "sel"),
                                    "sha256": p.hash, **route}], "limits": {"batch_window_ms": 20}})
    srv = ServerThread(build_app(cfg, resources=Resources(lms={lm.model_id: lm}), log_line=lambda d: None)).start()
    return srv, openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)


def test_served_selector_answers_as_eval_and_names_the_chosen_member(tmp_path, within):
    from concurrent.futures import ThreadPoolExecutor

    lm, task, _, _, p = within
    rows = task.test[:12]
    want = evaluate(lm, task, p, examples=rows, progress=False).predictions
    chosen = applier_for(p).chosen(p, WhiteBox(lm), [ex.input for ex in rows])
    srv, client = _proxy(tmp_path, lm, p)
    try:
        def ask(x):
            return client.chat.completions.with_raw_response.create(
                model="sel", messages=[{"role": "user", "content": x}], max_tokens=4)

        with ThreadPoolExecutor(6) as pool:  # concurrent: one batch, requests of several members mixed
            raws = list(pool.map(ask, [ex.input for ex in rows]))
        assert [r.parse().choices[0].message.content for r in raws] == [task.labels[r["pred"]] for r in want]
        assert [r.headers["x-promptlift-prompt"] for r in raws] == [p.members[k].hash for k in chosen]
        assert {r.headers["x-promptlift-prompt-name"] for r in raws} == {"default"}
    finally:
        srv.stop()


def test_served_cross_task_selector_generates_with_the_chosen_members_label_words(tmp_path):
    p, _, a, b = cross_selector()
    lm = make_tiny_lm(seed=1, init_range=0.5)
    p.members = [TextPrompt(instruction=t.instruction, demos=t.train[:2]).made_for(t) for t in (a, b)]
    srv, client = _proxy(tmp_path, lm, p)
    try:
        for ex, k in ((a.test[0], 0), (b.test[0], 1)):
            raw = client.chat.completions.with_raw_response.create(
                model="sel", messages=[{"role": "user", "content": ex.input}], max_tokens=4)
            m = p.members[k]
            assert raw.headers["x-promptlift-prompt"] == m.hash
            assert raw.parse().choices[0].message.content == generate_with_prompt(
                lm, m, [ex.input], max_tokens=4, task=m.label_task())[0]
            assert generate_with_prompt(lm, p, [ex.input], max_tokens=4)[0] == raw.parse().choices[0].message.content
    finally:
        srv.stop()


def _data_dir(path, task: Task, splits=("train", "dev", "test")):
    path.mkdir(parents=True)
    for s in splits:
        with open(path / f"{s}.jsonl", "w") as f:
            for ex in getattr(task, s):
                f.write(json.dumps({"text": ex.input, "label": ex.output}) + "\n")
    return path


def _run_dir(path, prompt, data):
    path.mkdir(parents=True)
    prompt.save(path)
    (path / "config.json").write_text(json.dumps({"method": "manual", "data": str(data), "model": "smollm2-135m"}))
    return path


def test_select_verb_across_tasks_writes_a_run_that_eval_takes(tmp_path, tiny_dir, capsys):
    a, b = two_tasks()
    runs = [_run_dir(tmp_path / f"run-{t.name}", TextPrompt(instruction=t.instruction).made_for(t),
                     _data_dir(tmp_path / t.name, t)) for t in (a, b)]
    out = tmp_path / "sel"
    assert main(["select", "--pool", *map(str, runs), "--out", str(out), "--json"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["test"]["routing_accuracy"]["accuracy"] >= 0.95 and len(result["members"]) == 2
    assert isinstance(load(out), SelectorPrompt)
    capsys.readouterr()
    assert main(["eval", "--prompt", str(out), "--data", str(tmp_path / "animals"), "--model", str(tiny_dir),
                 "--limit", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 4


def test_select_verb_refuses_bad_pools_in_one_line(tmp_path, tiny_dir, capsys):
    a, b = two_tasks()
    good = _run_dir(tmp_path / "good", TextPrompt().made_for(a), _data_dir(tmp_path / "a", a))
    no_train = _run_dir(tmp_path / "no-train", TextPrompt().made_for(b), _data_dir(tmp_path / "b", b, ("dev", "test")))
    foreign = tmp_path / "foreign"
    SoftPrompt(instruction="x", embeds=torch.zeros(2, 8), hidden_size=8, num_layers=2,
               model="other-model@sha256:0123456789abcdef").save(foreign)
    cases = [([], "needs a pool"),
             (["--pool", str(tmp_path / "missing")], "pool run not found"),
             (["--pool", str(good), str(no_train)], "has no training rows"),
             (["--pool", str(good), str(foreign), "--model", str(tiny_dir)], "made for model 'other-model"),
             (["--pool", str(good), "--features", "words"], "--features must be")]
    for args, message in cases:
        capsys.readouterr()
        assert main(["select", *args, "--out", str(tmp_path / "sel")]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sel").exists()  # refused before anything was written
