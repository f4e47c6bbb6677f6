"""`promptlift serve` with the local upstream (and a scripted vLLM prompt_embeds upstream) on the tiny model.

Served answers must equal `generate_with_prompt`, the engine's own way of
answering through an artifact: for text, soft and prefix prompts, alone or
batched together with other artifacts.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch

from fakes import DATA, make_tiny_lm
from promptlift.artifacts import Calibrated, LatePrompt, PrefixPrompt, Reasoning, SoftPrompt, TextPrompt
from promptlift.engine.evaluate import generate_with_prompt
from promptlift.errors import ConfigError
from promptlift.lm.base import GenerationConfig, model_key
from promptlift.serve.app import build_app
from promptlift.serve.config import parse_config
from promptlift.serve.embeds import soft_input_embeds
from promptlift.serve.local import PrefixCache, _Job, run_jobs
from promptlift.serve.routes import Resources, build_snapshot
from promptlift.serve.server import ServerThread
from promptlift.task import Example
from fakes import DATA, FakeVllm, make_tiny_lm, multi_token_task, single_token_task  # noqa: F401

INPUTS = ["the movie was great", "a terrible boring film", "sports results today", "world politics summit"]
MAX_TOKENS = 6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    # a wide init makes the random model's next-token distribution peaked, so greedy answers are stable
    return make_tiny_lm(seed=1, init_range=0.5)


def soft(lm, seed: int, k: int = 3, **kw) -> SoftPrompt:
    g = torch.Generator().manual_seed(seed)
    return SoftPrompt(instruction=kw.pop("instruction", "Say it."), embeds=torch.randn(k, lm.hidden_size, generator=g),
                      hidden_size=lm.hidden_size, num_layers=lm.num_layers, model=lm.model_id, **kw)


def prefix(lm, seed: int, k: int = 2) -> PrefixPrompt:
    g = torch.Generator().manual_seed(seed)
    shape = (lm.num_layers, lm.num_kv_heads, k, lm.head_dim)
    return PrefixPrompt(instruction="Answer.", keys=torch.randn(*shape, generator=g),
                        values=torch.randn(*shape, generator=g), hidden_size=lm.hidden_size,
                        num_layers=lm.num_layers, model=lm.model_id)


def late(lm, seed: int, k: int = 3) -> LatePrompt:
    g = torch.Generator().manual_seed(seed)
    return LatePrompt(instruction="Answer it.", embeds=torch.randn(k, lm.hidden_size, generator=g), layer=1,
                      ids=lm.encode("Say it now")[:k], hidden_size=lm.hidden_size, num_layers=lm.num_layers,
                      model=lm.model_id)


def local_config(tmp_path: Path, prompts: dict, upstream: str = "local", limits: dict | None = None, **route):
    refs = {}
    for name, p in prompts.items():
        p.save(tmp_path / name)
        refs[name] = {"path": str(tmp_path / name), "sha256": p.hash}
    default = refs.pop("default")
    doc = {"routes": [{"name": "tiny", "upstream": upstream, "prompt": default["path"], "sha256": default["sha256"],
                       "prompts": refs, **route}], "limits": limits or {}}
    return parse_config(doc)


class Served:
    def __init__(self, cfg, lm):
        self.res = Resources(lms={lm.model_id: lm})
        self.app = build_app(cfg, resources=self.res, log_line=lambda d: None)
        self.srv = ServerThread(self.app).start()
        self.client = openai.OpenAI(base_url=self.srv.url + "/v1", api_key="none", max_retries=0, timeout=60)

    def chat(self, x, prompt: str | None = None, **kw) -> str:
        h = {"X-Promptlift-Prompt": prompt} if prompt else None
        out = self.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": x}],
                                                  max_tokens=MAX_TOKENS, extra_headers=h, **kw)
        return out.choices[0].message.content

    def runner(self):
        return next(iter(self.res.runners.values()))


@pytest.fixture
def served():
    made = []

    def make(cfg, lm):
        s = Served(cfg, lm)
        made.append(s)
        return s

    yield make
    for s in made:
        s.srv.stop()


def alone(lm, p, x, **kw):
    return generate_with_prompt(lm, p, [x], max_tokens=MAX_TOKENS, **kw)[0]


def test_local_text_soft_and_prefix_answers_equal_the_engine(tmp_path, lm, served):
    text = TextPrompt(instruction="Classify the input.", demos=[Example("very good", "up")])
    prompts = {"default": text, "soft": soft(lm, 0), "split": soft(lm, 1, k=4, split=1),
               "prepend": soft(lm, 2, position="prepend"), "prefix": prefix(lm, 3),
               "calibrated": Calibrated(inner=soft(lm, 4)), "late": late(lm, 5)}
    s = served(local_config(tmp_path, prompts), lm)
    answers = set()
    for name, p in prompts.items():
        for x in INPUTS[:2]:
            got = s.chat(x, None if name == "default" else name)
            assert got == alone(lm, p, x), (name, x)
            answers.add(got)
    assert len(answers) > 3  # the artifacts really change the answers
    out = s.client.completions.create(model="tiny", prompt=INPUTS[0], max_tokens=MAX_TOKENS,
                                      extra_headers={"X-Promptlift-Prompt": "soft"})
    assert out.choices[0].text == alone(lm, prompts["soft"], INPUTS[0])
    assert out.usage.prompt_tokens > 3 and out.usage.completion_tokens >= 1
    stream = s.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": INPUTS[1]}],
                                              max_tokens=MAX_TOKENS, stream=True,
                                              extra_headers={"X-Promptlift-Prompt": "prefix"})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == alone(lm, prompts["prefix"],
                                                                                            INPUTS[1])
    sampled = s.chat(INPUTS[0], "soft", temperature=0.9, seed=7)
    assert sampled == alone(lm, prompts["soft"], INPUTS[0], temperature=0.9, seed=7)


def test_two_stage_prompt_runs_through_the_engine(tmp_path, lm, served):
    cot = Reasoning(inner=soft(lm, 5), reasoning_tokens=4)
    s = served(local_config(tmp_path, {"default": cot, "text": TextPrompt(instruction="Classify.")}), lm)
    assert s.chat(INPUTS[0]) == alone(lm, cot, INPUTS[0])
    assert s.chat(INPUTS[1], "text") == alone(lm, TextPrompt(instruction="Classify."), INPUTS[1])


def test_soft_prompt_with_a_system_message_is_a_400(tmp_path, lm, served):
    s = served(local_config(tmp_path, {"default": soft(lm, 0)}), lm)
    with pytest.raises(openai.BadRequestError, match="system message"):
        s.client.chat.completions.create(model="tiny", max_tokens=3, messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert s.chat("hi") == alone(lm, soft(lm, 0), "hi")  # and it goes on serving


def test_mixed_soft_prompts_in_one_batch_equal_serving_each_alone(lm):
    """Unit level: one decode over rows with different soft/prefix/text prompts == each alone."""
    prompts = [soft(lm, i, k=2 + i % 3) for i in range(4)] + [prefix(lm, 9), late(lm, 8),
                                                             TextPrompt(instruction="Classify.")]
    cfg = GenerationConfig(max_tokens=MAX_TOKENS)
    jobs = [_Job(p, x, cfg, None) for p in prompts for x in INPUTS[:2]]
    run_jobs(lm, jobs)
    assert all(j.error is None for j in jobs), [j.error for j in jobs]
    for j in jobs:
        assert j.result.text == alone(lm, j.prompt, j.conversation)
    assert len({id(j.cond.prefix) for j in jobs}) == len(prompts)  # one condition per artifact
    assert {j.batch for j in jobs} == {len(jobs)}  # ... and one decode for all rows
    assert len({j.result.text for j in jobs}) > len(prompts) // 2
    # with the prefix cache: the soft/prefix prompts' constant part is computed once, answers unchanged
    cache = PrefixCache()
    first = [_Job(p, x, cfg, None) for p in prompts for x in INPUTS[:2]]
    run_jobs(lm, first, cache)
    again = [_Job(p, x, cfg, None) for p in prompts for x in INPUTS[2:]]
    run_jobs(lm, again, cache)
    assert len(cache) == len(prompts) - 1  # not the text prompt
    assert [j.result.text for j in first] == [j.result.text for j in jobs]
    for a, b in zip(first[:-2], again[:-2]):
        assert a.cond.prefix is b.cond.prefix
    assert [j.result.text for j in again] == [alone(lm, j.prompt, j.conversation) for j in again]


def test_concurrent_requests_with_different_soft_prompts_are_batched(tmp_path, lm, served):
    prompts = {"default": soft(lm, 0), **{f"c{i}": soft(lm, 10 + i, k=1 + i) for i in range(5)}}
    s = served(local_config(tmp_path, prompts, limits={"batch_window_ms": 50, "max_batch": 16}), lm)
    calls = [(name, x) for name in prompts for x in INPUTS[:2]]
    barrier = threading.Barrier(len(calls))

    def one(c):
        barrier.wait(timeout=30)
        return s.chat(c[1], None if c[0] == "default" else c[0])

    with ThreadPoolExecutor(len(calls)) as pool:
        got = list(pool.map(one, calls))
    for (name, x), g in zip(calls, got):
        assert g == alone(lm, prompts[name], x), (name, x)
    assert max(s.runner().batches) > 1, s.runner().batches


# --- log-probabilities through the applied prompt: black-box evaluation through the proxy -----------


def _through_proxy(s, name: str, **kw):
    from promptlift.lm.cache import CallCache
    from promptlift.lm.openai import OpenAIModel

    client = openai.OpenAI(base_url=s.srv.url + "/v1", api_key="none", default_headers={"X-Promptlift-Prompt": name})
    # the tiny vocabulary has ~400 tokens: every one is listed, so first-token scores are exact
    return OpenAIModel("tiny", client=client, cache=CallCache(enabled=False), top_logprobs=400, **kw)


def _same_eval(remote, local) -> None:
    assert remote.scoring == local.scoring == "logprobs"
    assert [r["pred"] for r in remote.predictions] == [r["pred"] for r in local.predictions]
    for a, b in zip(remote.predictions, local.predictions):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-3)


@pytest.mark.parametrize("chat,api", [(True, "chat"), (False, "completions"), (True, "completions")])
def test_eval_through_the_proxy_equals_local_eval(tmp_path, chat, api):
    """`promptlift eval --model openai:ROUTE --instruction ''` through the local upstream == local eval of the route's
    prompt: chat ranks by the first token's top_logprobs, completions scores whole label words with echo."""
    from promptlift import evaluate
    from promptlift.artifacts import KnnPrompt
    from fakes import multi_token_task, single_token_task

    lm = make_tiny_lm(seed=1, init_range=0.5, chat=chat)
    task = single_token_task() if api == "chat" else multi_token_task()
    prompts = {"default": TextPrompt(instruction="Classify the input.", demos=task.train[:2]), "soft": soft(lm, 0),
               "prefix": prefix(lm, 3), "late": late(lm, 4),
               "knn": KnnPrompt(instruction="Label it.", pool=task.train, k=2)}
    s = Served(local_config(tmp_path, prompts, labels=dict(task.labels)), lm)
    try:
        for name, p in prompts.items():
            remote = evaluate(_through_proxy(s, name, api=api), task, TextPrompt(instruction=""), progress=False)
            _same_eval(remote, evaluate(lm, task, p, progress=False))
    finally:
        s.srv.stop()


