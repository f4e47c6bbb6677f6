"""A backend for any OpenAI-compatible endpoint (OpenAI, vLLM, SGLang, llama.cpp, TGI, ...).

`generate` sends chat prompts (lists of messages) to /chat/completions and plain
string prompts to /completions. `score` uses /completions with `echo=True,
logprobs=1, max_tokens=0`, which only completion servers that echo prompt
log-probabilities support (e.g. vLLM); chat endpoints cannot score given text.

Every request goes through a `CallCache` first; the backend retries rate limits
(429), server errors (5xx), timeouts and connection errors with exponential
backoff and jitter, and charges the model's `Budget` from the response's usage.

Environment:
  PROMPTLIFT_BASE_URL or OPENAI_BASE_URL: the endpoint (default: OpenAI's).
  PROMPTLIFT_API_KEY or OPENAI_API_KEY: the key ("EMPTY" if none: local servers need none).
"""

from __future__ import annotations

import contextvars
import os
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import openai as _openai

from ..errors import BudgetExceeded, ModelError, UnsupportedError, UpstreamError
from .base import LM, GenerationConfig, PromptLike
from .budget import Budget, ledger_of
from .cache import CallCache

__all__ = ["OpenAIModel"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx except 501
_SCORE_UNSUPPORTED_STATUS = {400, 404, 405, 422, 501}
_MAX_BACKOFF_S = 30.0
# Constrained choice among given answers (vLLM): today's spelling, then the older one; a server that has
# neither ignores them (an answer outside the choices) or refuses them (400), and is asked plainly after that.
GUIDED_CHOICE = ("structured_outputs", "guided_choice")


def _public_url(url: str) -> str:
    """`url` without user:password and query string (they may hold secrets)."""
    try:
        p = urlsplit(url)
    except ValueError:
        return url
    host = p.netloc.rsplit("@", 1)[-1]
    return urlunsplit((p.scheme, host, p.path.rstrip("/"), "", ""))


def _server_message(e: Exception) -> str:
    """The server's error message of an openai APIError, on one line."""
    body = getattr(e, "body", None)
    msg = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err.get("msg")
        elif isinstance(err, str):
            msg = err
        if msg is None and "detail" in body:
            msg = body["detail"]
    elif isinstance(body, str) and body.strip():
        msg = body
    if msg is None:
        msg = getattr(e, "message", None) or str(e)
    msg = " ".join(str(msg).split())
    return msg[:500] + ("..." if len(msg) > 500 else "")


def retryable_status(status: int) -> bool:
    """Whether an HTTP status is worth retrying (rate limits, conflicts, timeouts, 5xx but 501): the one rule
    for the client here and the serving proxy's upstream."""
    return status in _RETRY_STATUS or (status >= 500 and status != 501)


def _retry_after(e: Exception) -> float | None:
    resp = getattr(e, "response", None)
    headers = getattr(resp, "headers", None)
    return None if headers is None else retry_after(headers)


def retry_after(headers) -> float | None:
    """Seconds a server asked us to wait (`retry-after-ms` or `retry-after`, in seconds), or None."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        v = headers.get(name)
        if v is not None:
            try:
                return max(0.0, float(v) * scale)
            except ValueError:
                return None
    return None


class _RequestFailed(Exception):
    """A non-retryable (or out-of-retries) API error; carries status and message."""

    def __init__(self, status: int | None, message: str, attempts: int):
        super().__init__(message)
        self.status, self.message, self.attempts = status, message, attempts


class OpenAIModel(LM):
    """A model behind an OpenAI-compatible HTTP API.

    Args:
      model: the model name the server knows (e.g. "gpt-4o-mini", "Qwen/Qwen2.5-7B-Instruct").
      base_url: the endpoint; default $PROMPTLIFT_BASE_URL, $OPENAI_BASE_URL, then OpenAI's.
      api_key: default $PROMPTLIFT_API_KEY, $OPENAI_API_KEY, then "EMPTY".
      max_concurrency: most requests in flight at once (over all calls of this object).
      max_retries: retries of a request after a 429, 5xx, timeout or connection error.
      timeout: seconds per HTTP request.
      budget: counters to charge (a fresh unlimited Budget by default).
      cache: the call cache (default `CallCache()`: the shared file, unless $PROMPTLIFT_NO_CACHE=1).
      client: an `openai.OpenAI` client to use instead of building one (its own retries are turned off).
      http_client: an `httpx.Client` for the built client (proxies, tests with a mock transport).
      retry_backoff: base delay in seconds of the exponential backoff (delay = base * 2**attempt, jittered).
      api: "chat" (messages to /chat/completions; labels ranked by first-token `top_logprobs`) or
        "completions" (plain-text prompts to /completions; labels scored in full with `echo` + `logprobs`,
        for base models and servers such as vLLM and llama.cpp).
      top_logprobs: first-token alternatives asked for when ranking labels on the chat API (OpenAI: at most 20).

    `model_id` is "openai:{base_url}:{model}" (base_url without credentials or query).
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 60,
        budget: Budget | None = None,
        cache: CallCache | None = None,
        client: Any = None,
        *,
        http_client: Any = None,
        retry_backoff: float = 0.5,
        api: str = "chat",
        top_logprobs: int = 20,
    ):
        if not model:
            raise ModelError("OpenAIModel: a model name is required")
        if max_concurrency < 1:
            raise ModelError(f"OpenAIModel: max_concurrency must be >= 1, got {max_concurrency}")
        if api not in ("chat", "completions"):
            raise ModelError(f"OpenAIModel: api must be 'chat' or 'completions', got {api!r}")
        self.model = model
        self.api = api
        self.top_logprobs = int(top_logprobs)
        self._caps: dict | None = None
        self._prefill: bool | None = None  # does the server continue a final assistant message?
        self._guided = 0  # the GUIDED_CHOICE spelling to try for a generation with `choices`; past the end: none
        if client is not None and base_url is None:
            base_url = str(getattr(client, "base_url", "") or "") or None
        self.base_url = (base_url or os.environ.get("PROMPTLIFT_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
                         or DEFAULT_BASE_URL).rstrip("/")
        self.model_id = f"openai:{_public_url(self.base_url)}:{model}"
        self.max_concurrency = int(max_concurrency)
        self.max_retries = max(0, int(max_retries))
        self.timeout = float(timeout)
        self.retry_backoff = float(retry_backoff)
        self.budget = budget if budget is not None else Budget()
        self.cache = cache if cache is not None else CallCache()
        if client is None:
            key = api_key or os.environ.get("PROMPTLIFT_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
            kwargs: dict[str, Any] = dict(api_key=key, base_url=self.base_url, timeout=self.timeout, max_retries=0)
            if http_client is not None:
                kwargs["http_client"] = http_client
            client = _openai.OpenAI(**kwargs)
        else:
            client = client.with_options(max_retries=0, timeout=self.timeout)
        self._client = client
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._budget_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIModel({self.model!r}, base_url={_public_url(self.base_url)!r})"

    # ---- plumbing ---------------------------------------------------------

    def _charge(self, **amounts: int) -> None:
        with self._budget_lock:
            ledger_of(self).charge(**amounts)

    def _charge_usage(self, response: Any) -> None:
        """Charge the tokens of an answered call (the call itself was counted when it was answered)."""
        usage = getattr(response, "usage", None)
        self._charge(prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                     completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0))

    def _send(self, fn: Callable[[], Any]) -> Any:
        """Call `fn` (one API request) with bounded concurrency and retries.

        The caller charges the budget (`_charge_usage`) once it has cached the answer,
        so a request that passes a limit is still paid for only once.
        """
        attempt = 0
        with self._budget_lock:
            ledger_of(self).check()
            ledger_of(self).reserve()  # counts calls in flight: a calls=N limit is never passed
        answered = False
        try:
            while True:
                try:
                    with self._slots:
                        response = fn()
                except _openai.APIStatusError as e:
                    status, msg = e.status_code, _server_message(e)
                    if not retryable_status(status) or attempt >= self.max_retries:
                        raise _RequestFailed(status, msg, attempt + 1) from None
                    delay = _retry_after(e)
                except _openai.APIConnectionError as e:  # APITimeoutError is a subclass
                    if attempt >= self.max_retries:
                        raise _RequestFailed(None, _server_message(e), attempt + 1) from None
                    delay = None
                else:
                    answered = True
                    return response
                backoff = self.retry_backoff * (2 ** attempt) * random.uniform(0.5, 1.5)
                time.sleep(min(_MAX_BACKOFF_S, max(backoff, delay or 0.0)))
                attempt += 1
                with self._budget_lock:
                    ledger_of(self).retries += 1
        finally:
            with self._budget_lock:
                ledger_of(self).settle(answered)

    def _fail(self, err: _RequestFailed, what: str) -> ModelError:
        """A one-line error: UpstreamError (exit code 4) for failures that retries could not cure."""
        status = f"HTTP {err.status}" if err.status is not None else "connection error"
        tries = f" after {err.attempts} attempts" if err.attempts > 1 else ""
        cls = UpstreamError if (err.status is None or retryable_status(err.status)) else ModelError
        return cls(f"{self.model_id}: {what} failed{tries}: {status}: {err.message}")

    def _map(self, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run `jobs` on a pool of `max_concurrency` threads; results in order; first error wins."""
        if len(jobs) <= 1:
            return [job() for job in jobs]
        results: list[Any] = [None] * len(jobs)
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(jobs)),
                                thread_name_prefix="promptlift-openai") as pool:
            # each job sees the caller's context: the running run's budget ledger (`ledger_of`)
            futures: dict[Future, int] = {pool.submit(contextvars.copy_context().run, job): i
                                          for i, job in enumerate(jobs)}
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                for f in pending:
                    f.cancel()
                # prefer a budget error: it explains why the others stopped
                errs = [f.exception() for f in failed]
                raise next((e for e in errs if isinstance(e, BudgetExceeded)), errs[0])
            for f, i in futures.items():
                results[i] = f.result()
        return results

    # ---- generate ---------------------------------------------------------

    def _request(self, prompt: PromptLike, config: GenerationConfig, rollout: int) -> dict:
        if isinstance(prompt, str):
            req: dict[str, Any] = {"endpoint": "completions", "prompt": prompt}
        else:
            msgs = list(prompt)
            if not msgs or not all(isinstance(m, dict) and "role" in m for m in msgs):
                raise ModelError(f"{self.model_id}: a prompt must be a string or a non-empty list of "
                                 "{'role': ..., 'content': ...} messages")
            req = {"endpoint": "chat", "messages": [dict(m) for m in msgs]}
        stop = config.stop
        if isinstance(stop, str):
            stop = [stop]
        req.update(n=int(config.n), temperature=float(config.temperature), max_tokens=int(config.max_tokens),
                   stop=list(stop or []), top_p=float(config.top_p), seed=config.seed, rollout=int(rollout))
        if config.choices:
            req["choices"] = list(config.choices)
        return req

    def _guided_body(self, choices: Sequence[str]) -> tuple[int, dict | None]:
        """(the GUIDED_CHOICE spelling used, the extra request fields constraining the answer to `choices`, or
        None: no choices, or a server that has no guided choice)."""
        used = self._guided
        if not choices or used >= len(GUIDED_CHOICE):
            return used, None
        field = GUIDED_CHOICE[used]
        return used, {field: {"choice": list(choices)}} if field == "structured_outputs" else {field: list(choices)}

    def _no_guided(self, used: int) -> None:
        """The server has not the guided choice spelled GUIDED_CHOICE[used]: the next one (requests in parallel
        may all find it out at once)."""
        self._guided = max(self._guided, used + 1)

    def _generate_one(self, req: dict) -> tuple[list[str], list[Any]]:
        params: dict[str, Any] = dict(model=self.model, temperature=req["temperature"],
                                      max_tokens=req["max_tokens"], top_p=req["top_p"])
        if req["stop"]:
            params["stop"] = req["stop"]
        if req["seed"] is not None:
            params["seed"] = req["seed"]
        prefill = self._prefill_body(req.get("messages"))
        allowed = req.get("choices") or []
        texts: list[str] = []
        responses: list[Any] = []
        want = req["n"]
        while len(texts) < want:  # some servers ignore n and return fewer choices
            n = want - len(texts)
            spelling, guided = self._guided_body(allowed)
            extra = {**(prefill or {}), **(guided or {})}
            params.pop("extra_body", None)
            if extra:
                params["extra_body"] = extra
            try:
                if req["endpoint"] == "chat":
                    resp = self._send(lambda: self._client.chat.completions.create(
                        messages=req["messages"], n=n, **params))
                    choices = sorted(resp.choices or [], key=lambda c: c.index or 0)
                    new = [(c.message.content if c.message is not None else None) or "" for c in choices]
                else:
                    resp = self._send(lambda: self._client.completions.create(prompt=req["prompt"], n=n, **params))
                    choices = sorted(resp.choices or [], key=lambda c: c.index or 0)
                    new = [c.text or "" for c in choices]
            except _RequestFailed as e:
                if e.status == 400 and guided:
                    self._no_guided(spelling)  # the server refuses this spelling: the next one, or none
                    continue
                if e.status == 400 and prefill and self._prefill is None:
                    self._prefill = False  # the server refuses continue_final_message: plain messages then
                    prefill = None
                    continue
                if (e.status == 400 and req["endpoint"] == "chat" and "max_tokens" in params
                        and "max_completion_tokens" in e.message):
                    # newer OpenAI models take max_completion_tokens instead of max_tokens
                    params["max_completion_tokens"] = params.pop("max_tokens")
                    continue
                raise self._fail(e, f"{req['endpoint']} request") from None
            responses.append(resp)
            if guided and any(t.strip() not in allowed for t in new):
                self._no_guided(spelling)  # the server ignored this spelling: ask again with the next one, or plainly
                continue
            if prefill and self._prefill is None:
                self._prefill = True
            if not new:
                raise ModelError(f"{self.model_id}: the server returned no choices")
            texts.extend(new[:n])
        return texts, responses

    def generate(self, prompts: Sequence[PromptLike], config: GenerationConfig | None = None,
                 *, rollout: int | None = None) -> list[list[str]]:
        """For each prompt, `config.n` completions.

        Chat prompts (message lists) go to /chat/completions, strings to /completions.
        `rollout` (default `getattr(config, "rollout", 0)`) is part of the cache key:
        a new number gives a fresh sample that is cached in turn. Identical prompts
        in one call are sent once while the cache is on.
        """
        config = config or GenerationConfig()
        if config.n < 1:
            raise ModelError(f"{self.model_id}: n must be >= 1, got {config.n}")
        if rollout is None:
            rollout = int(getattr(config, "rollout", 0) or 0)
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
            raise ModelError(f"{self.model_id}: generate() takes a list of prompts, not a single prompt")
        reqs = [self._request(p, config, rollout) for p in prompts]
        keys = [CallCache.key(self.model_id, r) for r in reqs]
        out: list[list[str] | None] = [None] * len(reqs)
        todo: dict[str, list[int]] = {}  # key -> indices waiting for it
        for i, k in enumerate(keys):
            hit = self.cache.get(k) if self.cache.enabled else None
            if isinstance(hit, list) and len(hit) == reqs[i]["n"]:
                self._charge(cached_calls=1)
                out[i] = [str(t) for t in hit]
            elif self.cache.enabled and k in todo:
                todo[k].append(i)
            else:
                todo.setdefault(k if self.cache.enabled else f"{k}#{i}", []).append(i)

        def job(key: str, idx: list[int]) -> None:
            texts, responses = self._generate_one(reqs[idx[0]])
            self.cache.put(keys[idx[0]], texts)
            for resp in responses:
                self._charge_usage(resp)
            out[idx[0]] = texts
            for j in idx[1:]:  # duplicates of the same request: served as cache hits
                out[j] = list(texts)
                self._charge(cached_calls=1)

        self._map([lambda k=k, idx=idx: job(k, idx) for k, idx in todo.items()])
        return [o if o is not None else [] for o in out]

    # ---- score ------------------------------------------------------------

    def _score_one(self, prompt: str, continuation: str) -> tuple[float, Any]:
        text = prompt + continuation
        max_tokens = 0
        while True:
            try:
                resp = self._send(lambda: self._client.completions.create(
                    model=self.model, prompt=text, echo=True, logprobs=1, max_tokens=max_tokens, temperature=0.0))
                break
            except _RequestFailed as e:
                if e.status == 400 and max_tokens == 0 and "max_tokens" in e.message.lower():
                    max_tokens = 1  # server wants >= 1 token; the generated one is dropped below
                    continue
                if e.status in _SCORE_UNSUPPORTED_STATUS:
                    raise UnsupportedError(
                        f"{self.model_id}: the server cannot score continuations (completions with "
                        f"echo=True and logprobs rejected: HTTP {e.status}: {e.message})") from None
                raise self._fail(e, "score request") from None
        choice = resp.choices[0] if resp.choices else None
        lp = getattr(choice, "logprobs", None)
        tokens = list(getattr(lp, "tokens", None) or [])
        token_lps = list(getattr(lp, "token_logprobs", None) or [])
        if not tokens or len(token_lps) != len(tokens):
            self._charge_usage(resp)
            raise UnsupportedError(f"{self.model_id}: the server did not echo prompt log-probabilities "
                                   "(completions with echo=True, logprobs=1); it cannot score continuations")
        offsets = list(getattr(lp, "text_offset", None) or [])
        if len(offsets) != len(tokens):
            offsets, pos = [], 0
            for t in tokens:
                offsets.append(pos)
                pos += len(t or "")
        start, end = len(prompt), len(text)
        total = 0.0
        for tok, off, tlp in zip(tokens, offsets, token_lps):
            # a token belongs to the continuation if it overlaps it; generated tokens
            # (past the echoed text) are dropped
            if off >= end:
                break
            if off + len(tok or "") > start or off >= start:
                if tlp is not None:
                    total += float(tlp)
        return total, resp

    def score(self, prompt: PromptLike, continuations: Sequence[str]) -> list[float]:
        """Total log-probability of each continuation right after `prompt` (a plain string).

        Uses /completions with echo=True, logprobs=1, max_tokens=0 on `prompt + continuation`
        and sums the log-probs of the tokens that overlap the continuation. Scores are cached.
        Raises UnsupportedError for message-list prompts (chat endpoints cannot score given
        text; render the chat template yourself and pass a string) and when the server
        rejects echo/logprobs.
        """
        if not isinstance(prompt, str):
            raise UnsupportedError(
                f"{self.model_id}: score() needs a plain-string prompt: chat endpoints cannot score given "
                "continuations; render the chat template to text and pass that string")
        if isinstance(continuations, str):
            continuations = [continuations]
        out: list[float | None] = [None] * len(continuations)
        todo: dict[str, list[int]] = {}
        keys = []
        for i, c in enumerate(continuations):
            k = CallCache.key(self.model_id, {"endpoint": "score", "prompt": prompt, "continuation": c,
                                              "echo": True, "logprobs": 1})
            keys.append(k)
            if c == "":
                out[i] = 0.0
                continue
            hit = self.cache.get(k) if self.cache.enabled else None
            if isinstance(hit, (int, float)):
                self._charge(cached_calls=1)
                out[i] = float(hit)
            else:
                todo.setdefault(k, []).append(i)

        def job(idx: list[int]) -> None:
            s, resp = self._score_one(prompt, continuations[idx[0]])
            self.cache.put(keys[idx[0]], s)
            self._charge_usage(resp)
            for j in idx:
                out[j] = s
            if len(idx) > 1:
                self._charge(cached_calls=len(idx) - 1)

        self._map([lambda idx=idx: job(idx) for idx in todo.values()])
        return [float(o) for o in out]  # type: ignore[arg-type]

    # ---- capabilities, label log-probabilities ---------------------------------------------

    def _prefill_body(self, messages) -> dict | None:
        """Extra request fields asking the server to continue a final assistant message (vLLM, SGLang)."""
        if not messages or messages[-1].get("role") != "assistant" or self._prefill is False:
            return None
        return {"continue_final_message": True, "add_generation_prompt": False}

    def capabilities(self) -> dict:
        """What the endpoint supports, probed once and kept in the call cache: {"logprobs": bool, "api": ...}.

        Chat API: one request with `logprobs=true, top_logprobs=5, max_tokens=1`; log-probabilities are
        supported if the answer carries them. Completions API: one `echo` + `logprobs` request.
        """
        if self._caps is not None:
            return self._caps
        key = CallCache.key(self.model_id, {"endpoint": "probe", "api": self.api, "version": 1})
        hit = self.cache.get(key) if self.cache.enabled else None
        if isinstance(hit, dict):
            self._caps = hit
            return hit
        ok = True
        try:
            if self.api == "chat":
                tops = self._top_logprobs_one([{"role": "user", "content": "Say yes."}], 5)
                ok = bool(tops)
            else:
                self._score_one("Say yes:", " yes")
        except UnsupportedError:
            ok = False
        except ModelError:
            raise
        self._caps = {"logprobs": ok, "api": self.api}
        self.cache.put(key, self._caps)
        return self._caps

    def _top_logprobs_one(self, messages: list[dict], k: int) -> dict[str, float]:
        params: dict[str, Any] = dict(model=self.model, messages=messages, max_tokens=1, temperature=0.0,
                                      logprobs=True, top_logprobs=k)
        extra = self._prefill_body(messages)
        if extra:
            params["extra_body"] = extra
        while True:
            try:
                resp = self._send(lambda: self._client.chat.completions.create(**params))
                break
            except _RequestFailed as e:
                if e.status == 400 and "extra_body" in params and self._prefill is None:
                    self._prefill = False
                    params.pop("extra_body")
                    continue
                if e.status in _SCORE_UNSUPPORTED_STATUS:
                    raise UnsupportedError(f"{self.model_id}: logprobs rejected: HTTP {e.status}: {e.message}") from None
                raise self._fail(e, "logprobs request") from None
        if "extra_body" in params and self._prefill is None:
            self._prefill = True
        self._charge_usage(resp)
        choice = resp.choices[0] if resp.choices else None
        content = getattr(getattr(choice, "logprobs", None), "content", None) or []
        if not content:
            return {}
        first = content[0]
        out: dict[str, float] = {}
        for t in list(getattr(first, "top_logprobs", None) or []) + [first]:
            tok, lp = getattr(t, "token", None), getattr(t, "logprob", None)
            if tok is not None and lp is not None:
                out[tok] = max(float(lp), out.get(tok, float("-inf")))
        return out

    def first_token_logprobs(self, prompts: Sequence[list[dict]], k: int = 20) -> list[dict[str, float]]:
        """For each chat prompt, {token text: log-prob} of the answer's first token (its `top_logprobs`). Cached."""
        out: list[dict | None] = [None] * len(prompts)
        todo: dict[str, list[int]] = {}
        keys = []
        for i, p in enumerate(prompts):
            k_ = CallCache.key(self.model_id, {"endpoint": "chat-logprobs", "messages": list(p), "top_logprobs": k})
            keys.append(k_)
            hit = self.cache.get(k_) if self.cache.enabled else None
            if isinstance(hit, dict):
                self._charge(cached_calls=1)
                out[i] = {str(a): float(b) for a, b in hit.items()}
            else:
                todo.setdefault(k_, []).append(i)

        def job(idx: list[int]) -> None:
            top = self._top_logprobs_one([dict(m) for m in prompts[idx[0]]], k)
            self.cache.put(keys[idx[0]], top)
            for j in idx:
                out[j] = dict(top)
            if len(idx) > 1:
                self._charge(cached_calls=len(idx) - 1)

        self._map([lambda idx=idx: job(idx) for idx in todo.values()])
        return [o or {} for o in out]

    def score_many(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        """`score` of the same continuations after each plain-text prompt: (N, C) log-probabilities."""
        return self._map([lambda p=p: self.score(p, continuations) for p in prompts])

    def score_pairs(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        """`score` of each plain-text prompt's own continuation: (N,) log-probabilities, requests in parallel."""
        return self._map([lambda p=p, c=c: self.score(p, [c])[0] for p, c in zip(prompts, continuations)])

    def close(self) -> None:
        """Close the HTTP client."""
        try:
            self._client.close()
        except Exception:  # pragma: no cover - best effort
            pass
