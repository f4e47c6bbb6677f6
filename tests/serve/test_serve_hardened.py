"""The proxy against bad clients and bad upstreams (issue 23 §2): each case reproduced on a running proxy,
with the real `openai` client or raw HTTP, against the fault-injecting fake upstream of test_serve."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest
import yaml

from promptlift.artifacts import TextPrompt
from promptlift.errors import ConfigError
from promptlift.serve.config import load_config, parse_config
from fakes import ADMIN_KEY, DEMOS, INSTRUCTION, KEY, OTHER_KEY, assert_error, basic_config, closed_port, fake, proxies, save  # noqa: F401

BODY = {"model": "sentiment", "messages": [{"role": "user", "content": "x"}]}


def raw_post(px, body: bytes, key: str = KEY) -> httpx.Response:
    return httpx.post(px.url + "/v1/chat/completions", content=body, timeout=20,
                      headers={"authorization": f"Bearer {key}", "content-type": "application/json"})


# --- the pool: long streams never hold up short requests ----------------------------------------------


def test_long_streams_do_not_make_short_requests_wait(tmp_path, fake, proxies):
    """8 streams held open by the upstream (each opened between two short requests, as real traffic comes);
    short requests are still answered at once, none waits for a connection those streams hold."""
    px = proxies(load_config(basic_config(tmp_path, fake, limits={"upstream_max_connections": 16,
                                                                  "upstream_timeout_s": 6})))
    client = px.client()
    streams, threads = [], []
    for i in range(8):
        fake.script.append(("hold", 3.0))
        n = len(fake.received)
        t = threading.Thread(target=lambda: streams.append("".join(
            c.choices[0].delta.content or "" for c in client.chat.completions.create(**BODY, stream=True)
            if c.choices)))
        t.start()
        threads.append(t)
        while len(fake.received) == n:
            time.sleep(0.01)
        t0 = time.monotonic()
        assert client.chat.completions.create(**BODY).choices[0].message.content == "ok:x"
        assert time.monotonic() - t0 < 1.0
    for _ in range(8):
        t0 = time.monotonic()
        assert client.chat.completions.create(**BODY).choices[0].message.content == "ok:x"
        assert time.monotonic() - t0 < 1.0, "a short request waited behind the long streams"
    for t in threads:
        t.join(20)
    assert streams == ["ok:x"] * 8


# --- the hidden prompt is never handed back -----------------------------------------------------------


def _leaks(text: str) -> bool:
    flat = "".join(ch for ch in text.lower() if ch.isalnum())
    return any("".join(ch for ch in s.lower() if ch.isalnum()) in flat
               for s in (INSTRUCTION, DEMOS[0].input, DEMOS[1].input))


@pytest.mark.parametrize("status", [400, 422, 500])
def test_upstream_errors_quoting_the_request_are_scrubbed(tmp_path, fake, proxies, status):
    px = proxies(load_config(basic_config(tmp_path, fake, limits={"upstream_retries": 0})))
    fake.script = [("quote", status)]
    r = raw_post(px, json.dumps(BODY).encode())
    assert _leaks(json.dumps(fake.received[-1]))  # the upstream did quote it
    assert r.status_code == (502 if status >= 500 else status)
    assert r.json()["error"]["message"] and not _leaks(r.text), r.text
    fake.script = [("quote", status)]  # streaming requests too, through the real client
    with pytest.raises(openai.APIStatusError) as e:
        px.client().chat.completions.create(**BODY, stream=True)
    assert not _leaks(e.value.response.text) and not _leaks(str(e.value))
    fake.script = [("quote", status)]
    with pytest.raises(openai.APIStatusError) as e:
        px.client().completions.create(model="sentiment", prompt="x")
    assert not _leaks(e.value.response.text)


@pytest.mark.parametrize("field,value", [("prompt_logprobs", 1), ("echo", True), ("chat_template", "{{ messages }}"),
                                         ("chat_template_kwargs", {"x": 1}), ("return_token_ids", True)])
def test_fields_that_return_the_prompt_are_refused(tmp_path, fake, proxies, field, value):
    px = proxies(load_config(basic_config(tmp_path, fake)))
    with pytest.raises(openai.BadRequestError, match=field):
        px.client().chat.completions.create(**BODY, extra_body={field: value})
    assert_error(px.post("/v1/chat/completions", {**BODY, field: value}), 400, "invalid_request_error",
                 "unsupported_parameter")
    assert fake.received == []
    assert px.post("/v1/chat/completions", {**BODY, "echo": False, "prompt_logprobs": None}).status_code == 200


def test_502_and_504_do_not_name_the_upstream(tmp_path, fake, proxies):
    path, sha = save(TextPrompt(instruction="I"), tmp_path / "p")
    port = closed_port()
    down = {"name": "down", "upstream": f"http://127.0.0.1:{port}/v1", "prompt": str(path), "sha256": sha}
    px = proxies(load_config(basic_config(tmp_path, fake, keys=False, extra_routes=[down],
                                          limits={"upstream_retries": 0, "upstream_timeout_s": 0.3})))
    r = px.post("/v1/chat/completions", {**BODY, "model": "down"}, key=None)
    assert_error(r, 502, "upstream_error", "upstream_unavailable")
    fake.script = [("sleep", 1.0)]
    r2 = px.post("/v1/chat/completions", BODY, key=None)
    assert_error(r2, 504, "upstream_error", "upstream_timeout")
    fake_port = fake.url.split(":")[-1].split("/")[0]
    for text in (r.text, r2.text):
        assert "127.0.0.1" not in text and str(port) not in text and fake_port not in text


# --- keys ---------------------------------------------------------------------------------------------


def test_a_key_picks_only_its_prompts_and_404_names_only_its_routes(tmp_path, fake, proxies):
    c42, c42_sha = save(TextPrompt(instruction="Customer 42 style."), tmp_path / "c42")
    c7, c7_sha = save(TextPrompt(instruction="Customer 7 style."), tmp_path / "c7")
    cfg_path = basic_config(tmp_path, fake, prompts={"c42": {"path": str(c42), "sha256": c42_sha},
                                                     "c7": {"path": str(c7), "sha256": c7_sha}})
    doc = yaml.safe_load(cfg_path.read_text())
    doc["keys"][0]["prompts"] = ["c42"]  # alice: customer 42's prompt only
    px = proxies(parse_config(doc, cfg_path))
    client = px.client()
    msgs = [{"role": "user", "content": "hi"}]
    out = client.chat.completions.with_raw_response.create(model="sentiment", messages=msgs,
                                                           extra_headers={"X-Promptlift-Prompt": "c42"})
    assert out.headers["x-promptlift-prompt-name"] == "c42"
    for name in ("c7", None):  # another customer's prompt, or the route's own: not this key's
        with pytest.raises(openai.PermissionDeniedError, match="may use: c42"):
            client.chat.completions.create(model="sentiment", messages=msgs,
                                           extra_headers={"X-Promptlift-Prompt": name} if name else None)
    r = px.post("/v1/chat/completions", {**BODY, "model": "sentiment"}, headers={"X-Promptlift-Prompt": "c99"})
    assert_error(r, 400, "invalid_request_error", "prompt_not_found")
    assert "c7" not in r.text and "default" not in r.text
    assert len(fake.received) == 1
    assert px.client(ADMIN_KEY).chat.completions.create(  # a key without `prompts`: every prompt
        model="sentiment", messages=msgs, extra_headers={"X-Promptlift-Prompt": "c7"}).choices
    r = px.post("/v1/chat/completions", {**BODY, "model": "nope"}, key=OTHER_KEY)  # bob may use "other" only
    assert_error(r, 404, "invalid_request_error", "model_not_found")
    assert "other" in r.json()["error"]["message"] and "sentiment" not in r.json()["error"]["message"]
    doc["keys"][0]["prompts"] = ["c43"]
    with pytest.raises(ConfigError, match="unknown prompt"):
        parse_config(doc, cfg_path)


def test_health_details_need_an_admin_key(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake)))
    for key in (None, "sk-wrong", KEY):
        h = {"authorization": f"Bearer {key}"} if key else {}
        body = httpx.get(px.url + "/health", headers=h).json()
        assert body == {"status": "ok", "generation": 0}
    details = httpx.get(px.url + "/health", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert {r["route"] for r in details["routes"]} == {"sentiment", "other"}
    assert details["routes"][0]["upstream"] == fake.url and "sha256" in details["routes"][0]["prompts"]["default"]


# --- client input that used to reach a 500 ------------------------------------------------------------


def test_hostile_bodies_get_400_with_an_openai_body(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake, limits={"max_body_bytes": 1 << 21})))
    deep = b'{"model": "sentiment", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_error(raw_post(px, deep), 400, "invalid_request_error", "invalid_json")
    lone = b'{"model": "sentiment", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    assert_error(raw_post(px, lone), 400, "invalid_request_error", "invalid_json")
    pair = b'{"model": "sentiment", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert raw_post(px, pair).status_code == 200  # a surrogate pair is a character: fine
    for bad in (b'"stream": "false"', b'"temperature": NaN', b'"temperature": Infinity', b'"top_p": 1e999',
                b'"max_tokens": "5"', b'"messages": [{"role": "user", "content": 5}]', b'"logit_bias": {"1": -Infinity}'):
        body = b'{"model": "sentiment", "messages": [{"role": "user", "content": "x"}], ' + bad + b"}"
        assert_error(raw_post(px, body), 400, "invalid_request_error",
                     "invalid_json" if any(x in bad for x in (b"NaN", b"Infinity", b"e999")) else "invalid_value")
    with pytest.raises(openai.BadRequestError, match="stream"):
        px.client().chat.completions.create(**BODY, extra_body={"stream": "false"})
    assert len(fake.received) == 1  # the surrogate pair's only
    assert_error(httpx.get(px.url + "/v1/nothing"), 404, "invalid_request_error", "not_found")
    assert_error(httpx.get(px.url + "/v1/chat/completions"), 405, "invalid_request_error", "method_not_allowed")
    with pytest.raises(openai.NotFoundError):
        px.client().embeddings.create(model="sentiment", input="x")


# --- slow clients -------------------------------------------------------------------------------------


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before it closed the connection; fails if it is still open after `seconds`."""
    sock.settimeout(seconds)
    got = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return got
        got += chunk


