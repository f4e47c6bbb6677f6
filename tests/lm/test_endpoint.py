"""Black-box evaluation through a real OpenAI-compatible server on 127.0.0.1 (the `openai` client, HTTP).

The server (`FakeOpenAIServer` in tests/fakes.py) runs the same model as the local engine, so every answer the
endpoint path computes can be compared with the local engine's.
"""

from __future__ import annotations

import time

import pytest
import torch
from fakes import DATA, make_tiny_lm, multi_token_task, serving, single_token_task  # noqa: F401

from promptlift import Task, TextPrompt, evaluate
from promptlift.artifacts import Calibrated, KnnPrompt, Reasoning, SoftPrompt
from promptlift.engine.backends import first_token_scores
from promptlift.engine.evaluate import generate_with_prompt
from promptlift.errors import ConfigError, ModelError, UnsupportedError
from promptlift.lm.cache import CallCache
from promptlift.lm.openai import OpenAIModel
from promptlift.task import Example

pytestmark = pytest.mark.usefixtures("one_thread")


def endpoint(srv, **kw) -> OpenAIModel:
    kw.setdefault("top_logprobs", 400)  # the tiny vocabulary: every token is listed
    return OpenAIModel("tiny", base_url=srv.base_url, cache=CallCache(enabled=False), retry_backoff=0.01, **kw)


def gen_task() -> Task:
    exs = [Example(x, y) for x, y in [("hot", "cold"), ("up", "down"), ("big", "small"), ("good", "bad")]]
    return Task(name="g", kind="generation", train=exs, dev=exs[:2], test=exs, instruction="Give the antonym.")


def _scores(r):
    return [p["scores"] for p in r.predictions]


def _close(a, b, tol=1e-3):
    return all(abs(x[k] - y[k]) <= tol for x, y in zip(a, b) for k in x)