def test_logprobs_and_echo_response_shapes(tmp_path, lm, served):
    cot = Reasoning(inner=soft(lm, 1), reasoning_tokens=2)
    s = served(local_config(tmp_path, {"default": soft(lm, 0), "cot": cot}), lm)
    out = s.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": INPUTS[0]}],
                                           max_tokens=1, logprobs=True, top_logprobs=3)
    first = out.choices[0].logprobs.content[0]
    assert len(first.top_logprobs) == 3 and first.token == first.top_logprobs[0].token
    assert first.bytes == list(first.token.encode()) and first.logprob <= 0
    assert out.choices[0].message.content == alone(lm, soft(lm, 0), INPUTS[0])[:len(out.choices[0].message.content)]
    text = "Input: the movie was great\nOutput: up down"
    c = s.client.completions.create(model="tiny", prompt=text, echo=True, logprobs=2, max_tokens=0)
    lp = c.choices[0].logprobs
    assert c.choices[0].text == text and len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset)
    scored = [(t, o) for t, o, v in zip(lp.tokens, lp.text_offset, lp.token_logprobs) if v is not None]
    assert "".join(t for t, _ in scored) == "up down" and scored[0][1] == text.index("up")
    assert all(v is None for v in lp.token_logprobs[: len(lp.tokens) - len(scored)])
    assert len(lp.top_logprobs[-1]) == 2
    for bad in ({"max_tokens": 2}, {"max_tokens": 0, "stream": True}):
        with pytest.raises(openai.BadRequestError):
            s.client.completions.create(model="tiny", prompt=text, echo=True, logprobs=1, **bad)
    with pytest.raises(openai.BadRequestError, match="2 stages"):  # a two-stage prompt has no one condition
        s.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1,
                                         logprobs=True, extra_headers={"X-Promptlift-Prompt": "cot"})
    with pytest.raises(openai.BadRequestError, match="greedy"):
        s.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1,
                                         logprobs=True, temperature=0.7)
    assert s.chat("hi") == alone(lm, soft(lm, 0), "hi")  # and it goes on serving


