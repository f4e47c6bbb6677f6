"""The proxy: an OpenAI-compatible FastAPI app that applies each route's learned prompt.

Endpoints:
    POST /v1/chat/completions   (stream: true -> server-sent events)
    POST /v1/completions        (the caller's `prompt` is the input)
    GET  /v1/models             the routes the caller's key may use
    GET  /health                status and reload generation; with an admin key also routes, artifact
                                paths and hashes, upstreams and the last reload errors
    GET  /metrics               Prometheus text format (`serve.metrics`)
    POST /admin/reload          re-read config and artifacts (admin key); SIGHUP does the same

A request names a route by `model`; the header `X-Promptlift-Prompt: NAME`
picks another artifact of that route (its `prompts:` in serve.yaml). Answers
carry `X-Promptlift-Prompt`: the content hash of the artifact that served them
(for a selector on the local upstream, the member it chose for the input), and
`X-Promptlift-Prompt-Name`: the name of the route's artifact that was asked for. How the artifact
changes the request is in `serve.apply` (text, HTTP), `serve.embeds` (soft,
vLLM) and `serve.local` (any artifact, local model); errors and their bodies
are in `serve.protocol`. The route decided at load time, per artifact, how it
goes (`LiveRoute.via`) and how it answers (`LiveRoute.answers`): a classifier's
artifact answers, by default, with the words of the label `eval` predicts
(`engine.evaluate.classify` on the local model, or on the HTTP upstream through
`serve.labels`; a soft prompt on vLLM by its labels' first tokens, `serve.embeds`),
every label's score in `logprobs` when asked; `answer: generate` keeps free
generation. This module never asks which kind of artifact
it holds.

Order of checks: body size from Content-Length (413), API key (401), rate
limit (429), body size read (413, or 408 past `limits.client_body_timeout_s`),
JSON, field types and fields that would return the prompt (400, `serve.guard`),
`prompt_embeds` (400), route (404: the routes the key may use are named), key
allowed on the route (403), prompt header (400 unknown, 403 not the key's),
max_tokens cap (400). An unexpected failure is a 500 (`server_error`) for that
request only. A client that closes the connection before its answer cancels
the upstream call and is logged as 499.

`max_tokens` (or `max_completion_tokens`) above the route's cap is refused;
a request that sets neither is sent with `max_tokens` = the cap. Other
fields go to an HTTP upstream as the client sent them, with `model` set to the
route's upstream model and `messages` (or `prompt`) rendered through the
artifact; a client's `prompt_embeds` is refused (it would replace the prompt).
The upstream's answer comes back unchanged (streams line by line; a whole
JSON answer to a streaming request is sent as a stream), its errors scrubbed of
the route's prompt; `echo` on `/v1/completions` is refused for HTTP routes (the
upstream would echo the rendered prompt). The local upstream answers n = 1, and streams an answer as
one chunk once it is complete. It gives log-probabilities computed through the
applied prompt (`serve.local`): chat `logprobs: true, top_logprobs: k` (greedy
only) describe the first generated token; completions `echo: true,
max_tokens: 0, logprobs: N` score the answer in `Input: {input}\nOutput:
{answer}` (what `promptlift eval --api completions` sends); generated text on
`/v1/completions` has `logprobs: null`. Prompts of several stages
(`Applier.stages`) give no log-probabilities (400).

One JSON log line per request on the `promptlift.serve` logger: time, route,
endpoint, prompt name and sha256, key name, status, upstream status, latency,
tokens, stream; message contents only with `log_content: true`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import PromptliftError
from ..lm.base import GenerationConfig
from . import guard
from . import protocol as P
from .apply import chat_messages, check_one_stage, completion_prompt, embeds_prompt, estimated_prompt_positions
from .auth import Caller, bearer_token
from .config import DEFAULT_PROMPT, PROMPT_HEADER, ServeConfig
from .embeds import (TOP_LOGPROBS, encode_embeds, first_token_ids, first_token_top, label_targets, rank_labels,
                     soft_input_embeds)
from .metrics import Metrics
from .ratelimit import RateLimiter, retry_after_header
from .routes import EMBEDS, LOCAL, LiveRoute, Resources, Snapshot, build_snapshot, describe

log = logging.getLogger("promptlift.serve")
_timeout = getattr(asyncio, "timeout", None)
JSON = "application/json"
_PASS_TO_EMBEDS = ("max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream", "stream_options",
                   "presence_penalty", "frequency_penalty", "user", "logprobs")


@dataclass
class _Record:
    """What the log line and the metrics say about one request."""

    endpoint: str
    t0: float = field(default_factory=time.perf_counter)
    route: str = ""
    prompt: str | None = None
    sha256: str | None = None  # the artifact that served the request (a selector's chosen member)
    key: str | None = None
    status: int = 200
    upstream_status: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_positions: float = 0.0  # the prompt's own positions (`Applier.prompt_tokens`), summed over the inputs
    positions_unit: str = "tokens"  # "estimated" where counted without a tokenizer (HTTP upstream)
    stream: bool = False
    error: str | None = None
    upstream_error: str | None = None
    content: dict | None = None


class ServerState:
    """The live snapshot, what outlives reloads, the limiter and the metrics of one server."""

    def __init__(self, snapshot: Snapshot, resources: Resources, reload_config: Callable[[], ServeConfig] | None,
                 clock: Callable[[], float] = time.monotonic, log_line: Callable[[dict], None] | None = None,
                 limiter=None, on_admin_reload: Callable[[], None] | None = None):
        self.snapshot = snapshot
        self.resources = resources
        self.reload_config = reload_config
        self.limiter = limiter or RateLimiter(clock)
        self.on_admin_reload = on_admin_reload  # --workers: tell the other workers to reload too
        self.metrics = Metrics()
        self.log_line = log_line or _log_json
        self._reload_lock = asyncio.Lock()
        self.reload_errors: list[str] = []

    async def reload(self) -> Snapshot:
        """Re-read the config and artifacts; swap them in only if all of them load and check out."""
        async with self._reload_lock:
            new = None
            try:
                cfg = self.reload_config() if self.reload_config else self.snapshot.config
                gen = self.snapshot.generation + 1
                new = await run_in_threadpool(build_snapshot, cfg, self.resources, gen)
            except Exception as e:  # noqa: BLE001 - whatever failed, the old routes keep serving
                if not isinstance(e, PromptliftError):
                    e = PromptliftError(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
                self.metrics.reloads.labels("error").inc()
                self.reload_errors = (self.reload_errors + [str(e)])[-20:]
                self.log_line({"ts": round(time.time(), 3), "event": "reload", "ok": False, "error": str(e)})
                raise e from None
            finally:
                self.resources.retire_unused(self.snapshot if new is None else new)
            self.snapshot = new
            self.metrics.reloads.labels("ok").inc()
            self.log_line({"ts": round(time.time(), 3), "event": "reload", "ok": True,
                           "generation": new.generation, "routes": describe(new)})
            return new


def _log_json(d: dict) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(json.dumps(d, ensure_ascii=False, default=str))


def build_app(config: ServeConfig | None = None, *, snapshot: Snapshot | None = None,
              resources: Resources | None = None, reload_config: Callable[[], ServeConfig] | None = None,
              clock: Callable[[], float] = time.monotonic, log_line: Callable[[dict], None] | None = None,
              handle_sighup: bool = True, limiter=None,
              on_admin_reload: Callable[[], None] | None = None) -> FastAPI:
    """The proxy app for `config` (or an already built `snapshot`).

    reload_config: gives the config to switch to on reload (default: the same config,
      artifacts re-read and re-checked). lms / transport go through `resources`.
    limiter: the rate limiter (default: in memory, `clock`); on_admin_reload: called after a
      successful POST /admin/reload (worker processes pass the reload on to the others).
    """
    resources = resources or Resources()
    if snapshot is None:
        if config is None:
            raise ValueError("build_app needs a config or a snapshot")
        snapshot = build_snapshot(config, resources)
    state = ServerState(snapshot, resources, reload_config, clock, log_line, limiter, on_admin_reload)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        hooked = False
        if handle_sighup and hasattr(signal, "SIGHUP"):
            try:  # only possible in the main thread (the CLI); servers in a thread use /admin/reload
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload_quietly(state)))
                hooked = True
            except (RuntimeError, ValueError, NotImplementedError):
                pass
        try:
            yield
        finally:
            if hooked:
                loop.remove_signal_handler(signal.SIGHUP)
            await resources.aclose()

    app = FastAPI(title="promptlift serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    guard.openai_http_errors(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _handle(state, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _handle(state, request, "completions")

    @app.get("/v1/models")
    async def models(request: Request):
        snap = state.snapshot
        try:
            caller = _authenticate(snap, request)
        except P.ServeError as e:
            return _error_response(e)
        data = [{"id": name, "object": "model", "created": int(snap.loaded_at), "owned_by": "promptlift"}
                for name in snap.routes if caller.may_use(name)]
        return Response(json.dumps({"object": "list", "data": data}), media_type=JSON)

    @app.get("/health")
    async def health(request: Request):
        snap = state.snapshot
        out = {"status": "ok", "generation": snap.generation}
        try:
            admin = snap.keys.enabled and _authenticate(snap, request, required=True).admin
        except P.ServeError:
            admin = False
        if admin:  # what is served and where: for operators only
            out.update(loaded_at=snap.loaded_at, routes=describe(snap), reload_errors=state.reload_errors[-3:])
        return Response(json.dumps(out), media_type=JSON)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.post("/admin/reload")
    async def admin_reload(request: Request):
        snap = state.snapshot
        try:
            caller = _authenticate(snap, request, required=True)
            if not caller.admin:
                raise P.ServeError(403, "this key may not reload the server (admin: true in serve.yaml)",
                                   "permission_error", "not_admin")
            new = await state.reload()
            if state.on_admin_reload is not None:
                state.on_admin_reload()
        except P.ServeError as e:
            return _error_response(e)
        except PromptliftError as e:
            return _error_response(P.ServeError(400, f"reload refused, still serving generation "
                                                f"{state.snapshot.generation}: {e}", "invalid_request_error",
                                                "reload_failed"))
        return Response(json.dumps({"reloaded": True, "generation": new.generation, "routes": describe(new)}),
                        media_type=JSON)

    return app


async def _reload_quietly(state: ServerState) -> None:
    try:
        await state.reload()
    except PromptliftError:
        pass  # logged by reload; the old routes keep serving


# --- request handling --------------------------------------------------------------------------


def _error_response(e: P.ServeError) -> Response:
    return Response(e.content(), status_code=e.status, media_type=JSON, headers=e.headers)


def _authenticate(snap: Snapshot, request: Request, required: bool = False) -> Caller:
    if not snap.keys.enabled:
        if required:
            raise P.ServeError(403, "no admin key is configured; reload with SIGHUP", "permission_error",
                               "not_admin")
        client = request.client.host if request.client else "unknown"
        return Caller(f"addr:{client}", None)
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise P.ServeError(401, "missing API key: send Authorization: Bearer KEY", "authentication_error",
                           "invalid_api_key")
    key = snap.keys.find(token)
    if key is None:
        raise P.ServeError(401, "invalid API key", "authentication_error", "invalid_api_key")
    return Caller(key.name, key)


def _too_large(limit: int) -> P.ServeError:
    return P.ServeError(413, f"request body is larger than {limit} bytes", "invalid_request_error",
                        "request_too_large")


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    chunks, n = [], 0

    async def read() -> None:
        nonlocal n
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise _too_large(limit)
            chunks.append(chunk)

    try:
        if _timeout is not None:  # Python >= 3.11: no task of its own
            async with _timeout(timeout_s):
                await read()
        else:
            await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise P.ServeError(408, f"the request body did not arrive within {timeout_s:g} s", "invalid_request_error",
                           "request_timeout", {"connection": "close"}) from None
    return b"".join(chunks)


def _bad(msg: str, code: str | None = None, param: str | None = None) -> P.ServeError:
    return P.ServeError(400, msg, "invalid_request_error", code)


def _cap_max_tokens(payload: dict, cap: int) -> int:
    asked = None
    least = 0 if payload.get("echo") is True else 1  # echo with max_tokens 0 scores the prompt only
    for k in ("max_tokens", "max_completion_tokens"):
        v = payload.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise _bad(f"{k} must be a positive integer, got {v!r}", "invalid_value")
        if v > cap:
            raise _bad(f"{k} is {v}, above this route's cap of {cap}", "max_tokens_too_large")
        asked = v if asked is None else min(asked, v)
    if asked is None:
        payload["max_tokens"] = cap
        return cap
    return asked


def _gen_config(payload: dict, max_tokens: int) -> GenerationConfig:
    """Sampling options of a request for the local model (n = 1 only)."""
    n = payload.get("n", 1)
    if n not in (1, None):
        raise _bad("the local upstream answers n = 1 only", "unsupported_value")
    t = payload.get("temperature", 0.0)
    top_p = payload.get("top_p", 1.0)
    seed = payload.get("seed")
    stop = payload.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    for name, v in (("temperature", t), ("top_p", top_p)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise _bad(f"{name} must be a number >= 0, got {v!r}", "invalid_value")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad(f"seed must be an integer, got {seed!r}", "invalid_value")
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _bad("stop must be a string or a list of strings", "invalid_value")
    return GenerationConfig(max_tokens=max_tokens, temperature=float(t or 0.0),
                            top_p=float(1.0 if top_p is None else top_p), seed=seed, stop=list(stop))


def _conversation(endpoint: str, payload: dict) -> list:
    """The inputs of a request: [messages] for chat, the prompt string(s) for completions."""
    if endpoint == "chat":
        msgs = payload.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _bad("messages must be a non-empty list", "invalid_value")
        return [msgs]
    p = payload.get("prompt")
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
        return list(p)
    raise _bad("prompt must be a string or a list of strings (token ids cannot go through a learned prompt)",
               "invalid_value")


async def _handle(state: ServerState, request: Request, endpoint: str) -> Response:
    snap = state.snapshot  # this request keeps these routes even if a reload swaps them meanwhile
    rec = _Record(endpoint)
    streaming = False
    try:
        limits = snap.config.limits
        cl = request.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > limits.max_body_bytes:
            raise _too_large(limits.max_body_bytes)
        caller = _authenticate(snap, request)
        rec.key = caller.name
        rpm = caller.key.requests_per_minute if caller.key and caller.key.requests_per_minute is not None \
            else limits.requests_per_minute
        wait = state.limiter.check(caller.name, rpm)
        if wait is not None:
            raise P.ServeError(429, f"rate limit of {rpm} requests per minute reached for {caller.name}; "
                               f"retry in {retry_after_header(wait)} s", "rate_limit_error", "rate_limit_exceeded",
                               {"retry-after": retry_after_header(wait)})
        body = await _read_body(request, limits.max_body_bytes, limits.client_body_timeout_s)
        payload = guard.parse_body(body)
        guard.check_fields(endpoint, payload)
        if "prompt_embeds" in payload:  # it would replace the learned prompt on vLLM
            raise _bad("prompt_embeds cannot be sent through the proxy: it applies the route's own prompt",
                       "unsupported_parameter")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise _bad("model is required: the name of a route", "invalid_value")
        live = snap.routes.get(model)
        if live is None:
            mine = sorted(r for r in snap.routes if caller.may_use(r))
            raise P.ServeError(404, f"the model {model!r} does not exist; this key may use: {', '.join(mine)}",
                               "invalid_request_error", "model_not_found")
        rec.route = model
        if not caller.may_use(model):
            raise P.ServeError(403, f"this key may not use {model!r}", "permission_error", "route_not_allowed")
        pname = request.headers.get(PROMPT_HEADER) or DEFAULT_PROMPT
        prompt = live.prompts.get(pname)
        mine = sorted(n for n in live.prompts if caller.may_pick(n))
        if prompt is None:
            raise _bad(f"route {model!r} has no prompt {pname!r}; this key may use: {', '.join(mine)}",
                       "prompt_not_found")
        if not caller.may_pick(pname):
            raise P.ServeError(403, f"this key may not use prompt {pname!r} of {model!r}; it may use: "
                               f"{', '.join(mine) or 'none'} ({PROMPT_HEADER})", "permission_error",
                               "prompt_not_allowed")
        rec.prompt, rec.sha256 = pname, live.hashes[pname]
        max_tokens = _cap_max_tokens(payload, live.max_tokens)
        rec.stream = bool(payload.get("stream"))
        if snap.config.log_content:
            rec.content = {"request": payload.get("messages") if endpoint == "chat" else payload.get("prompt")}
        headers = {"x-promptlift-route": model, "x-promptlift-prompt-name": pname}
        task = live.tasks[pname]  # the route decided, per artifact, its labels, how it answers and goes
        if live.answers[pname] == "label" and not (endpoint == "completions" and payload.get("echo")):
            work = _label(live, pname, prompt, task, endpoint, payload, rec)
        elif live.via[pname] == LOCAL:
            work = _local(live, prompt, task, endpoint, payload, max_tokens, rec)
        elif live.via[pname] == EMBEDS:
            work = _vllm_embeds(state, live, prompt, task, endpoint, payload, rec)
        else:
            work = _http(state, live, prompt, task, endpoint, payload, rec)
        resp = await guard.unless_client_leaves(request, work)
        resp.headers.update({**headers, PROMPT_HEADER: rec.sha256})
        streaming = isinstance(resp, StreamingResponse)
        return resp
    except P.ServeError as e:
        rec.status, rec.error = e.status, e.code
        if e.code in _UPSTREAM_ERRORS:
            rec.upstream_error = _UPSTREAM_ERRORS[e.code]
        elif e.code == "upstream_rejected":
            rec.upstream_error, rec.upstream_status = "status_4xx", e.status
        return _error_response(e)
    except Exception as e:  # noqa: BLE001 - a bug answers this request with a 500, the server goes on
        log.exception("promptlift serve: unexpected error")
        rec.status, rec.error = 500, "internal_error"
        return _error_response(P.ServeError(500, f"internal error ({type(e).__name__})", "server_error",
                                            "internal_error"))
    finally:
        if not streaming:
            _finish(state, rec)


_UPSTREAM_ERRORS = {"upstream_timeout": "timeout", "upstream_unavailable": "unavailable", "upstream_error": "status_5xx",
                    "upstream_overloaded": "status_5xx", "upstream_rate_limited": "status_429"}


def _finish(state: ServerState, rec: _Record) -> None:
    seconds = time.perf_counter() - rec.t0
    state.metrics.observe(rec.route or "-", rec.endpoint, rec.status, seconds, rec.prompt_tokens,
                          rec.completion_tokens, rec.upstream_error, rec.prompt_positions, rec.positions_unit)
    line = {"ts": round(time.time(), 3), "event": "request", "route": rec.route or None, "endpoint": rec.endpoint,
            "prompt": rec.prompt, "sha256": rec.sha256, "key": rec.key, "status": rec.status,
            "upstream_status": rec.upstream_status, "latency_ms": round(seconds * 1000, 2),
            "prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.completion_tokens, "stream": rec.stream}
    if rec.error:
        line["error"] = rec.error
    if rec.content is not None:
        line["content"] = rec.content
    state.log_line(line)


def _usage(rec: _Record, d: Any) -> None:
    u = d.get("usage") if isinstance(d, dict) else None
    if isinstance(u, dict):
        rec.prompt_tokens += int(u.get("prompt_tokens") or 0)
        rec.completion_tokens += int(u.get("completion_tokens") or 0)


# --- HTTP upstream, text artifacts --------------------------------------------------------------


async def _http(state: ServerState, live: LiveRoute, prompt, task, endpoint: str, payload: dict, rec: _Record):
    if endpoint == "completions" and payload.get("echo"):
        # the upstream would echo the rendered prompt, with offsets into a text the caller never sent
        raise _bad("echo (scoring a prompt) goes through a learned prompt on the local upstream only; on this route "
                   "rank labels with /v1/chat/completions and logprobs", "unsupported_parameter")
    inputs = _conversation(endpoint, payload)
    out = dict(payload)
    out["model"] = live.upstream_model
    try:
        if endpoint == "chat":
            out["messages"] = chat_messages(prompt, inputs[0], task)
            path = "/chat/completions"
        else:
            texts = [completion_prompt(prompt, x, task) for x in inputs]
            out["prompt"] = texts[0] if isinstance(payload.get("prompt"), str) else texts
            path = "/completions"
    except PromptliftError as e:
        raise _bad(str(e), "invalid_value") from None
    rec.prompt_positions, rec.positions_unit = estimated_prompt_positions(prompt, inputs, task), "estimated"
    field_ = "messages" if endpoint == "chat" else "prompt"
    scrub = guard.scrubber(out[field_], payload[field_])
    if rec.stream:
        return await _stream_through(state, live, path, out, rec, scrub)
    try:
        status, content = await live.http.post(path, out)
    except P.ServeError as e:
        raise scrub().error(e) from None
    rec.upstream_status = status
    try:
        d = json.loads(content)
    except ValueError:
        raise _malformed() from None
    _usage(rec, d)
    if rec.content is not None:
        rec.content["answer"] = [c.get("message", {}).get("content") if endpoint == "chat" else c.get("text")
                                 for c in d.get("choices", [])]
    return Response(content, status_code=status, media_type=JSON)


def _malformed() -> P.ServeError:
    return P.ServeError(502, "the upstream answered malformed JSON", "upstream_error", "upstream_error")


async def _sse_lines(resp, out: dict):
    """The lines of an upstream's stream; a whole JSON answer (it ignored `stream`) as the stream it stands for."""
    if not resp.headers.get("content-type", "").startswith("application/json"):
        async for line in resp.aiter_lines():
            yield line
        return
    try:
        d = json.loads(await resp.aread())
    except ValueError:
        d = None
    include_usage = bool((out.get("stream_options") or {}).get("include_usage"))
    for event in P.json_as_sse(d, include_usage):
        yield event.decode().rstrip("\n")
        yield ""


