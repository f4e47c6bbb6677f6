"""OpenAIModel against a fake OpenAI-compatible server (httpx.MockTransport; no network)."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from promptlift.errors import BudgetExceeded, ModelError, UnsupportedError
from promptlift.lm.base import GenerationConfig
from promptlift.lm.budget import Budget
from promptlift.lm.cache import CallCache
from promptlift.lm.openai import OpenAIModel

SECRET = "sk-test-SECRET-do-not-store-1234"
BASE = "http://fake-server.test/v1"
_TOK = re.compile(r"\s?\w+|\s?[^\w\s]|\s+")


def tokenize(text: str) -> list[str]:
    return _TOK.findall(text)


def tok_logprob(tok: str) -> float:
    return -len(tok) / 10.0


class FakeServer:
    """Answers /chat/completions and /completions; scripted failures; counts calls and concurrency."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.script: list = []  # items: (status, body) or an exception to raise, used before normal answers
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.echo_supported = True
        self.min_max_tokens = 0

    @property
    def calls(self) -> int:
        return len(self.requests)

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with self.lock:
            self.requests.append({"path": request.url.path, **body})
            self.headers.append(dict(request.headers))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            scripted = self.script.pop(0) if self.script else None
        try:
            if self.delay:
                time.sleep(self.delay)
            if isinstance(scripted, Exception):
                raise scripted
            if scripted is not None:
                status, payload = scripted
                return httpx.Response(status, json=payload)
            return self.answer(request.url.path, body)
        finally:
            with self.lock:
                self.in_flight -= 1

    def answer(self, path: str, body: dict) -> httpx.Response:
        n = body.get("n", 1)
        usage = {"prompt_tokens": 10, "completion_tokens": 3 * n, "total_tokens": 10 + 3 * n}
        if path.endswith("/chat/completions"):
            last = body["messages"][-1]["content"]
            choices = [{"index": i, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"chat:{last}:{i}:t={body.get('temperature')}"}}
                       for i in range(n)]
            return httpx.Response(200, json={"id": "c1", "object": "chat.completion", "created": 0,
                                             "model": body["model"], "choices": choices, "usage": usage})
        if body.get("echo"):
            if not self.echo_supported:
                return httpx.Response(400, json={"error": {"message": "echo is not supported by this server",
                                                           "type": "invalid_request_error"}})
            if body.get("max_tokens", 16) < self.min_max_tokens:
                return httpx.Response(400, json={"error": {"message": "max_tokens must be at least 1, got 0"}})
            text = body["prompt"]
            toks = tokenize(text) + ([" EXTRA"] if body.get("max_tokens") else [])
            offs, pos = [], 0
            for t in toks:
                offs.append(pos)
                pos += len(t)
            lps = [None] + [tok_logprob(t) for t in toks[1:]]
            choice = {"index": 0, "finish_reason": "length", "text": "".join(toks),
                      "logprobs": {"tokens": toks, "token_logprobs": lps, "text_offset": offs,
                                   "top_logprobs": [None] + [{t: tok_logprob(t)} for t in toks[1:]]}}
            return httpx.Response(200, json={"id": "s1", "object": "text_completion", "created": 0,
                                             "model": body["model"], "choices": [choice],
                                             "usage": {"prompt_tokens": len(toks), "completion_tokens": 0,
                                                       "total_tokens": len(toks)}})
        choices = [{"index": i, "finish_reason": "stop", "text": f"text:{body['prompt']}:{i}", "logprobs": None}
                   for i in range(n)]
        return httpx.Response(200, json={"id": "t1", "object": "text_completion", "created": 0,
                                         "model": body["model"], "choices": choices, "usage": usage})


@pytest.fixture
def server():
    return FakeServer()


@pytest.fixture
def cache(tmp_path):
    c = CallCache(tmp_path / "calls.sqlite")
    yield c
    c.close()