# --- vLLM prompt_embeds ----------------------------------------------------------------------


def test_soft_prompt_to_vllm_as_prompt_embeds(tmp_path, lm, served):
    vllm = FakeVllm(lm)
    with ServerThread(vllm.app) as up:
        prompts = {"default": soft(lm, 0), "split": soft(lm, 1, k=4, split=2),
                   "prepend": soft(lm, 2, position="prepend"), "text": TextPrompt(instruction="Classify.")}
        cfg = local_config(tmp_path, prompts, upstream=up.url + "/v1", upstream_model="vllm-model",
                           prompt_embeds=True, embeds_model=lm.model_id)
        s = served(cfg, lm)
        for name in ("default", "split", "prepend"):
            x = INPUTS[2]
            assert s.chat(x, name) == alone(lm, prompts[name], x), name
            sent = vllm.received[-1]
            assert sent["model"] == "vllm-model" and "messages" not in sent and "prompt" not in sent
            t = sent["tensor"]
            assert t.dtype == lm.dtype and t.dim() == 2 and t.shape[1] == lm.hidden_size
            assert torch.equal(t, soft_input_embeds(lm, prompts[name], [{"role": "user", "content": x}]))
        out = s.client.completions.create(model="tiny", prompt=INPUTS[3], max_tokens=MAX_TOKENS)
        assert out.choices[0].text == alone(lm, prompts["default"], INPUTS[3])
        stream = s.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": INPUTS[0]}],
                                                  max_tokens=MAX_TOKENS, stream=True)
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == alone(lm, prompts["default"], INPUTS[0])
        assert chunks[-1].choices[0].finish_reason == "stop"
        n = len(vllm.received)
        with pytest.raises(openai.APIStatusError):  # a text prompt goes as messages to /chat/completions
            s.chat("hi", "text")
        assert len(vllm.received) == n


