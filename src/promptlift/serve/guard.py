"""What the proxy checks so that bad clients get a 400 and nobody gets the hidden prompt back.

- `parse_body`: a request body to a JSON object, or a 400: malformed JSON, nesting too deep for the parser,
  NaN / Infinity / 1e999, a lone surrogate (a string that cannot be sent on as UTF-8).
- `check_fields`: field types and finite numbers (`protocol.ChatRequest`, `protocol.CompletionRequest`), and
  the fields that would hand the rendered prompt back (`PROMPT_RETURNING`) refused.
- `hidden_texts` + `scrub`: an upstream error that quotes the request (validation errors often do) has every
  string that holds a piece of the route's prompt replaced before it reaches the client.
- `openai_http_errors`: unknown paths and wrong methods answered with OpenAI error bodies.
- `unless_client_leaves`: a client that closes the connection before its answer cancels the work
  (the upstream call with it) and is logged as 499.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from . import protocol as P

T = TypeVar("T")
CLIENT_GONE = "client_closed_request"
_WATCH_AFTER_S = 0.05  # a request still running after this is watched for its client going away

# Fields an OpenAI-compatible server (vLLM, llama.cpp, ...) answers with the prompt it was sent: the prompt's
# own log-probabilities or tokens, the prompt echoed, or a chat template of the client's choosing. A false or
# null value asks nothing and is let through. (`echo` on /v1/completions is the local upstream's scoring
# path, decided in `app`.)
PROMPT_RETURNING = ("echo", "prompt_logprobs", "chat_template", "chat_template_kwargs", "return_tokens_as_token_ids",
                    "return_token_ids", "return_prompt", "add_special_tokens")

_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]", re.ASCII)
_WITHHELD = "[withheld: the upstream quoted the route's prompt]"
_SHINGLE = 16  # characters (letters and digits only) of the prompt that make a quote of it
_MIN_PIECE = 10  # shorter pieces of the prompt ("Input:", a label word) are not looked for


def _bad(message: str, code: str = "invalid_value") -> P.ServeError:
    return P.ServeError(400, message, "invalid_request_error", code)


def _not_finite(text: str):
    raise ValueError(f"{text} is not a number JSON allows")


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text} is out of range")
    return v


def parse_body(body: bytes) -> dict:
    """The request's JSON object, or a 400 `ServeError` (code invalid_json) saying what is wrong with it."""
    try:
        payload = json.loads(body, parse_constant=_not_finite, parse_float=_finite)
    except RecursionError:
        raise _bad("request body is nested too deeply", "invalid_json") from None
    except ValueError as e:
        raise _bad(f"request body is not valid JSON ({' '.join(str(e).split())[:200]})", "invalid_json") from None
    if not isinstance(payload, dict):
        raise _bad("request body must be a JSON object", "invalid_json")
    if _SURROGATE.search(body):  # \ud800-\udfff escapes: fine in pairs, a lone one cannot be encoded
        try:
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _bad("request body holds a lone UTF-16 surrogate (\\ud800-\\udfff): not valid text",
                       "invalid_json") from None
    return payload


def check_fields(endpoint: str, payload: dict) -> None:
    """400 on a field of the wrong type or a non-finite number, or a field that returns the prompt."""
    model = P.ChatRequest if endpoint == "chat" else P.CompletionRequest
    try:
        model.model_validate(payload)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(x) for x in err["loc"]) or "body"
        got = repr(err.get("input"))
        raise _bad(f"{where}: {err['msg']}, got {got[:60]}{'...' if len(got) > 60 else ''}") from None
    for k in PROMPT_RETURNING:
        if k == "echo" and endpoint == "completions":
            continue
        if payload.get(k) not in (None, False):
            raise _bad(f"{k} cannot be sent through the proxy: it would return the route's hidden prompt",
                       "unsupported_parameter")


# --- the route's prompt never comes back in an error -------------------------------------------------


def _texts(x: Any) -> Iterable[str]:
    """Every string in a JSON value."""
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _texts(v)
    elif isinstance(x, list):
        for v in x:
            yield from _texts(v)


def hidden_texts(sent: Any, client: Any) -> list[str]:
    """The pieces of what went upstream (`sent`: messages or prompts) that the client did not send itself."""
    own = sorted({t for t in _texts(client) if t}, key=len, reverse=True)
    pieces = []
    for text in _texts(sent):
        for t in own:
            text = text.replace(t, "\0")
        pieces += [p for p in text.split("\0") if p.strip()]
    return pieces


