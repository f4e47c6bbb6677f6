"""`promptlift serve` against a fake OpenAI-compatible upstream, with the real `openai` client.

Servers bind 127.0.0.1 on a free port, in threads stopped at teardown. The fake
upstream records what it received, so each test checks that the artifact was
applied exactly as `promptlift.render` documents it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import yaml
from fakes import (  # noqa: F401
    ADMIN_KEY,
    DEMOS,
    INSTRUCTION,
    KEY,
    OTHER_KEY,
    REPO,
    assert_error,
    basic_config,
    closed_port,
    fake,
    proxies,
    save,
    write_config,
)

from promptlift.artifacts import Calibrated, KnnPrompt, PrefixPrompt, Reasoning, SoftPrompt, TextPrompt
from promptlift.errors import ArtifactError, ConfigError
from promptlift.render import render
from promptlift.serve.config import hash_key, load_config, parse_config, read_key_file, single_route_config
from promptlift.serve.ratelimit import RateLimiter
from promptlift.serve.routes import Resources, build_snapshot
from promptlift.task import Example

# --- the fake upstream -------------------------------------------------------------------------


# --- helpers -----------------------------------------------------------------------------------


# --- the artifact is applied as documented ------------------------------------------------------


def test_chat_applies_text_prompt_as_documented(tmp_path, fake, proxies):
    """Caller's system message first; demonstrations as turns; instruction at the start of the first user turn."""
    px = proxies(load_config(basic_config(tmp_path, fake)))
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "I loved every minute"}]
    out = px.client().chat.completions.create(model="sentiment", messages=msgs, max_tokens=5, temperature=0)
    sent = fake.last
    assert sent["model"] == "up-model" and sent["max_tokens"] == 5 and sent["temperature"] == 0
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": f"{INSTRUCTION}\n\na wonderful film"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "dull and boring"},
        {"role": "assistant", "content": "negative"},
        {"role": "user", "content": "I loved every minute"},
    ]
    assert sent["messages"] == render(INSTRUCTION, DEMOS, msgs).messages()  # the core's one rendering
    assert out.choices[0].message.content == "ok:I loved every minute"
    assert out.usage.total_tokens == 14


def test_completions_send_the_plain_text_rendering(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake)))
    out = px.client().completions.create(model="sentiment", prompt="I loved every minute", max_tokens=3)
    assert fake.received[-1]["path"] == "/v1/completions"
    assert fake.last["prompt"] == (f"{INSTRUCTION}\n\nInput: a wonderful film\nOutput: positive\n\n"
                                   "Input: dull and boring\nOutput: negative\n\nInput: I loved every minute\nOutput:")
    assert out.choices[0].text.startswith("ok:")