def test_soft_input_embeds_place_the_virtual_tokens_like_the_engine(lm):
    """Full forward over the spliced embeddings == the engine's cached soft prefix + row."""
    from promptlift.engine.soft import soft_prefix_kv
    from promptlift.render import render
    from promptlift.task import Example
    from promptlift.template import build_layout, to_ids

    shots = [Example("a good day", "yes"), Example("a sad day", "no")]
    for p in (soft(lm, 0), soft(lm, 1, k=4, split=1), soft(lm, 2, position="prepend"), soft(lm, 3, demos=shots)):
        t = soft_input_embeds(lm, p, INPUTS[0])
        layout = build_layout(lm, p.instruction, p.demos)
        start = layout.header + layout.body
        row = to_ids(lm, render(p.instruction, p.demos, INPUTS[0]))[len(start):]
        kv = soft_prefix_kv(lm, layout, p.embeds, p.position, p.split)
        h_engine, _ = lm.forward(ids=torch.tensor([row]), past=kv)
        h_full, _ = lm.forward(embeds=t.unsqueeze(0))
        assert t.shape[0] == kv.seq_len + len(row)
        assert torch.allclose(h_full[0, -len(row):], h_engine[0], atol=1e-5)


def test_prefix_prompt_on_vllm_is_refused(tmp_path, lm):
    cfg = local_config(tmp_path, {"default": prefix(lm, 0)}, upstream="http://127.0.0.1:9/v1", prompt_embeds=True,
                       embeds_model=lm.model_id)
    with pytest.raises(ConfigError, match="cannot go to vLLM"):
        build_snapshot(cfg, Resources(lms={lm.model_id: lm}))