def test_rank_classification_through_chat_logprobs_equals_local_engine():
    lm, task = make_tiny_lm(), single_token_task()
    with serving(lm) as srv:
        ep = endpoint(srv)
        prompt = TextPrompt(instruction=task.instruction, demos=task.train[:2])
        local, remote = evaluate(lm, task, prompt, progress=False), evaluate(ep, task, prompt, progress=False)
    assert remote.scoring == "logprobs" and remote.unparsed == 0
    assert _close(_scores(local), _scores(remote))
    assert [p["pred"] for p in local.predictions] == [p["pred"] for p in remote.predictions]
    probe, *chat = [r for r in srv.requests if r.get("logprobs")]
    assert probe["messages"] == [{"role": "user", "content": "Say yes."}]  # capabilities, asked once
    assert len(chat) == len(task.test)
    assert all(r["max_tokens"] == 1 and r["top_logprobs"] == 400 for r in chat)
    # the messages sent are the rendering documented in promptlift.render: demos as turns, instruction first
    sent = chat[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user", "assistant", "user"]
    assert sent[0]["content"].startswith("Classify the input.\n\n") and sent[1]["content"] in ("the", "up")


def test_completions_api_scores_whole_label_words_like_local_engine():
    lm, task = make_tiny_lm(chat=False), multi_token_task()
    with serving(lm) as srv:
        ep = endpoint(srv, api="completions")
        local = evaluate(lm, task, progress=False)
        remote = evaluate(ep, task, progress=False)
    assert remote.scoring == "logprobs"
    assert _close(_scores(local), _scores(remote))
    scored = [r for r in srv.requests if r.get("echo") and r["prompt"] != "Say yes: yes"]  # not the probe
    assert scored and all(r["prompt"].startswith("Classify the input.\n\nInput: ") for r in scored)


def test_reference_answers_score_through_the_completions_api_like_local_engine():
    """A generation task's search objective (`example_losses`) from an endpoint: echo + logprobs of the reference."""
    from promptlift.engine.evaluate import answer_scores

    lm, task = make_tiny_lm(chat=False), gen_task()
    prompt = TextPrompt(instruction=task.instruction)
    with serving(lm) as srv:
        remote = answer_scores(endpoint(srv, api="completions"), task, prompt, task.test)
        with pytest.raises(UnsupportedError, match="completions API"):
            answer_scores(endpoint(srv), task, prompt, task.test)  # a chat endpoint cannot score given text
    local = answer_scores(lm, task, prompt, task.test)
    assert torch.allclose(remote, local, atol=1e-3)


def test_calibration_sends_content_free_inputs_and_matches_local():
    lm, task = make_tiny_lm(), single_token_task()
    prompt = Calibrated(inner=TextPrompt(instruction=task.instruction))
    with serving(lm) as srv:
        ep = endpoint(srv)
        local, remote = evaluate(lm, task, prompt, progress=False), evaluate(ep, task, prompt, progress=False)
    users = [r["messages"][-1]["content"] for r in srv.requests if r.get("logprobs")]
    for cf in ("N/A", "", "[MASK]"):
        assert f"Classify the input.\n\n{cf}" in users
    assert _close(_scores(local), _scores(remote))


def test_chain_of_thought_runs_two_stages_on_the_endpoint_as_locally():
    lm, task = make_tiny_lm(), gen_task()
    prompt = Reasoning(inner=TextPrompt(instruction=task.instruction), trigger="Let's think step by step.",
                       reasoning_tokens=6)
    with serving(lm) as srv:
        ep = endpoint(srv)
        local = generate_with_prompt(lm, prompt, ["hot", "up"], max_tokens=4, task=task)
        remote = generate_with_prompt(ep, prompt, ["hot", "up"], max_tokens=4, task=task)
    assert local == remote
    stage1 = [r for r in srv.requests if r["messages"][-1]["content"] == "Let's think step by step."]
    stage2 = [r for r in srv.requests if r["messages"][-1]["content"].endswith("\nTherefore, the answer is")]
    assert len(stage1) == 2 and len(stage2) == 2
    assert all(r["messages"][-1]["role"] == "assistant" and r["continue_final_message"] for r in stage1 + stage2)
    assert stage2[0]["messages"][-1]["content"].startswith("Let's think step by step. ")


def test_unparsable_answers_are_counted_not_given_to_a_label():
    lm, task = make_tiny_lm(), multi_token_task()
    with serving(lm, logprobs=False) as srv:  # an endpoint without log-probabilities: generation + matching
        r = evaluate(endpoint(srv), task, progress=False)
    assert r.scoring == "generate"
    unparsed = [p for p in r.predictions if not p["parsed"]]
    assert r.unparsed == len(unparsed) > 0, [p["raw"] for p in r.predictions]  # the random tiny model answers noise
    assert all(p["pred"] is None and p["score"] == 0.0 for p in unparsed)


def test_calibration_without_logprobs_is_refused_before_any_generation():
    lm, task = make_tiny_lm(), single_token_task()
    with serving(lm, logprobs=False) as srv:
        with pytest.raises(ConfigError, match="calibration needs label log-probabilities"):
            evaluate(endpoint(srv), task, Calibrated(inner=TextPrompt()), progress=False)
    assert all(r.get("logprobs") for r in srv.requests)  # only the capability probe was sent


def test_knn_on_an_endpoint_sends_k_neighbours_and_refuses_model_embeddings():
    lm, task = make_tiny_lm(), single_token_task()
    pool = task.train
    with serving(lm) as srv:
        ep = endpoint(srv)
        tfidf = KnnPrompt(instruction="Pick.", pool=pool, k=2, embedder="tfidf")
        local, remote = evaluate(lm, task, tfidf, progress=False), evaluate(ep, task, tfidf, progress=False)
        assert _close(_scores(local), _scores(remote))
        last = [r for r in srv.requests if r.get("logprobs")][-1]["messages"]
        assert len(last) == 2 * 2 + 1  # 2 demonstrations, not the whole pool
        n = len(srv.requests)
        with pytest.raises(ConfigError, match="embedder=model"):
            evaluate(ep, task, KnnPrompt(pool=pool, k=2, embedder="model"), progress=False)
        assert len(srv.requests) == n


def test_soft_prompt_on_a_text_endpoint_is_refused():
    lm, task = make_tiny_lm(), single_token_task()
    soft = SoftPrompt(embeds=torch.zeros(2, lm.hidden_size), hidden_size=lm.hidden_size, model=None)
    with serving(lm) as srv:
        with pytest.raises(ConfigError, match="cannot take them"):
            evaluate(endpoint(srv), task, soft, progress=False)


def test_rate_limits_server_errors_and_timeouts_are_retried():
    lm, task = make_tiny_lm(), single_token_task()
    with serving(lm) as srv:
        ep = endpoint(srv, timeout=1.0, max_retries=4)
        ep.capabilities()
        srv.script = [(429, {"error": {"message": "slow down"}}), (500, {"error": {"message": "boom"}}),
                      ("sleep", 1.5)]
        r = evaluate(ep, task, examples=task.test[:1], progress=False)
    assert r.n == 1 and r.scoring == "logprobs"
    assert len(srv.requests) >= 1 + 4  # probe + 3 failures + the answer


def test_dead_endpoint_fails_fast_with_one_line():
    ep = OpenAIModel("x", base_url="http://127.0.0.1:9/v1", cache=CallCache(enabled=False), max_retries=2,
                     retry_backoff=0.01, timeout=2)
    t0 = time.monotonic()
    with pytest.raises(ModelError) as ei:
        evaluate(ep, single_token_task(), progress=False)
    assert time.monotonic() - t0 < 10
    assert "\n" not in str(ei.value) and "connection" in str(ei.value).lower()


def test_first_token_scores_longest_match_floor_and_ambiguity():
    top = {"pos": -0.5, "positive": -0.7, "neg": -2.0, "x": -9.0}
    assert first_token_scores(top, ["positive", "negative", "maybe"]) == [-0.7, -2.0, -10.0]
    with pytest.raises(UnsupportedError, match="both begin with the token"):
        first_token_scores({"very": -1.0}, ["very good", "very bad"])


@pytest.mark.slow
def test_real_model_endpoint_predictions_equal_local_on_sst2(real_lm):
    task = Task.from_dir(DATA / "sst2")
    exs = task.test[:100]
    with serving(real_lm) as srv:
        ep = OpenAIModel("smollm2", base_url=srv.base_url, cache=CallCache(enabled=False))
        local = evaluate(real_lm, task, examples=exs, progress=False)
        remote = evaluate(ep, task, examples=exs, progress=False)
    assert remote.scoring == "logprobs"
    assert [p["pred"] for p in remote.predictions] == [p["pred"] for p in local.predictions]
    # the predicted label's score is its exact log-probability (a label outside top_logprobs scores below them)
    listed = [(a, b) for a, b in zip(local.predictions, remote.predictions) if len(set(b["scores"].values())) > 1]
    assert len(listed) > 90
    for a, b in listed:
        assert a["scores"][a["pred"]] == pytest.approx(b["scores"][b["pred"]], abs=2e-3)


def test_calls_budget_with_concurrency_8_exits_3_and_keeps_the_best_prompt(tmp_path, capsys, monkeypatch):
    from promptlift.cli import main

    monkeypatch.setenv("PROMPTLIFT_NO_CACHE", "1")
    lm = make_tiny_lm()
    with serving(lm) as srv:
        code = main(["optimize", "--method", "few-shot", "--model", "openai:tiny", "--base-url", srv.base_url,
                     "--data", "demo:demo_topics", "--out", str(tmp_path / "run"), "--shots", "1", "--trials", "6",
                     "--budget", "calls=25", "--json"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "budget" in err and len(err.strip().splitlines()) == 1
    import json as _json

    result = _json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["stopped"] == "budget" and result["cost"]["calls"] <= 25
    assert (tmp_path / "run" / "prompt.json").exists() and result["test"]["n"] > 0


def test_optimizer_model_is_a_separate_endpoint(tmp_path, capsys, monkeypatch):
    """--optimizer-model: the target is local, the proposals come from an OpenAI-compatible endpoint."""
    import json as _json

    import promptlift
    from promptlift.registry import get_method

    monkeypatch.setenv("PROMPTLIFT_NO_CACHE", "1")
    lm, task = make_tiny_lm(), single_token_task()
    with serving(make_tiny_lm(seed=1)) as srv:
        opt = endpoint(srv)
        run = promptlift.optimize("ape", lm, task, out=tmp_path / "run", progress=False, optimizer_lm=opt,
                                  **get_method("ape").smoke)
    proposals = [r for r in srv.requests if not r.get("logprobs")]
    assert proposals, "the optimizer endpoint was asked for proposals"
    cfg = _json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["optimizer_model"] == opt.model_id and cfg["model"] == lm.model_id
    assert run.prompt.model == lm.model_id  # the artifact belongs to the target