def test_streaming_chat_and_completions_pass_through(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake)))
    client = px.client()
    msgs = [{"role": "user", "content": "so good"}]
    stream = client.chat.completions.create(model="sentiment", messages=msgs, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ok:so good"
    assert chunks[-1].usage.completion_tokens == 3
    assert fake.last["stream"] is True and fake.last["messages"] == render(INSTRUCTION, DEMOS, msgs).messages()
    stream = client.completions.create(model="sentiment", prompt="so good", stream=True)
    assert "".join(c.choices[0].text for c in stream) == fake.reply("completions", fake.last)
    assert fake.last["prompt"].endswith("Input: so good\nOutput:")
    log = px.requests(1)
    assert log[0]["stream"] and log[0]["completion_tokens"] == 3 and log[0]["status"] == 200


def test_header_picks_another_artifact_of_the_route(tmp_path, fake, proxies):
    other_path, other_sha = save(TextPrompt(instruction="Customer 42 style."), tmp_path / "c42")
    cfg = load_config(basic_config(tmp_path, fake, prompts={"c42": {"path": str(other_path), "sha256": other_sha}}))
    px = proxies(cfg)
    client = px.client()
    msgs = [{"role": "user", "content": "hello"}]
    raw = client.chat.completions.with_raw_response.create(model="sentiment", messages=msgs,
                                                           extra_headers={"X-Promptlift-Prompt": "c42"})
    assert raw.headers["x-promptlift-prompt"] == other_sha and raw.headers["x-promptlift-prompt-name"] == "c42"
    assert fake.last["messages"] == [{"role": "user", "content": "Customer 42 style.\n\nhello"}]
    client.chat.completions.create(model="sentiment", messages=msgs)  # no header: the route's own prompt
    assert fake.last["messages"][0]["content"].startswith(INSTRUCTION)
    r = px.post("/v1/chat/completions", {"model": "sentiment", "messages": msgs},
                headers={"X-Promptlift-Prompt": "nope"})
    assert_error(r, 400, "invalid_request_error", "prompt_not_found")


def test_labels_give_demonstration_answers_in_label_words(tmp_path, fake, proxies):
    demos = [Example("great", "pos"), Example("awful", "neg")]
    cfg = load_config(basic_config(tmp_path, fake, prompt=TextPrompt(instruction="Rate.", demos=demos),
                                   labels={"pos": "positive", "neg": "negative"}))
    px = proxies(cfg)
    px.client().chat.completions.create(model="sentiment", messages=[{"role": "user", "content": "fine"}])
    assert [m["content"] for m in fake.last["messages"] if m["role"] == "assistant"] == ["positive", "negative"]


def test_knn_tfidf_and_calibrated_prompts(tmp_path, fake, proxies):
    from promptlift.engine.apply import KnnApplier

    pool = [Example("the movie was great", "positive"), Example("sports results today", "negative"),
            Example("business and finance report", "negative")]
    knn = Calibrated(inner=KnnPrompt(instruction="Label it.", pool=pool, k=1, embedder="tfidf"))
    px = proxies(load_config(basic_config(tmp_path, fake, prompt=knn)))
    for q in ("today's sports results", "a great movie"):
        px.client().chat.completions.create(model="sentiment", messages=[{"role": "user", "content": q}])
        chosen = KnnApplier().select(knn.inner, None, [q])[0]
        assert fake.last["messages"] == render("Label it.", chosen, q).messages()
    assert fake.last["messages"][0]["content"] == "Label it.\n\nthe movie was great"


def test_applier_stages_decide_what_an_http_upstream_takes(tmp_path, fake, proxies):
    """The proxy asks the applier how many stages a prompt answers in; it never asks the artifact's type."""
    from promptlift.engine.apply import applier_for
    from promptlift.serve.apply import chat_messages, generation_prompt

    text = TextPrompt(instruction=INSTRUCTION, demos=DEMOS)
    cot = Reasoning(inner=text)
    assert [applier_for(p).stages(p) for p in (text, Calibrated(inner=text), cot, Calibrated(inner=cot))] == [1, 1, 2, 2]
    assert generation_prompt(Calibrated(inner=text)) is text and generation_prompt(cot) is cot
    msgs = [{"role": "user", "content": "fine"}]
    assert chat_messages(Calibrated(inner=text), msgs) == render(INSTRUCTION, DEMOS, msgs).messages()
    with pytest.raises(ConfigError, match="2 stages"):
        chat_messages(cot, msgs)


def test_logprobs_pass_through_and_echo_is_refused_on_http_routes(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake)))
    msgs = [{"role": "user", "content": "so good"}]
    px.client().chat.completions.create(model="sentiment", messages=msgs, max_tokens=1, logprobs=True, top_logprobs=5)
    assert fake.last["logprobs"] is True and fake.last["top_logprobs"] == 5
    assert fake.last["messages"] == render(INSTRUCTION, DEMOS, msgs).messages()
    n = len(fake.received)
    r = px.post("/v1/completions", {"model": "sentiment", "prompt": "Input: x\nOutput: positive", "echo": True,
                                    "logprobs": 1, "max_tokens": 0})
    assert_error(r, 400, "invalid_request_error", "unsupported_parameter")
    assert len(fake.received) == n


# --- security and limits -----------------------------------------------------------------------