def test_soft_prompt_for_another_model_is_refused_locally(tmp_path, lm):
    p = soft(lm, 0)
    p.model = "another-model"
    cfg = local_config(tmp_path, {"default": p}, upstream=f"local:{lm.model_id}")
    with pytest.raises(Exception, match="another-model"):
        build_snapshot(cfg, Resources(lms={lm.model_id: lm}))


# --- end to end on the bundled model ------------------------------------------------------------


@pytest.mark.slow
def test_serve_local_real_model_matches_the_engine_on_sst2(tmp_path, real_lm):
    """`promptlift serve --upstream local` on smollm2-135m: 20 SST-2 test rows, a text and a soft prompt."""
    from promptlift.task import Task

    task = Task.from_dir(DATA / "sst2")
    rows = [ex.input for ex in task.test[:20]]
    text = TextPrompt(instruction="Is this review positive or negative? Answer with one word.",
                      demos=[task.train[0], task.train[1]])
    g = torch.Generator().manual_seed(0)
    vectors = real_lm.embed(torch.randint(100, 5000, (4,), generator=g)).detach()
    sp = SoftPrompt(instruction="Sentiment:", embeds=vectors, hidden_size=real_lm.hidden_size,
                    num_layers=real_lm.num_layers, model=model_key(real_lm))  # as optimize records it
    assert sp.model.startswith("smollm2-135m@")  # `--upstream local` loads the model by the name before "@"
    cfg = local_config(tmp_path, {"default": text, "soft": sp}, labels=dict(task.labels), answer="generate",
                       limits={"batch_window_ms": 20})
    s = Served(cfg, real_lm)
    try:
        def ask(args):
            name, x = args
            return s.chat(x, name if name != "default" else None, temperature=0)

        calls = [(n, x) for n in ("default", "soft") for x in rows]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(ask, calls))
    finally:
        s.srv.stop()
    want = (generate_with_prompt(real_lm, text, rows, max_tokens=MAX_TOKENS, task=task)
            + generate_with_prompt(real_lm, sp, rows, max_tokens=MAX_TOKENS, task=task))
    assert got == want
    assert all(got) and len(set(got)) > 2  # real answers, not all the same
    assert max(s.runner().batches) > 1


