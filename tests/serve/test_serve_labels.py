"""A served classifier answers with its class: through the real `openai` client, the proxy's answers are `eval`'s
predictions row for row, for a trained soft prompt and a text prompt with demonstrations, on the local upstream and
on an endpoint upstream; artifacts carry their label words, so `serve --prompt RUN` and `generate --prompt RUN`
render demonstrations as `eval` does."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch

import promptlift
from promptlift.artifacts import SoftPrompt, TextPrompt, load
from promptlift.engine.apply import applier_for
from promptlift.engine.backends import WhiteBox
from promptlift.engine.evaluate import evaluate, generate_with_prompt
from promptlift.errors import ConfigError
from promptlift.lm.cache import CallCache
from promptlift.lm.openai import OpenAIModel
from promptlift.serve.apply import chat_messages
from promptlift.serve.app import build_app
from promptlift.serve.config import parse_config, single_route_config
from promptlift.serve.routes import Resources, build_snapshot
from promptlift.serve.server import ServerThread
from promptlift.task import Example
from fakes import FakeVllm, learner, make_tiny_lm, serving, synth_task  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
ROWS = 24


class Proxy:
    """The proxy on 127.0.0.1 and a real `openai` client of it."""

    def __init__(self, cfg, lm):
        self.res = Resources(lms={lm.model_id: lm})
        self.srv = ServerThread(build_app(cfg, resources=self.res, log_line=lambda d: None)).start()
        self.client = openai.OpenAI(base_url=self.srv.url + "/v1", api_key="none", max_retries=0, timeout=60)

    def ask(self, route: str, text: str, **kw):
        return self.client.chat.completions.create(model=route, messages=[{"role": "user", "content": text}],
                                                   max_tokens=5, temperature=0, **kw)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.srv.stop()


def route(name: str, run, upstream: str, **extra) -> dict:
    return {"name": name, "upstream": upstream, "prompt": str(run), "sha256": load(run).hash, **extra}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A soft prompt (prompt tuning) and a text prompt with demonstrations (few-shot), made by `optimize`."""
    lm, task = learner(), synth_task()
    root = tmp_path_factory.mktemp("runs")
    promptlift.optimize("prompt-tuning", lm, task, out=root / "soft", progress=False, eval_splits=(), epochs=6,
                        tokens=4, lr=0.1)
    promptlift.optimize("few-shot", lm, task, out=root / "fs", progress=False, eval_splits=(), shots=2)
    return lm, task, root / "soft", root / "fs"


def test_artifacts_carry_their_label_words(trained, tmp_path):
    lm, task, soft_run, fs_run = trained
    for run in (soft_run, fs_run):
        p = load(run)
        assert p.labels == task.labels and p.task_kind == "classification"
        assert p.label_task().labels == task.labels
    fs = load(fs_run)
    assert fs.demos  # its demonstrations answer with the words ("hot"), as eval renders them, not the keys
    msgs = chat_messages(fs, [{"role": "user", "content": "the movie was good"}], fs.label_task())
    shown = " ".join(m["content"] for m in msgs if m["role"] == "assistant")
    assert set(shown.split()) <= set(task.labels.values())
    # an artifact saved before labels were stored loads, keeps its hash and carries none
    old = TextPrompt(instruction="Classify.", demos=[Example("good", "positive")])
    old.save(tmp_path / "old")
    saved = json.loads((tmp_path / "old" / "prompt.json").read_text())
    assert "labels" not in saved and "task_kind" not in saved
    back = load(tmp_path / "old")
    assert back.hash == old.hash and back.labels == {} and back.label_task() is None
    generated = TextPrompt(instruction="Translate.").made_for(promptlift.Task(
        name="g", kind="generation", train=[Example("a", "b")]))
    assert generated.task_kind == "generation" and generated.label_task() is None