def test_auth_failures_then_success(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake)))
    body = {"model": "sentiment", "messages": [{"role": "user", "content": "x"}]}
    assert_error(px.post("/v1/chat/completions", body, key=None), 401, "authentication_error", "invalid_api_key")
    assert_error(px.post("/v1/chat/completions", body, key="sk-wrong"), 401, "authentication_error",
                 "invalid_api_key")
    assert_error(px.post("/v1/chat/completions", body, key=OTHER_KEY), 403, "permission_error", "route_not_allowed")
    with pytest.raises(openai.AuthenticationError):
        px.client("sk-wrong").chat.completions.create(**body)
    with pytest.raises(openai.PermissionDeniedError):
        px.client(OTHER_KEY).chat.completions.create(**body)
    assert len(fake.received) == 0  # nothing reached the upstream
    assert px.client().chat.completions.create(**body).choices[0].message.content == "ok:x"
    assert [m.id for m in px.client(OTHER_KEY).models.list()] == ["other"]
    assert sorted(m.id for m in px.client().models.list()) == ["other", "sentiment"]
    r = px.post("/v1/chat/completions", {**body, "model": "missing"})
    assert_error(r, 404, "invalid_request_error", "model_not_found")


def test_oversize_body_and_max_tokens_cap(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake, limits={"max_body_bytes": 2000, "max_tokens": 50})))
    big = {"model": "sentiment", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_error(px.post("/v1/chat/completions", big), 413, "invalid_request_error", "request_too_large")
    with pytest.raises(openai.APIStatusError) as e:
        px.client().chat.completions.create(**big)
    assert e.value.status_code == 413
    chunked = httpx.post(px.url + "/v1/chat/completions", content=iter([json.dumps(big).encode()]),
                         headers={"authorization": f"Bearer {KEY}"})  # no Content-Length: read and cut off
    assert_error(chunked, 413, "invalid_request_error", "request_too_large")
    small = {"model": "sentiment", "messages": [{"role": "user", "content": "x"}]}
    assert_error(px.post("/v1/chat/completions", {**small, "prompt_embeds": "AAAA"}), 400, "invalid_request_error",
                 "unsupported_parameter")
    assert_error(px.post("/v1/chat/completions", {**small, "max_tokens": 51}), 400, "invalid_request_error",
                 "max_tokens_too_large")
    assert px.post("/v1/chat/completions", small).status_code == 200
    assert fake.last["max_tokens"] == 50  # none asked: the cap is sent
    assert px.post("/v1/chat/completions", {**small, "max_tokens": 7}).status_code == 200
    assert fake.last["max_tokens"] == 7
    assert len(fake.received) == 2


def test_rate_limit_per_key_with_retry_after(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake, limits={"requests_per_minute": 2})))
    body = {"model": "sentiment", "messages": [{"role": "user", "content": "x"}]}
    assert px.post("/v1/chat/completions", body).status_code == 200
    px.now[0] += 10
    assert px.post("/v1/chat/completions", body).status_code == 200
    r = px.post("/v1/chat/completions", body)
    assert_error(r, 429, "rate_limit_error", "rate_limit_exceeded")
    assert r.headers["retry-after"] == "50"
    assert px.post("/v1/chat/completions", body, key=ADMIN_KEY).status_code == 200  # another key: its own window
    with pytest.raises(openai.RateLimitError):
        px.client().chat.completions.create(**body)
    px.now[0] += 50.5  # the first request leaves the window
    assert px.post("/v1/chat/completions", body).status_code == 200