async def _stream_through(state: ServerState, live: LiveRoute, path: str, out: dict, rec: _Record, scrub):
    try:
        resp = await live.http.stream(path, out)
    except P.ServeError as e:
        raise scrub().error(e) from None
    rec.upstream_status = resp.status_code

    async def body():
        try:
            async for line in _sse_lines(resp, out):
                if line.startswith("data:"):
                    if '"usage"' in line:
                        try:
                            _usage(rec, json.loads(line[5:]))
                        except ValueError:
                            pass
                    if '"error"' in line:
                        line = scrub().line(line)
                yield (line + "\n").encode()
        except asyncio.CancelledError:  # the client went away mid-stream
            rec.status, rec.error = 499, guard.CLIENT_GONE
            raise
        except Exception as e:  # the upstream broke off mid-stream: the status is sent, tell the client in the stream
            yield _stream_failed(rec, e)
        finally:
            await resp.aclose()
            _finish(state, rec)

    return StreamingResponse(body(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


def _stream_failed(rec: _Record, e: Exception) -> bytes:
    """The last event of a stream the upstream broke off (timeout: 504, else 502, in the log and metrics)."""
    timeout = isinstance(e, httpx.TimeoutException)
    rec.status = 504 if timeout else 502
    rec.error = "upstream_timeout" if timeout else "upstream_unavailable"
    rec.upstream_error = "timeout" if timeout else "unavailable"
    return P.sse({"error": {"message": f"the upstream broke off the stream ({type(e).__name__})",
                            "type": "upstream_error", "code": rec.error, "param": None}})


# --- vLLM prompt_embeds, soft prompts -----------------------------------------------------------


async def _vllm_embeds(state: ServerState, live: LiveRoute, prompt, task, endpoint: str, payload: dict,
                       rec: _Record):
    inputs = _conversation(endpoint, payload)
    if len(inputs) != 1:
        raise _bad("a soft prompt on vLLM takes one prompt per request", "invalid_value")
    soft = embeds_prompt(prompt)
    try:
        t = await run_in_threadpool(soft_input_embeds, live.embeds_lm, soft, inputs[0], task)
    except PromptliftError as e:
        raise _bad(str(e), "invalid_value") from None
    out = {k: payload[k] for k in _PASS_TO_EMBEDS if k in payload}
    if "max_tokens" not in out and "max_completion_tokens" in payload:
        out["max_tokens"] = payload["max_completion_tokens"]
    out["model"] = live.upstream_model
    out["prompt_embeds"] = encode_embeds(t)
    if endpoint == "completions":
        if rec.stream:
            return await _stream_through(state, live, "/completions", out, rec, guard.scrubber([], []))
        status, content = await live.http.post("/completions", out)
        rec.upstream_status = status
        _usage(rec, _loads(content, live))
        return Response(content, status_code=status, media_type=JSON)
    if rec.stream:
        return await _stream_chat_from_completions(state, live, out, payload.get("model"), rec)
    status, content = await live.http.post("/completions", out)
    rec.upstream_status = status
    d = _loads(content, live)
    _usage(rec, d)
    ch = (d.get("choices") or [{}])[0]
    u = d.get("usage") or {}
    chat = P.chat_completion(payload["model"], ch.get("text", ""), ch.get("finish_reason") or "stop",
                             int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
    return Response(json.dumps(chat, ensure_ascii=False), media_type=JSON)


async def _embeds_label(live: LiveRoute, prompt, task, conversation, rec: _Record):
    """One input's label on vLLM: the spliced embeddings' first generated token's `top_logprobs` rank the labels
    (`serve.embeds.rank_labels`)."""
    lm = live.embeds_lm
    try:
        t = await run_in_threadpool(soft_input_embeds, lm, prompt, conversation, task)
    except PromptliftError as e:
        raise _bad(str(e), "invalid_value") from None
    targets = label_targets(lm, prompt, task)
    out = {"model": live.upstream_model, "prompt_embeds": encode_embeds(t), "max_tokens": 1, "temperature": 0,
           "logprobs": TOP_LOGPROBS, "allowed_token_ids": first_token_ids(lm, targets)}
    status, content = await live.http.post("/completions", out)
    rec.upstream_status = status
    d = _loads(content, live)
    _usage(rec, d)
    top = first_token_top((d.get("choices") or [{}])[0] or {})
    if not top:
        raise P.ServeError(502, "the upstream gave no first-token log-probabilities to rank the labels with",
                           "upstream_error", "upstream_error")
    try:
        return rank_labels(top, targets, task, live.upstream_model)
    except PromptliftError as e:
        raise P.ServeError(502, str(e), "upstream_error", "upstream_error") from None


def _loads(content: bytes, live: LiveRoute) -> dict:
    try:
        d = json.loads(content)
        if isinstance(d, dict):
            return d
    except ValueError:
        pass
    raise _malformed()


async def _stream_chat_from_completions(state: ServerState, live: LiveRoute, out: dict, model: str, rec: _Record):
    """Completions SSE from vLLM, re-emitted as chat.completion.chunk events."""
    resp = await live.http.stream("/completions", out)
    rec.upstream_status = resp.status_code
    id, created = P.new_id("chatcmpl"), int(time.time())

    async def body():
        try:
            yield P.sse(P.chat_chunk(id, model, created, {"role": "assistant", "content": ""}))
            async for line in _sse_lines(resp, out):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    d = json.loads(data)
                except ValueError:
                    continue
                if isinstance(d, dict) and "error" in d:
                    yield P.sse(d)
                    continue
                _usage(rec, d)
                for ch in d.get("choices") or []:
                    if ch.get("text"):
                        yield P.sse(P.chat_chunk(id, model, created, {"content": ch["text"]}))
                    if ch.get("finish_reason"):
                        yield P.sse(P.chat_chunk(id, model, created, {}, ch["finish_reason"]))
                if d.get("usage") and not d.get("choices"):
                    yield P.sse({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                                 "choices": [], "usage": d["usage"]})
            yield P.SSE_DONE
        except asyncio.CancelledError:  # the client went away mid-stream
            rec.status, rec.error = 499, guard.CLIENT_GONE
            raise
        except Exception as e:
            yield _stream_failed(rec, e)
        finally:
            await resp.aclose()
            _finish(state, rec)

    return StreamingResponse(body(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


# --- local upstream ----------------------------------------------------------------------------


def _logprob_options(endpoint: str, payload: dict, max_tokens: int, cfg: GenerationConfig) -> tuple[int | None, bool]:
    """(how many first-token alternatives a chat request asks, whether a completions request only scores)."""
    if endpoint == "chat":
        lp, k = payload.get("logprobs"), payload.get("top_logprobs")
        if lp in (None, False):
            return None, False
        if lp is not True:
            raise _bad(f"logprobs must be true or false, got {lp!r}", "invalid_value")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise _bad(f"top_logprobs must be an integer >= 0, got {k!r}", "invalid_value")
        if cfg.temperature > 0:
            raise _bad("the local upstream gives log-probabilities of greedy answers only (temperature 0)",
                       "unsupported_value")
        return int(k or 0), False
    n = payload.get("logprobs")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise _bad(f"logprobs must be an integer >= 0, got {n!r}", "invalid_value")
    if payload.get("echo") is not True:
        return None, False  # generated text's log-probabilities are not given (logprobs: null)
    if max_tokens != 0:
        raise _bad("echo on the local upstream scores the prompt only: send max_tokens 0", "unsupported_value")
    if payload.get("stream"):
        raise _bad("echo with max_tokens 0 is answered whole: stream must be false", "unsupported_value")
    return (None if n is None else int(n)), True


def _scored_logprobs(lm, s) -> dict:
    """The legacy completions `logprobs` object of a `ScoredText`."""
    tok = lm.tokenizer.decode
    return {"tokens": s.tokens, "token_logprobs": s.token_logprobs, "text_offset": s.text_offset,
            "top_logprobs": [None if t is None else {tok([i]): v for i, v in t} for t in s.top]}


async def _local_answers(live: LiveRoute, rec: _Record, calls) -> list:
    """Await the local runner's answers to `calls` (its `generate` coroutines); failures as ServeErrors."""
    try:
        return list(await asyncio.gather(*calls))
    except PromptliftError as e:
        raise _bad(str(e), "invalid_value") from None
    except Exception as e:  # noqa: BLE001 - a model failure is this request's 500, the server goes on
        rec.upstream_error = "local"
        raise P.ServeError(500, f"the local model failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}",
                           "server_error", "local_model_error") from None


def _served_by(rec: _Record, answers) -> None:
    """The artifacts that served the local answers (a selector's chosen members; one per request, several only
    for a completions request of several prompts, comma-separated) become the request's `x-promptlift-prompt`."""
    hashes = list(dict.fromkeys(a.served for a in answers if a.served))
    if hashes:
        rec.sha256 = ",".join(hashes)


async def _local(live: LiveRoute, prompt, task, endpoint: str, payload: dict, max_tokens: int, rec: _Record):
    inputs = _conversation(endpoint, payload)
    cfg = _gen_config(payload, max_tokens)
    top_k, score = _logprob_options(endpoint, payload, max_tokens, cfg)
    lm = live.local.lm
    if top_k is not None or score:
        try:
            check_one_stage(prompt)  # log-probabilities are read on the prompt's one condition
        except PromptliftError as e:
            raise _bad(str(e), "invalid_value") from None
    answers = await _local_answers(live, rec, [live.local.generate(prompt, x, cfg, task, top_logprobs=top_k,
                                                                    score=score) for x in inputs])
    _served_by(rec, answers)
    rec.prompt_tokens = sum(a.prompt_tokens for a in answers)
    rec.completion_tokens = sum(a.completion_tokens for a in answers)
    rec.prompt_positions = sum(a.prompt_positions for a in answers)
    if rec.content is not None:
        rec.content["answer"] = [a.text for a in answers]
    model = payload["model"]
    include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    if endpoint == "chat":
        a = answers[0]
        lps = None
        if a.first is not None:
            first = [(lm.tokenizer.decode([i]), v) for i, v in a.first]
            lps = P.chat_logprobs(first[0], first[:top_k])
        if rec.stream:
            events = P.chat_stream(model, a.text, a.finish, a.prompt_tokens, a.completion_tokens, include_usage, lps)
            return Response(b"".join(events), media_type="text/event-stream")
        return Response(json.dumps(P.chat_completion(model, a.text, a.finish, a.prompt_tokens, a.completion_tokens,
                                                     logprobs=lps), ensure_ascii=False), media_type=JSON)
    texts, finishes = [a.text for a in answers], [a.finish for a in answers]
    if rec.stream:
        events = P.text_stream(model, texts, finishes, rec.prompt_tokens, rec.completion_tokens, include_usage)
        return Response(b"".join(events), media_type="text/event-stream")
    lps = [_scored_logprobs(lm, a.scored) if a.scored is not None and payload.get("logprobs") is not None else None
           for a in answers]
    return Response(json.dumps(P.text_completion(model, texts, finishes, rec.prompt_tokens, rec.completion_tokens,
                                                 logprobs=lps), ensure_ascii=False), media_type=JSON)


# --- classifier routes: the label eval predicts ---------------------------------------------------


def _label_logprobs_asked(endpoint: str, payload: dict) -> bool:
    lp = payload.get("logprobs")
    if endpoint == "chat":
        if lp not in (None, True, False):
            raise _bad(f"logprobs must be true or false, got {lp!r}", "invalid_value")
        return lp is True
    if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or lp < 0):
        raise _bad(f"logprobs must be an integer >= 0, got {lp!r}", "invalid_value")
    return lp is not None


async def _label(live: LiveRoute, pname: str, prompt, task, endpoint: str, payload: dict, rec: _Record):
    """A classifier route's answer: the words of the label `eval` predicts for the input (`engine.evaluate.classify`
    on the route's upstream), with every label's score in `logprobs` when asked."""
    inputs = _conversation(endpoint, payload)
    want_lp = _label_logprobs_asked(endpoint, payload)
    if live.local is not None:
        cfg = GenerationConfig(max_tokens=1)
        done = await _local_answers(live, rec, [live.local.generate(prompt, x, cfg, task, classify=True)
                                                for x in inputs])
        answers = [a.label for a in done]
        _served_by(rec, done)
        rec.prompt_tokens = sum(a.prompt_tokens for a in done)
        rec.completion_tokens = sum(a.completion_tokens for a in done)
        rec.prompt_positions = sum(a.prompt_positions for a in done)
    elif live.via[pname] == EMBEDS:
        answers = [await _embeds_label(live, prompt, task, x, rec) for x in inputs]
    else:
        try:
            answers = await run_in_threadpool(live.labeler.classify, prompt, task, endpoint, inputs)
            rec.prompt_positions, rec.positions_unit = estimated_prompt_positions(prompt, inputs, task), "estimated"
        except PromptliftError as e:
            raise _bad(str(e), "invalid_value") from None
    texts = [task.labels[a.label] if a.label is not None else (a.raw or "") for a in answers]
    if rec.content is not None:
        rec.content["answer"] = texts
    ranked = [sorted(((task.labels[n], v) for n, v in a.scores.items()), key=lambda t: -t[1]) if a.scores else None
              for a in answers]
    model = payload["model"]
    include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    pt, ct = rec.prompt_tokens, rec.completion_tokens
    if endpoint == "chat":
        r = ranked[0]
        lps = P.chat_logprobs((texts[0], dict(r)[texts[0]]), r) if want_lp and r else None
        if rec.stream:
            return Response(b"".join(P.chat_stream(model, texts[0], "stop", pt, ct, include_usage, lps)),
                            media_type="text/event-stream")
        return Response(json.dumps(P.chat_completion(model, texts[0], "stop", pt, ct, logprobs=lps),
                                   ensure_ascii=False), media_type=JSON)
    finishes = ["stop"] * len(texts)
    if rec.stream:
        return Response(b"".join(P.text_stream(model, texts, finishes, pt, ct, include_usage)),
                        media_type="text/event-stream")
    lps = [{"tokens": [t], "token_logprobs": [dict(r)[t]], "text_offset": [0], "top_logprobs": [dict(r)]}
           if want_lp and r else None for t, r in zip(texts, ranked)]
    return Response(json.dumps(P.text_completion(model, texts, finishes, pt, ct, logprobs=lps), ensure_ascii=False),
                    media_type=JSON)


__all__ = ["build_app", "ServerState"]