def test_served_classifier_answers_are_eval_predictions_locally(trained):
    lm, task, soft_run, fs_run = trained
    rows = task.test[:ROWS]
    cfg = parse_config({"routes": [route("soft", soft_run, "local"), route("fs", fs_run, "local"),
                                   route("soft-gen", soft_run, "local", answer="generate")],
                        "limits": {"batch_window_ms": 20}})
    with Proxy(cfg, lm) as px:
        for name, run in (("soft", soft_run), ("fs", fs_run)):
            want = evaluate(lm, task, load(run), examples=rows, progress=False).predictions
            got = [px.ask(name, ex.input).choices[0].message.content for ex in rows]
            assert got == [task.labels[r["pred"]] for r in want], name
            if name == "soft":  # trained: it tells the classes apart (the few-shot prompt on this model does not)
                assert len(set(got)) == 2
            out = px.ask(name, rows[0].input, logprobs=True)
            top = {t.token: t.logprob for t in out.choices[0].logprobs.content[0].top_logprobs}
            assert top == pytest.approx({task.labels[k]: v for k, v in want[0]["scores"].items()}, abs=1e-3)
            assert out.choices[0].logprobs.content[0].token == out.choices[0].message.content
        # free generation stays available per route: it is what the engine generates with the label words
        soft = load(soft_run)
        x = rows[0].input
        assert px.ask("soft-gen", x).choices[0].message.content == generate_with_prompt(
            lm, soft, [x], max_tokens=5, task=task)[0]
        # completions and streams answer the label too
        c = px.client.completions.create(model="fs", prompt=[ex.input for ex in rows[:3]], max_tokens=5)
        want = evaluate(lm, task, load(fs_run), examples=rows[:3], progress=False).predictions
        assert [ch.text for ch in c.choices] == [task.labels[r["pred"]] for r in want]
        stream = px.client.chat.completions.create(model="fs", messages=[{"role": "user", "content": rows[0].input}],
                                                   max_tokens=5, stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == task.labels[want[0]["pred"]]


@pytest.mark.parametrize("logprobs,guided,strict", [(True, None, False), (False, None, False),
                                                     (False, "guided_choice", False), (False, None, True)])
def test_served_classifier_answers_are_eval_predictions_on_an_endpoint(trained, tmp_path, logprobs, guided, strict):
    """A text prompt on an OpenAI-compatible upstream: first-token logprob ranking where it gives log-probabilities,
    else a short answer constrained to the label words where the upstream has guided choice (an older vLLM that
    ignores `structured_outputs` but honours `guided_choice`), else matched to them (a server that ignores both,
    or one that refuses them like OpenAI) — in every case what `eval --model openai:...` predicts."""
    _, task, _, fs_run = trained
    lm = make_tiny_lm(seed=1, init_range=0.5)
    rows = task.test[:ROWS]
    p = load(fs_run)
    with serving(lm, logprobs=logprobs, guided=guided, strict=strict) as up:
        ep = OpenAIModel("tiny", base_url=up.base_url, cache=CallCache(enabled=False), retry_backoff=0.01)
        want = evaluate(ep, task, p, examples=rows, progress=False)
        assert want.scoring == ("logprobs" if logprobs else "generate")
        cfg = parse_config({"routes": [route("fs", fs_run, up.base_url, upstream_model="tiny")]})
        with Proxy(cfg, lm) as px:
            got = [px.ask("fs", ex.input).choices[0].message.content for ex in rows]
        sent = [r for r in up.requests if r.get("messages")][-1]["messages"]
    expected = [task.labels[r["pred"]] if r["pred"] is not None else r["raw"] for r in want.predictions]
    assert got == expected
    if guided:  # constrained: every answer is a label's words, asked in the spelling the upstream honours
        assert set(got) <= set(task.labels.values())
        assert all(r.get("guided_choice") == list(task.labels.values()) for r in up.requests[-ROWS:])
    # the upstream saw the demonstrations answer with the label words, as eval sent them
    answers = {m["content"] for m in sent if m["role"] == "assistant"}
    assert answers and answers <= set(task.labels.values())


def test_served_classifier_answers_are_eval_predictions_on_vllm_prompt_embeds(tmp_path):
    """A trained soft prompt sent to vLLM as `prompt_embeds`: the labels are ranked by their first token's
    log-probability among vLLM's first-token `top_logprobs`, and the answers are `eval`'s predictions row for row
    (label words of one token each here, so the first token is the whole label eval scores)."""
    lm, task = learner(), dataclasses.replace(synth_task(), labels={"negative": "the", "positive": "up"})
    assert all(len(lm.encode(w)) == 1 for w in task.labels.values())
    soft_run = tmp_path / "soft"
    promptlift.optimize("prompt-tuning", lm, task, out=soft_run, progress=False, eval_splits=(), epochs=6, tokens=4,
                        lr=0.1)
    rows = task.test[:ROWS]
    vllm = FakeVllm(lm)
    with ServerThread(vllm.app) as up:
        cfg = parse_config({"routes": [route(n, soft_run, up.url + "/v1", upstream_model="vllm", prompt_embeds=True,
                                             embeds_model=lm.model_id, **extra)
                                       for n, extra in (("soft", {}), ("soft-gen", {"answer": "generate"}))]})
        with Proxy(cfg, lm) as px:
            want = evaluate(lm, task, load(soft_run), examples=rows, progress=False).predictions
            got = [px.ask("soft", ex.input).choices[0].message.content for ex in rows]
            assert got == [task.labels[r["pred"]] for r in want]
            assert len(set(got)) == 2  # trained: it tells the classes apart
            sent = vllm.received[-1]
            assert sent["max_tokens"] == 1 and sent["logprobs"] == 20 and "prompt" not in sent
            out = px.ask("soft", rows[0].input, logprobs=True)
            top = {t.token: t.logprob for t in out.choices[0].logprobs.content[0].top_logprobs}
            true = {task.labels[k]: v for k, v in want[0]["scores"].items()}
            assert set(top) == set(true) and out.choices[0].logprobs.content[0].token == got[0]
            assert top[got[0]] == pytest.approx(true[got[0]], abs=1e-3)  # the chosen label's own log-probability
            # another label outside vLLM's 20 most likely tokens scores a bound: below the chosen one, above its own
            assert all(true[w] - 1e-3 <= v < top[got[0]] for w, v in top.items() if w != got[0])
            c = px.client.completions.create(model="soft", prompt=rows[1].input, max_tokens=5)
            assert c.choices[0].text == got[1]
            x = rows[0].input  # free generation stays available per route
            assert px.ask("soft-gen", x).choices[0].message.content == generate_with_prompt(
                lm, load(soft_run), [x], max_tokens=5, task=task)[0]
            assert vllm.received[-1].get("logprobs") is None


def test_prompt_embeds_labels_with_one_first_token_are_refused(trained, tmp_path):
    lm, task, soft_run, _ = trained
    p = load(soft_run)
    p.labels = {"negative": "cold day", "positive": "cold night"}
    p.save(tmp_path / "same")
    cfg = parse_config({"routes": [route("s", tmp_path / "same", "http://127.0.0.1:9/v1", prompt_embeds=True,
                                         embeds_model=lm.model_id)]})
    with pytest.raises(ConfigError, match="both begin with the token"):
        build_snapshot(cfg, Resources(lms={lm.model_id: lm}))


def test_answer_label_needs_label_words(tmp_path):
    lm = make_tiny_lm()
    p = SoftPrompt(instruction="Say it.", embeds=torch.zeros(2, lm.hidden_size), hidden_size=lm.hidden_size,
                   num_layers=lm.num_layers, model=lm.model_id)
    p.save(tmp_path / "p")
    cfg = single_route_config(tmp_path / "p", p.hash, "local", answer="label")
    with pytest.raises(ConfigError, match="stores no label words"):
        build_snapshot(cfg, Resources(lms={lm.model_id: lm}))
    with pytest.raises(ConfigError, match="answer"):
        single_route_config(tmp_path / "p", p.hash, "local", answer="labels")
    # without labels, a route generates freely (as before artifacts stored labels)
    snap = build_snapshot(single_route_config(tmp_path / "p", p.hash, "local"), Resources(lms={lm.model_id: lm}))
    assert snap.routes["promptlift"].answers == {"default": "generate"}


def test_generate_cli_renders_demonstrations_with_the_stored_label_words(trained, monkeypatch, capsys):
    lm, task, _, fs_run = trained
    import promptlift.cli as cli

    monkeypatch.setattr(cli, "load_lm", lambda *a, **k: lm)
    assert cli.main(["generate", "the movie was good", "--prompt", str(fs_run), "--max-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["output"]
    assert out == generate_with_prompt(lm, load(fs_run), ["the movie was good"], max_tokens=4, task=task)[0]


def test_served_mixture_answers_are_eval_predictions_locally(tmp_path):
    """A trained soft mixture (gate=input) behind `--upstream local`: the classifier route answers with the label
    `eval` predicts from the mixed distributions, row for row; the free-generation route decodes each input with
    its highest-weight member, as `generate` does."""
    lm, task = learner(), synth_task()
    run = tmp_path / "mix"
    promptlift.optimize("soft-mixture", lm, task, out=run, progress=False, eval_splits=(), epochs=4, tokens=4,
                        lr=0.1, members=2, gate="input")
    rows = task.test[:ROWS]
    cfg = parse_config({"routes": [route("mix", run, "local"), route("mix-gen", run, "local", answer="generate")],
                        "limits": {"batch_window_ms": 20}})
    with Proxy(cfg, lm) as px:
        want = evaluate(lm, task, load(run), examples=rows, progress=False).predictions
        got = [px.ask("mix", ex.input).choices[0].message.content for ex in rows]
        assert got == [task.labels[r["pred"]] for r in want]
        assert len(set(got)) == 2  # trained: it tells the classes apart
        out = px.ask("mix", rows[0].input, logprobs=True)
        top = {t.token: t.logprob for t in out.choices[0].logprobs.content[0].top_logprobs}
        assert top == pytest.approx({task.labels[k]: v for k, v in want[0]["scores"].items()}, abs=1e-3)
        xs = [ex.input for ex in rows[:4]]
        mixture = load(run)
        assert len(set(applier_for(mixture).chosen(mixture, WhiteBox(lm), xs))) > 1
        with ThreadPoolExecutor(4) as pool:  # batched together: inputs that choose different members
            gen = list(pool.map(lambda x: px.ask("mix-gen", x).choices[0].message.content, xs))
        assert gen == generate_with_prompt(lm, load(run), xs, max_tokens=5, task=task)