def test_slow_clients_are_timed_out_and_connections_limited(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake, limits={
        "client_header_timeout_s": 0.5, "client_body_timeout_s": 0.5, "max_connections": 4})))
    host, port = "127.0.0.1", int(px.url.rsplit(":", 1)[1])
    half_head = socket.create_connection((host, port))
    half_head.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # the head never ends
    silent = socket.create_connection((host, port))
    t0 = time.monotonic()
    assert _closed_within(half_head, 3) == b"" and _closed_within(silent, 3) == b""
    assert time.monotonic() - t0 < 2.0
    half_body = socket.create_connection((host, port))
    half_body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                      + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"")
    answer = _closed_within(half_body, 3)
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    # a kept-alive connection's next head is timed out too
    kept = socket.create_connection((host, port))
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    kept.settimeout(3)
    got = b""
    while not got.endswith(b"}"):
        got += kept.recv(4096)
    assert got.startswith(b"HTTP/1.1 200")
    kept.sendall(b"GET /health HTTP/1.1\r\n")
    assert _closed_within(kept, 3) == b""
    idle = [socket.create_connection((host, port)) for _ in range(4)]  # the connection limit is reached
    time.sleep(0.1)
    assert px.post("/v1/chat/completions", BODY).status_code == 503
    for s in idle + [half_head, silent, half_body, kept]:
        s.close()
    time.sleep(0.2)
    assert px.post("/v1/chat/completions", BODY).status_code == 200