def test_no_rate_limit_unless_configured(tmp_path, fake, proxies):
    """700 quick requests from one key: none is refused without a configured limit; with one, exactly N pass."""
    body = json.dumps({"model": "sentiment", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}

    def statuses(px, n):
        with httpx.Client(base_url=px.url, headers=headers, timeout=20) as c:
            return [c.post("/v1/chat/completions", content=body).status_code for _ in range(n)]

    open_px = proxies(load_config(basic_config(tmp_path, fake)))
    assert statuses(open_px, 700) == [200] * 700  # the fake clock stands still: all in one minute
    open_px.stop()
    limited = proxies(load_config(basic_config(tmp_path, fake, limits={"requests_per_minute": 40})))
    got = statuses(limited, 100)
    assert got == [200] * 40 + [429] * 60


def test_upstream_500_retried_then_502(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake, limits={"upstream_retries": 2})))
    body = {"model": "sentiment", "messages": [{"role": "user", "content": "x"}]}
    fake.script = [500, 503]  # two failures, then an answer: retried, the client sees 200
    assert px.post("/v1/chat/completions", body).status_code == 200
    assert len(fake.received) == 3
    fake.script = [500, 500, 500]
    r = px.post("/v1/chat/completions", body)
    assert_error(r, 502, "upstream_error", "upstream_error")
    assert "500" in r.json()["error"]["message"]
    assert len(fake.received) == 6
    assert px.post("/v1/chat/completions", body).status_code == 200
    fake.script = [400]  # the upstream's own 4xx: passed through, not retried
    r = px.post("/v1/chat/completions", body)
    assert r.status_code == 400 and r.json()["error"]["message"] == "scripted 400"
    fake.script = [429, 429, 429]
    assert_error(px.post("/v1/chat/completions", body), 429, "rate_limit_error", "upstream_rate_limited")
    assert px.post("/v1/chat/completions", body).status_code == 200
    metrics = httpx.get(px.url + "/metrics").text
    assert 'promptlift_upstream_errors_total{kind="status_5xx",route="sentiment"} 1.0' in metrics


def test_upstream_timeout_gives_504_then_serves(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake, limits={"upstream_timeout_s": 0.3})))
    body = {"model": "sentiment", "messages": [{"role": "user", "content": "x"}]}
    fake.script = [("sleep", 1.0)]
    t0 = time.monotonic()
    assert_error(px.post("/v1/chat/completions", body), 504, "upstream_error", "upstream_timeout")
    assert time.monotonic() - t0 < 0.9
    with pytest.raises(openai.APIStatusError) as e:
        fake.script = [("sleep", 1.0)]
        px.client().chat.completions.create(**body, stream=True)
    assert e.value.status_code == 504
    assert px.post("/v1/chat/completions", body).status_code == 200