@pytest.mark.slow
def test_optimized_soft_prompt_served_locally_gives_the_eval_predictions_on_sst2(tmp_path, real_lm, capsys):
    """End to end on smollm2-135m: prompt-tuning (tiny budget) -> `promptlift serve --prompt RUN --upstream local`
    -> `promptlift eval --model openai:ROUTE --api completions --instruction ''` through the proxy (the real openai
    client underneath) gives the same predictions and accuracy on the first 200 SST-2 test rows as
    `promptlift eval --prompt RUN`; chat `logprobs` give the engine's first-token label scores (a route that
    generates); the route's own chat answers (`max_tokens=5, temperature=0`, the real client, concurrent) are the
    words of eval's predicted labels, row for row."""
    import promptlift
    from promptlift.artifacts import load
    from promptlift.cli import main
    from promptlift.files import read_jsonl
    from promptlift.serve.config import single_route_config
    from promptlift.task import Task

    data = DATA / "sst2"
    task = Task.from_dir(data)
    run = tmp_path / "run"
    promptlift.optimize("prompt-tuning", real_lm, task, out=run, seed=0, progress=False, eval_splits=("dev",),
                        epochs=1, tokens=4)
    artifact = load(run)
    assert artifact.type == "soft" and artifact.model.startswith("smollm2-135m@")

    def eval_json(*args) -> dict:
        assert main(["eval", "--data", str(data), "--limit", "200", "--json", *args]) == 0
        return json.loads(capsys.readouterr().out)

    local = eval_json("--prompt", str(run), "--predictions", str(tmp_path / "local.jsonl"))
    lp = read_jsonl(tmp_path / "local.jsonl")
    cfg = single_route_config(run, artifact.hash, "local", name="sst2-soft")  # what `promptlift serve` builds
    gen = single_route_config(run, artifact.hash, "local", name="sst2-soft-gen", answer="generate")
    s = Served(dataclasses.replace(cfg, routes=cfg.routes + gen.routes), real_lm)
    try:
        # the proxy applies the soft prompt, so the client evaluates with an empty prompt; the completions API
        # scores whole label words (echo + logprobs), as the local engine does
        remote = eval_json("--model", "openai:sst2-soft", "--base-url", s.srv.url + "/v1", "--api", "completions",
                           "--instruction", "", "--predictions", str(tmp_path / "remote.jsonl"))
        batches = list(s.runner().batches)
        tops = [s.client.chat.completions.create(model="sst2-soft-gen", max_tokens=1, logprobs=True, top_logprobs=20,
                                                 messages=[{"role": "user", "content": r["input"]}])
                for r in lp[:30]]

        def answer(r):
            out = s.client.chat.completions.create(model="sst2-soft", messages=[{"role": "user", "content": r["input"]}],
                                                   max_tokens=5, temperature=0)
            return out.choices[0].message.content

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(answer, lp[:100]))
    finally:
        s.srv.stop()
    rp = read_jsonl(tmp_path / "remote.jsonl")
    assert len(lp) == len(rp) == 200 and remote["scoring"] == "logprobs" and remote["unparsed"] == 0
    assert [r["pred"] for r in rp] == [r["pred"] for r in lp]
    assert remote["accuracy"] == local["accuracy"]
    for a, b in zip(lp, rp):
        assert b["scores"] == pytest.approx(a["scores"], abs=2e-3)
    assert max(batches) > 1  # concurrent client requests were batched
    listed = 0
    for out, rec in zip(tops, lp):
        top = {t.token: t.logprob for t in out.choices[0].logprobs.content[0].top_logprobs}
        for label, words in task.labels.items():
            if words in top:  # the label words are one token each: first-token log-prob == label score
                listed += 1
                assert top[words] == pytest.approx(rec["scores"][label], abs=2e-3)
    assert listed > 30
    assert answers == [task.labels[r["pred"]] for r in lp[:100]]  # the served classifier answers with eval's label
    assert len(set(answers)) == 2
    print(f"\nsoft prompt (dev {artifact.meta.get('best_dev')}) on SST-2 test[:200]: accuracy {local['accuracy']:.3f} "
          f"locally and through the proxy; {listed}/60 chat label log-probs listed in top 20")


def test_metrics_count_the_prompts_own_positions_per_route(tmp_path, lm, served):
    """/metrics: a soft prompt's k vectors and instruction, a text prompt's tokens; never the user's input."""
    import httpx

    from promptlift.engine.evaluate import evaluate
    from promptlift.task import Task

    bare = soft(lm, 0, k=3, instruction="")
    text = TextPrompt(instruction="Classify the input.", demos=[Example("very good", "up")])
    s = served(local_config(tmp_path, {"default": text, "soft": bare}), lm)
    s.chat(INPUTS[0], "soft")
    s.chat(INPUTS[1], "soft")
    metrics = lambda: httpx.get(s.srv.url + "/metrics").text  # noqa: E731
    assert 'promptlift_prompt_positions_total{route="tiny",unit="tokens"} 6.0' in metrics()  # 2 requests x 3
    s.chat(INPUTS[2])
    task = Task(name="t", kind="generation", test=[Example(INPUTS[2], "")])
    n = evaluate(lm, task, text, progress=False).prompt_tokens
    assert n > 3 and f'promptlift_prompt_positions_total{{route="tiny",unit="tokens"}} {6.0 + n}' in metrics()