# --- reloads close the pools they replace -------------------------------------------------------------


def test_reloads_that_change_limits_close_the_old_pools(tmp_path, fake, proxies):
    cfg_path = basic_config(tmp_path, fake)
    doc = yaml.safe_load(cfg_path.read_text())
    gen = [0]

    def next_config():
        gen[0] += 1
        doc["limits"] = {"upstream_timeout_s": 30 + gen[0]}  # every reload: new limits, a new pool
        return parse_config(doc, cfg_path)

    px = proxies(load_config(cfg_path), reload_config=next_config)
    res = px.app.state.serve.resources
    open_conns = fake.server.server.server_state.connections
    pools = []
    for round_ in range(5):
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(px.post("/v1/chat/completions", BODY).status_code))
                   for _ in range(6)]
        fake.script = [("sleep", 0.3)] * 6  # six at once: six connections
        for t in threads:
            t.start()
        time.sleep(0.1)
        pools.append(px.app.state.serve.snapshot.routes["sentiment"].http)
        assert px.post("/admin/reload", b"", key=ADMIN_KEY).status_code == 200  # while they are in flight
        for t in threads:
            t.join(10)
        assert results == [200] * 6  # the retired pool finished them
    deadline = time.monotonic() + 3
    while len(open_conns) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(open_conns) == 0, f"{len(open_conns)} upstream connections left open after 5 reloads"
    assert all(p.retired and p._clients == [] for p in pools)
    assert len(res.http) == 1  # the live pool only
    assert px.post("/v1/chat/completions", BODY).status_code == 200