def make(server: FakeServer, cache: CallCache | None, **kw) -> OpenAIModel:
    kw.setdefault("retry_backoff", 0.001)
    return OpenAIModel("fake-model", base_url=BASE, api_key=SECRET,
                       cache=cache if cache is not None else CallCache(enabled=False),
                       http_client=httpx.Client(transport=httpx.MockTransport(server.handler)), **kw)


CHAT = [{"role": "user", "content": "hi"}]


def test_model_id_and_env_defaults(monkeypatch, server):
    monkeypatch.setenv("PROMPTLIFT_BASE_URL", "http://user:pw@localhost:8000/v1/?token=x")
    monkeypatch.delenv("PROMPTLIFT_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    m = OpenAIModel("m", cache=CallCache(enabled=False))
    assert m.model_id == "openai:http://localhost:8000/v1:m"  # no credentials in the id
    assert m._client.api_key == "EMPTY"
    assert m._client.max_retries == 0
    m2 = make(server, None)
    assert m2.model_id == f"openai:{BASE}:fake-model"


def test_chat_and_completion_endpoints_and_params(server):
    m = make(server, None)
    cfg = GenerationConfig(n=3, temperature=0.7, max_tokens=20, stop=["\n"], top_p=0.9, seed=5)
    out = m.generate([CHAT, "plain"], cfg)
    assert out[0] == [f"chat:hi:{i}:t=0.7" for i in range(3)]
    assert out[1] == [f"text:plain:{i}" for i in range(3)]
    by_path = {r["path"]: r for r in server.requests}
    chat, comp = by_path["/v1/chat/completions"], by_path["/v1/completions"]
    for r in (chat, comp):
        assert r["n"] == 3 and r["temperature"] == 0.7 and r["max_tokens"] == 20
        assert r["stop"] == ["\n"] and r["top_p"] == 0.9 and r["seed"] == 5 and r["model"] == "fake-model"
    assert chat["messages"] == CHAT and comp["prompt"] == "plain"
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"
    assert m.budget.calls == 2 and m.budget.prompt_tokens == 20 and m.budget.completion_tokens == 18


def test_retry_429_then_ok(server):
    server.script = [(429, {"error": {"message": "slow down"}})]
    m = make(server, None)
    assert m.generate([CHAT])[0] == ["chat:hi:0:t=0.0"]
    assert server.calls == 2
    assert m.budget.calls == 1


@pytest.mark.parametrize("failure", [
    (503, {"error": {"message": "overloaded"}}),
    (500, {"error": {"message": "boom"}}),
    httpx.ConnectError("refused"),
    httpx.ReadTimeout("too slow"),
])
def test_retry_5xx_timeouts_connection_errors(server, failure):
    server.script = [failure, failure]
    m = make(server, None)
    assert m.generate(["x"])[0] == ["text:x:0"]
    assert server.calls == 3


def test_retries_are_bounded(server):
    server.script = [(503, {"error": {"message": "overloaded"}})] * 10
    m = make(server, None, max_retries=2)
    with pytest.raises(ModelError) as ei:
        m.generate(["x"])
    assert server.calls == 3
    msg = str(ei.value)
    assert "503" in msg and "overloaded" in msg and "\n" not in msg


def test_400_is_model_error_with_server_message(server):
    server.script = [(400, {"error": {"message": "This model's maximum context length is 4096 tokens",
                                      "type": "invalid_request_error"}})]
    m = make(server, None)
    with pytest.raises(ModelError) as ei:
        m.generate([CHAT])
    assert server.calls == 1  # not retried
    msg = str(ei.value)
    assert "400" in msg and "maximum context length is 4096 tokens" in msg and "\n" not in msg
    assert SECRET not in msg


def test_cache_hit_and_misses(server, cache):
    m = make(server, cache)
    cfg = GenerationConfig(temperature=0.5)
    first = m.generate([CHAT], cfg)
    again = m.generate([CHAT], cfg)
    assert again == first and server.calls == 1
    assert m.budget.cached_calls == 1 and m.budget.calls == 1

    m.generate([CHAT], GenerationConfig(temperature=0.6))  # other temperature: miss
    assert server.calls == 2
    m.generate([CHAT], cfg, rollout=1)  # fresh sample: miss ...
    assert server.calls == 3
    m.generate([CHAT], cfg, rollout=1)  # ... that is cached in turn
    assert server.calls == 3 and m.budget.cached_calls == 2
    m.generate([CHAT], GenerationConfig(temperature=0.5, n=2))  # other n: miss
    assert server.calls == 4

    # persists across objects and processes sharing the file
    m2 = make(server, CallCache(cache.path))
    assert m2.generate([CHAT], cfg) == first and server.calls == 4 and m2.budget.cached_calls == 1


def test_rollout_from_config_attribute(server, cache):
    m = make(server, cache)
    cfg = GenerationConfig(temperature=1.0)
    m.generate(["p"], cfg)
    cfg.rollout = 3  # GenerationConfig may carry a rollout number
    m.generate(["p"], cfg)
    assert server.calls == 2


def test_duplicates_in_one_batch_sent_once(server, cache):
    m = make(server, cache)
    out = m.generate(["a", "a", "b"])
    assert out[0] == out[1] == ["text:a:0"] and out[2] == ["text:b:0"]
    assert server.calls == 2 and m.budget.cached_calls == 1


def test_no_cache_sends_every_request(server):
    m = make(server, CallCache(enabled=False))
    m.generate(["a", "a"])
    m.generate(["a"])
    assert server.calls == 3 and m.budget.cached_calls == 0


def test_secrets_not_in_key_or_file(server, cache, tmp_path):
    m = make(server, cache)
    m.generate([CHAT, "plain"])
    m.score("Q:", [" yes"])
    other = OpenAIModel("fake-model", base_url=BASE, api_key="sk-another-key", cache=cache,
                        http_client=httpx.Client(transport=httpx.MockTransport(server.handler)))
    calls = server.calls
    other.generate([CHAT, "plain"])
    assert server.calls == calls  # the key does not depend on the API key
    cache.close()
    for f in tmp_path.iterdir():
        assert SECRET.encode() not in f.read_bytes(), f


def test_concurrency_is_bounded(cache):
    server = FakeServer(delay=0.03)
    m = make(server, cache, max_concurrency=3)
    out = m.generate([f"p{i}" for i in range(15)])
    assert out == [[f"text:p{i}:0"] for i in range(15)]
    assert server.calls == 15
    assert 1 < server.max_in_flight <= 3


def test_concurrency_bounded_across_threads():
    server = FakeServer(delay=0.02)
    m = make(server, None, max_concurrency=2)
    threads = [threading.Thread(target=m.generate, args=([f"t{j}-{i}" for i in range(4)],)) for j in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.calls == 12 and server.max_in_flight <= 2


def test_budget_calls_limit(server):
    m = make(server, None, max_concurrency=1, budget=Budget(limits={"calls": 2}))
    with pytest.raises(BudgetExceeded):
        m.generate([f"p{i}" for i in range(6)])
    assert server.calls == 2  # calls=2 means at most 2 calls: the third is refused before it is sent


@pytest.mark.parametrize("limit", [1, 5, 13])
def test_budget_calls_limit_holds_with_requests_in_flight(limit):
    slow = FakeServer(delay=0.02)
    m = make(slow, None, max_concurrency=8, budget=Budget(limits={"calls": limit}))
    with pytest.raises(BudgetExceeded):
        m.generate([f"p{i}" for i in range(40)])
    assert slow.calls == limit and m.budget.calls == limit and m.budget.in_flight == 0
    assert slow.max_in_flight <= 8


def test_retries_are_counted_apart_from_calls(server):
    server.script = [(429, {"error": {"message": "slow"}}), (503, {"error": {"message": "busy"}})]
    m = make(server, None)
    assert m.generate(["p"]) == [["text:p:0"]]
    assert m.budget.calls == 1 and m.budget.retries == 2 and server.calls == 3


def test_budget_token_limit_and_paid_result_is_cached(server, cache):
    m = make(server, cache, budget=Budget(limits={"tokens": 5}))
    with pytest.raises(BudgetExceeded):
        m.generate(["p"])
    m2 = make(server, cache)
    assert m2.generate(["p"]) == [["text:p:0"]] and server.calls == 1


def test_score_sums_continuation_logprobs(server, cache):
    m = make(server, cache)
    prompt = "Q: What is 2+2? A:"
    conts = [" 4", " four, surely", ""]
    got = m.score(prompt, conts)
    expected = [sum(tok_logprob(t) for t in tokenize(c)) for c in conts]
    assert got == pytest.approx(expected)
    assert got[0] == pytest.approx(-0.2)
    reqs = [r for r in server.requests if r["path"] == "/v1/completions"]
    assert len(reqs) == 2  # the empty continuation needs no call
    for r in reqs:
        assert r["echo"] is True and r["logprobs"] == 1 and r["max_tokens"] == 0
    assert {r["prompt"] for r in reqs} == {prompt + " 4", prompt + " four, surely"}
    # scores are cached
    assert m.score(prompt, conts[:2]) == pytest.approx(expected[:2])
    assert server.calls == 2 and m.budget.cached_calls == 2


def test_score_falls_back_to_one_token_and_drops_it(server):
    server.min_max_tokens = 1
    m = make(server, None)
    assert m.score("A:", [" yes"]) == [pytest.approx(tok_logprob(" yes"))]
    assert [r["max_tokens"] for r in server.requests] == [0, 1]


def test_score_unsupported_echo(server):
    server.echo_supported = False
    m = make(server, None)
    with pytest.raises(UnsupportedError) as ei:
        m.score("A:", [" yes"])
    msg = str(ei.value)
    assert "echo is not supported" in msg and "\n" not in msg
    assert server.calls == 1


def test_score_without_logprobs_in_response_is_unsupported(server):
    server.script = [(200, {"id": "x", "object": "text_completion", "created": 0, "model": "fake-model",
                            "choices": [{"index": 0, "text": "A: yes", "finish_reason": "length",
                                         "logprobs": None}]})]
    m = make(server, None)
    with pytest.raises(UnsupportedError):
        m.score("A:", [" yes"])


def test_score_chat_prompt_is_unsupported(server):
    m = make(server, None)
    assert m.can_score
    with pytest.raises(UnsupportedError) as ei:
        m.score(CHAT, [" yes"])
    assert "chat" in str(ei.value)
    assert server.calls == 0


def test_custom_client_retries_disabled(server):
    import openai

    client = openai.OpenAI(base_url=BASE, api_key=SECRET, max_retries=7,
                           http_client=httpx.Client(transport=httpx.MockTransport(server.handler)))
    server.script = [(429, {"error": {"message": "slow"}})] * 3
    m = OpenAIModel("fake-model", client=client, cache=CallCache(enabled=False), max_retries=1,
                    retry_backoff=0.001)
    assert m.model_id == f"openai:{BASE}:fake-model"
    with pytest.raises(ModelError):
        m.generate(["x"])
    assert server.calls == 2  # 1 try + 1 retry; the client's own 7 retries are off


def test_max_completion_tokens_fallback(server):
    server.script = [(400, {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this "
                                                 "model. Use 'max_completion_tokens' instead."}})]
    m = make(server, None)
    assert m.generate([CHAT], GenerationConfig(max_tokens=7)) == [["chat:hi:0:t=0.0"]]
    assert "max_tokens" not in server.requests[1] and server.requests[1]["max_completion_tokens"] == 7