def _norm(s: str) -> str:
    return re.sub(r"[\W_]+", "", s.lower())


class Scrubber:
    """Finds strings that quote the route's prompt: 16 letters and digits in a row of it, ignoring case,
    spacing, punctuation and escaping (so a quote in a repr or JSON-escaped still counts)."""

    def __init__(self, hidden: list[str]):
        self.shingles: set[str] = set()  # every 16 characters in a row of the longer pieces
        self.short: set[str] = set()  # pieces of 10 to 15 characters, looked for whole
        for piece in hidden:
            n = _norm(piece)
            if len(n) >= _SHINGLE:
                self.shingles.update(n[i:i + _SHINGLE] for i in range(len(n) - _SHINGLE + 1))
            elif len(n) >= _MIN_PIECE:
                self.short.add(n)

    def quotes(self, s: str) -> bool:
        n = _norm(s)
        if len(n) < _MIN_PIECE:
            return False
        return (any(n[i:i + _SHINGLE] in self.shingles for i in range(len(n) - _SHINGLE + 1))
                or any(piece in n for piece in self.short))

    def value(self, x: Any) -> Any:
        """A JSON value with every string that quotes the prompt replaced."""
        if isinstance(x, str):
            return _WITHHELD if self.quotes(x) else x
        if isinstance(x, dict):
            return {k: self.value(v) for k, v in x.items()}
        if isinstance(x, list):
            return [self.value(v) for v in x]
        return x

    def error(self, e: P.ServeError) -> P.ServeError:
        """`e` with its message and passed-through body scrubbed."""
        if self.quotes(e.message):
            e.message = f"the upstream answered {e.status}: {_WITHHELD}"
        if e.body is not None:
            try:
                e.body = json.dumps(self.value(json.loads(e.body))).encode()
            except ValueError:
                e.body = None
        return e

    def line(self, line: str) -> str:
        """One SSE line (`data: {...}`) scrubbed."""
        if not line.startswith("data:") or not self.quotes(line):
            return line
        try:
            return "data: " + json.dumps(self.value(json.loads(line[5:])), ensure_ascii=False)
        except ValueError:
            return "data: " + json.dumps({"error": {"message": _WITHHELD, "type": "upstream_error",
                                                    "code": "upstream_error", "param": None}})


def scrubber(sent: Any, client: Any) -> Callable[[], Scrubber]:
    """A maker of the request's `Scrubber`, built on first use (only an error needs it)."""
    made: list[Scrubber] = []

    def get() -> Scrubber:
        if not made:
            made.append(Scrubber(hidden_texts(sent, client)))
        return made[0]

    return get


# --- OpenAI-shaped errors for what FastAPI answers itself ----------------------------------------------


def openai_http_errors(app: FastAPI) -> None:
    """Answer unknown paths (404) and wrong methods (405) with OpenAI error bodies."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        msg = {404: f"no such path: {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return Response(P.error_body(msg, "invalid_request_error", code), status_code=exc.status_code,
                        media_type="application/json", headers=getattr(exc, "headers", None))




# --- a client that goes away cancels its request ------------------------------------------------------


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body must already be read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or (the client closed the connection first) `work` cancelled and a 499 raised.

    `work` runs in this task. Only a request still running after `_WATCH_AFTER_S` gets a watcher task that
    cancels this one if the client goes away: on the fast path nothing but a timer is added.
    """
    me = asyncio.current_task()
    loop = asyncio.get_running_loop()
    state: dict[str, Any] = {"gone": False, "done": False, "watcher": None}

    def client_left(watcher: asyncio.Task) -> None:
        if not state["done"] and not watcher.cancelled() and watcher.exception() is None:
            state["gone"] = True
            me.cancel()

    def watch() -> None:
        if not state["done"]:
            state["watcher"] = asyncio.ensure_future(_disconnected(request))
            state["watcher"].add_done_callback(client_left)

    timer = loop.call_later(_WATCH_AFTER_S, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if not state["gone"]:
            raise
        if hasattr(me, "uncancel"):
            me.uncancel()
        raise P.ServeError(499, "the client closed the connection before the answer", "invalid_request_error",
                           CLIENT_GONE) from None
    finally:
        state["done"] = True
        timer.cancel()
        if state["watcher"] is not None:
            state["watcher"].cancel()


__all__ = ["CLIENT_GONE", "PROMPT_RETURNING", "Scrubber", "check_fields", "hidden_texts", "openai_http_errors",
           "parse_body", "scrubber", "unless_client_leaves"]