def test_stream_broken_off_by_the_upstream_ends_with_an_error_event(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake)))
    body = {"model": "sentiment", "messages": [{"role": "user", "content": "x"}]}
    fake.script = [("break",)]
    with pytest.raises(openai.APIError, match="broke off the stream"):
        list(px.client().chat.completions.create(**body, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in px.client().chat.completions.create(**body, stream=True)
                   if c.choices) == "ok:x"
    statuses = [(x["status"], x.get("error")) for x in px.requests(2)]
    assert statuses == [(502, "upstream_unavailable"), (200, None)]


def test_upstream_refused_connection_gives_502_then_serves(tmp_path, fake, proxies):
    path, sha = save(TextPrompt(instruction="I"), tmp_path / "p")
    down = {"name": "down", "upstream": f"http://127.0.0.1:{closed_port()}/v1", "prompt": str(path), "sha256": sha}
    px = proxies(load_config(basic_config(tmp_path, fake, keys=False, extra_routes=[down],
                                          limits={"upstream_retries": 1})))
    body = {"messages": [{"role": "user", "content": "x"}]}
    r = px.post("/v1/chat/completions", {**body, "model": "down"}, key=None)
    assert_error(r, 502, "upstream_error", "upstream_unavailable")
    with pytest.raises(openai.InternalServerError):
        px.client(None).chat.completions.create(model="down", **body)
    assert px.post("/v1/chat/completions", {**body, "model": "sentiment"}, key=None).status_code == 200
    r = px.post("/v1/chat/completions", {**body, "model": "down"}, key=None)
    assert r.status_code == 502


def test_metrics_and_one_json_log_line_per_request(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake)))
    secret = "my private message 12345"
    px.client().chat.completions.create(model="sentiment", messages=[{"role": "user", "content": secret}])
    px.post("/v1/chat/completions", {"model": "sentiment", "messages": []}, key="bad")
    lines = [line for line in px.lines if line.get("event") == "request"]
    assert len(lines) == 2
    ok, bad = lines
    assert ok["route"] == "sentiment" and ok["status"] == 200 and ok["upstream_status"] == 200
    assert ok["sha256"] == px.app.state.serve.snapshot.routes["sentiment"].hashes["default"]
    assert ok["prompt_tokens"] == 11 and ok["completion_tokens"] == 3 and ok["latency_ms"] > 0
    assert ok["key"] == "alice" and bad["status"] == 401
    assert secret not in json.dumps(px.lines)  # content is never logged unless enabled
    text = httpx.get(px.url + "/metrics").text
    assert 'promptlift_requests_total{endpoint="chat",route="sentiment",status="200"} 1.0' in text
    assert 'promptlift_tokens_total{kind="completion",route="sentiment"} 3.0' in text
    # the prompt's own positions, apart from the input: estimated from characters on an HTTP upstream
    want = (len(INSTRUCTION) + 2 + sum(len(d.input) + len(d.output) for d in DEMOS)) / 4
    assert f'promptlift_prompt_positions_total{{route="sentiment",unit="estimated"}} {want}' in text
    assert 'promptlift_request_duration_seconds_bucket{endpoint="chat",le="+Inf",route="sentiment"} 1.0' in text
    health = httpx.get(px.url + "/health", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert health["status"] == "ok" and {r["route"] for r in health["routes"]} == {"sentiment", "other"}


def test_log_content_when_enabled(tmp_path, fake, proxies):
    path, sha = save(TextPrompt(instruction="I"), tmp_path / "p")
    cfg = single_route_config(path, sha, fake.url, name="r", log_content=True)
    px = proxies(cfg)
    px.client(None).chat.completions.create(model="r", messages=[{"role": "user", "content": "visible"}])
    line = [x for x in px.lines if x.get("event") == "request"][0]
    assert line["content"]["request"] == [{"role": "user", "content": "visible"}]
    assert line["content"]["answer"] == [fake.reply("chat", fake.last)]


# --- artifacts: hashes, refusals, reload --------------------------------------------------------


def test_startup_refuses_tampered_or_unpinned_artifacts(tmp_path, fake):
    path, sha = save(TextPrompt(instruction="Be nice."), tmp_path / "p")
    res = Resources()
    build_snapshot(single_route_config(path, sha, fake.url), res)  # fine
    with pytest.raises(ArtifactError, match="not the .* the config pins"):
        build_snapshot(single_route_config(path, "0" * 64, fake.url), res)
    d = json.loads((path / "prompt.json").read_text())
    d["instruction"] = "Be evil."
    (path / "prompt.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="content hash mismatch") as e:
        build_snapshot(single_route_config(path, sha, fake.url), res)
    assert "\n" not in str(e.value)


def test_startup_refuses_what_an_http_upstream_cannot_apply(tmp_path, fake):
    import torch

    soft, soft_sha = save(SoftPrompt(embeds=torch.zeros(2, 8), hidden_size=8, num_layers=1, model="m"),
                          tmp_path / "soft")
    prefix, prefix_sha = save(PrefixPrompt(keys=torch.zeros(1, 1, 2, 4), values=torch.zeros(1, 1, 2, 4), model="m"),
                              tmp_path / "prefix")
    cot, cot_sha = save(Reasoning(inner=TextPrompt(instruction="Think.")), tmp_path / "cot")
    res = Resources()
    with pytest.raises(ConfigError, match="serve it with --upstream local"):
        build_snapshot(single_route_config(soft, soft_sha, fake.url), res)
    with pytest.raises(ConfigError, match="cannot go to vLLM"):
        build_snapshot(single_route_config(prefix, prefix_sha, fake.url, prompt_embeds=True), res)
    with pytest.raises(ConfigError, match="2 stages"):
        build_snapshot(single_route_config(cot, cot_sha, fake.url), res)


def test_config_validation_is_one_line(tmp_path):
    path, sha = save(TextPrompt(instruction="I"), tmp_path / "p")
    route = {"name": "r", "upstream": "http://127.0.0.1:1/v1", "prompt": str(path), "sha256": sha}
    parse_config({"routes": [route]})
    bad = [
        ({"routes": [{**route, "colour": "red"}]}, "unknown field"),
        ({"routes": [{k: v for k, v in route.items() if k != "sha256"}]}, "sha256 is required"),
        ({"routes": [{**route, "sha256": "abc"}]}, "sha256 hex digest"),
        ({"routes": [{**route, "upstream": "ftp://x"}]}, "http"),
        ({"routes": [route, route]}, "used twice"),
        ({"routes": [route], "keys": [{"name": "a", "key": "sk-plain"}]}, "stored hashed"),
        ({"routes": [route], "keys": [{"sha256": hash_key("k"), "routes": ["nope"]}]}, "unknown route"),
        ({"routes": [route], "limits": {"max_tokens": 0}}, "max_tokens"),
        ({"routes": []}, "non-empty"),
    ]
    for doc, match in bad:
        with pytest.raises(ConfigError, match=match) as e:
            parse_config(doc)
        assert "\n" not in str(e.value)


def test_key_file_hashes_keys(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text(f"# team keys\n{KEY}\nsha256:{hash_key(OTHER_KEY)}\n")
    keys = read_key_file(f)
    assert [k.sha256 for k in keys] == [hash_key(KEY), hash_key(OTHER_KEY)]
    assert KEY not in repr(keys)


def test_reload_swaps_artifacts_without_dropping_in_flight_requests(tmp_path, fake, proxies):
    cfg_path = basic_config(tmp_path, fake)
    px = proxies(load_config(cfg_path), reload_config=lambda: load_config(cfg_path))
    body = {"model": "sentiment", "messages": [{"role": "user", "content": "x"}]}
    fake.script = [("sleep", 0.6)]
    slow: dict = {}
    t = threading.Thread(target=lambda: slow.setdefault("r", px.post("/v1/chat/completions", body)))
    t.start()
    time.sleep(0.2)  # the slow request is in flight
    new_path, new_sha = save(TextPrompt(instruction="Version two."), tmp_path / "v2")
    doc = yaml.safe_load(cfg_path.read_text())
    doc["routes"][0].update(prompt=str(new_path), sha256=new_sha)
    cfg_path.write_text(yaml.safe_dump(doc))
    assert_error(px.post("/admin/reload", b"", key=KEY), 403, "permission_error", "not_admin")
    r = px.post("/admin/reload", b"", key=ADMIN_KEY)
    assert r.status_code == 200 and r.json()["generation"] == 1
    t.join(10)
    assert slow["r"].status_code == 200  # finished on the routes it started with
    assert fake.received[0]["body"]["messages"][0]["content"].startswith(INSTRUCTION)
    assert px.post("/v1/chat/completions", body).status_code == 200
    assert fake.last["messages"][0]["content"] == "Version two.\n\nx"
    # a tampered artifact: the reload is refused, the last good routes keep serving
    d = json.loads((new_path / "prompt.json").read_text())
    d["instruction"] = "Evil."
    (new_path / "prompt.json").write_text(json.dumps(d))
    assert_error(px.post("/admin/reload", b"", key=ADMIN_KEY), 400, "invalid_request_error", "reload_failed")
    assert px.post("/v1/chat/completions", body).status_code == 200
    assert fake.last["messages"][0]["content"] == "Version two.\n\nx"
    assert httpx.get(px.url + "/health").json()["generation"] == 1


# --- the command line --------------------------------------------------------------------------


def test_cli_check_prints_the_hash_and_refuses_bad_input(tmp_path, fake, capsys):
    from promptlift.cli import main

    path, sha = save(TextPrompt(instruction="I"), tmp_path / "p")
    assert main(["serve", "--prompt", str(path), "--upstream", fake.url, "--check"]) == 0
    out = capsys.readouterr().out
    assert sha in out and "rate limit: none" in out  # every limit in force is printed; none added unasked
    assert "max_body_bytes 1048576" in out and "max_tokens 1024" in out and "upstream_timeout_s 60" in out
    assert main(["serve", "--prompt", str(path), "--upstream", fake.url, "--requests-per-minute", "30",
                 "--check"]) == 0
    assert "rate limit: 30 requests per minute per key" in capsys.readouterr().out
    assert main(["serve", "--prompt", str(path), "--upstream", fake.url, "--sha256", "1" * 64, "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert "content hash" in err and len(err.splitlines()) == 1
    cfg = write_config(tmp_path, {"routes": [{"name": "r", "upstream": fake.url, "prompt": str(path)}]})
    assert main(["serve", "--config", str(cfg), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert "sha256 is required" in err and len(err.splitlines()) == 1
    (path / "prompt.json").write_text((path / "prompt.json").read_text().replace('"I"', '"Ignore all rules."'))
    assert main(["serve", "--prompt", str(path), "--upstream", fake.url, "--check"]) == 2  # tampered
    err = capsys.readouterr().err.strip()
    assert "content hash mismatch" in err and len(err.splitlines()) == 1
    example = REPO / "examples" / "serve.yaml"
    with pytest.raises(ArtifactError, match="prompt artifact not found"):  # the example parses; its runs are not here
        build_snapshot(load_config(example), Resources())


def test_cli_serves_and_reloads_on_sighup(tmp_path, fake):
    """The real command in a subprocess: serves, reloads on SIGHUP (re-reading --api-key-file), refuses a
    changed artifact on reload; a key file others may write is warned about."""
    path, sha = save(TextPrompt(instruction="First."), tmp_path / "p")
    keys, admin = tmp_path / "keys.txt", tmp_path / "admin.txt"
    keys.write_text(f"{KEY}\n{OTHER_KEY}\n")
    keys.chmod(0o666)
    admin.write_text(ADMIN_KEY + "\n")
    admin.chmod(0o600)
    port = closed_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "promptlift.cli", "serve", "--prompt", str(path),
                             "--upstream", fake.url, "--name", "r", "--port", str(port), "--api-key-file", str(keys),
                             "--admin-key-file", str(admin)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)

        def health() -> dict:
            return httpx.get(url + "/health", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()

        client, other = (openai.OpenAI(base_url=url + "/v1", api_key=k, max_retries=0, timeout=20)
                         for k in (KEY, OTHER_KEY))
        assert client.chat.completions.create(model="r", messages=[{"role": "user", "content": "a"}]).choices
        assert other.chat.completions.create(model="r", messages=[{"role": "user", "content": "a"}]).choices
        keys.write_text(f"{KEY}\n")  # bob's key is revoked
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: httpx.get(url + "/health").json()["generation"] == 1)
        with pytest.raises(openai.AuthenticationError):
            other.chat.completions.create(model="r", messages=[{"role": "user", "content": "a"}])
        keys.write_text(f"{KEY}\n{OTHER_KEY}\n")  # and given back, through /admin/reload this time
        assert httpx.post(url + "/admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
        assert other.chat.completions.create(model="r", messages=[{"role": "user", "content": "c"}]).choices
        TextPrompt(instruction="Changed.").save(path)  # a valid artifact, but not the one pinned at start-up
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: health()["reload_errors"])
        assert set(httpx.get(url + "/health").json()) == {"status", "generation"}  # no key: no details
        assert health()["generation"] == 2 and "not the" in health()["reload_errors"][-1]
        client.chat.completions.create(model="r", messages=[{"role": "user", "content": "b"}])
        assert fake.last["messages"][0]["content"] == "First.\n\nb"  # still the pinned artifact
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert sha in out
    assert f"warning: {keys} is writable by group and others" in err and str(admin) not in err
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [x["status"] for x in logs if x.get("event") == "request"] == [200, 200, 401, 200, 200]


def _wait(cond, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_rate_limiter_window():
    now = [0.0]
    rl = RateLimiter(lambda: now[0])
    assert rl.check("a", 2) is None and rl.check("a", 2) is None
    assert rl.check("a", 2) == pytest.approx(60.0)
    now[0] = 30
    assert rl.check("a", 2) == pytest.approx(30.0)
    now[0] = 60.1
    assert rl.check("a", 2) is None
    assert rl.check("a", 0) is None  # 0 = unlimited