# --- a client that goes away ----------------------------------------------------------------------------


def test_client_gone_before_the_first_byte_cancels_the_upstream_call(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake)))
    pool = px.app.state.serve.snapshot.routes["sentiment"].http
    for stream in (False, True):
        fake.script = [("sleep", 3.0)]
        t0 = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            px.client().with_options(timeout=0.3).chat.completions.create(**BODY, stream=stream)
        line = px.requests(1 + stream, timeout=2.0)[-1]
        assert line["status"] == 499 and line["error"] == "client_closed_request" and line["upstream_status"] is None
        assert time.monotonic() - t0 < 2.0 and pool.in_flight == 0  # cancelled, not waited out
    assert 'status="499"' in httpx.get(px.url + "/metrics").text


# --- an upstream that ignores `stream` ---------------------------------------------------------------------


def test_a_whole_json_answer_to_a_stream_request_is_sent_as_a_stream(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake)))
    client = px.client()
    fake.script = [("json",)]
    chunks = list(client.chat.completions.create(**BODY, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok:x"
    assert chunks[-1].usage.total_tokens == 14 and chunks[-2].choices[0].finish_reason == "stop"
    fake.script = [("json",)]
    assert "".join(c.choices[0].text for c in client.completions.create(model="sentiment", prompt="x",
                                                                        stream=True)) == "ok:" + fake.last["prompt"][-24:]
    assert px.requests(2)[-1]["status"] == 200


# --- Retry-After ------------------------------------------------------------------------------------------------


def test_retry_after_is_honoured_whole_or_passed_on(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake, limits={"upstream_retries": 2, "upstream_timeout_s": 8})))
    fake.script = [("status", 429, {"retry-after-ms": "2500"})]  # longer than the old 2 s cap
    t0 = time.monotonic()
    assert px.post("/v1/chat/completions", BODY).status_code == 200
    assert time.monotonic() - t0 >= 2.5 and len(fake.received) == 2
    for status, error in ((429, openai.RateLimitError), (503, openai.InternalServerError)):
        fake.script = [("status", status, {"retry-after": "30"})]  # more than the time left: given up at once
        n, t0 = len(fake.received), time.monotonic()
        with pytest.raises(error) as e:
            px.client().chat.completions.create(**BODY)
        assert time.monotonic() - t0 < 1.0 and len(fake.received) == n + 1
        assert e.value.status_code == status and e.value.response.headers["retry-after"] == "30"
    fake.script = [503, 503, 503]  # a 503 stays a 503 after the retries
    assert_error(px.post("/v1/chat/completions", BODY), 503, "upstream_error", "upstream_overloaded")


def test_limits_fields_are_validated(tmp_path):
    path, sha = save(TextPrompt(instruction="I"), tmp_path / "p")
    route = {"name": "r", "upstream": "http://127.0.0.1:1/v1", "prompt": str(path), "sha256": sha}
    for limits, match in (({"client_header_timeout_s": 0}, "client_header_timeout_s"),
                          ({"max_connections": 0}, "max_connections")):
        with pytest.raises(ConfigError, match=match):
            parse_config({"routes": [route], "limits": limits})


def test_client_gone_mid_stream_is_logged_as_499(tmp_path, fake, proxies):
    px = proxies(load_config(basic_config(tmp_path, fake)))
    fake.script = [("hold", 2.0)]
    with httpx.stream("POST", px.url + "/v1/chat/completions", json={**BODY, "stream": True}, timeout=5,
                      headers={"authorization": f"Bearer {KEY}"}) as r:
        first = next(r.iter_lines())
        assert first.startswith("data:")  # the first chunk came, then the client hangs up
    line = px.requests(1, timeout=3.0)[-1]
    assert line["status"] == 499 and line["error"] == "client_closed_request"
