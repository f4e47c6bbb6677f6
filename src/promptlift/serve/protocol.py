"""OpenAI wire shapes the proxy produces itself: error bodies, completions, SSE chunks. Pure.

Every error the proxy answers has the OpenAI body
`{"error": {"message": ..., "type": ..., "code": ..., "param": null}}`:

    400 invalid_request_error   bad JSON or fields, max_tokens above the cap, unknown prompt header,
                                a request the artifact cannot take (e.g. a system message before a soft prompt)
    401 authentication_error    missing or unknown API key               (code invalid_api_key)
    403 permission_error        the key may not use this route / reload  (code route_not_allowed, not_admin)
    404 invalid_request_error   unknown model (route)                    (code model_not_found)
    413 invalid_request_error   request body above limits.max_body_bytes (code request_too_large)
    429 rate_limit_error        the key's requests per minute, with Retry-After (code rate_limit_exceeded)
    404 invalid_request_error   unknown path                             (code not_found)
    405 invalid_request_error   wrong method for the path                (code method_not_allowed)
    408 invalid_request_error   the request body did not arrive in time  (code request_timeout)
    499 (logged only)           the client went away before the answer   (code client_closed_request)
    502 upstream_error          upstream refused the connection or kept failing (5xx) (code upstream_unavailable,
                                upstream_error)
    503 upstream_error          upstream answered 503, with its Retry-After (code upstream_overloaded)
    504 upstream_error          upstream did not answer in time          (code upstream_timeout)
    500 server_error            the local model failed, or a bug in the proxy (code local_model_error,
                                internal_error)

An upstream's own 4xx (a bad parameter it refuses) is passed through with its status and body, scrubbed of
the route's prompt (`serve.guard`).

`ChatRequest` and `CompletionRequest` are the types a request's fields must have (checked before anything is
sent on); fields they do not name go through as sent.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, FiniteFloat, StrictBool, StrictInt, StrictStr


@dataclass
class ServeError(Exception):
    """An error answered to the client with an OpenAI-style body."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    headers: dict = field(default_factory=dict)
    body: bytes | None = None  # an upstream's own error body, passed through as is

    def __str__(self) -> str:
        return self.message

    def content(self) -> bytes:
        return self.body if self.body is not None else error_body(self.message, self.type, self.code)


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "code": code, "param": param}}).encode()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
                    id: str | None = None, logprobs: dict | None = None) -> dict:
    """A non-streaming chat.completion object with one choice (`logprobs`: its `{"content": [...]}` object)."""
    return {"id": id or new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                         "finish_reason": finish}],
            "usage": usage(prompt_tokens, completion_tokens)}


def text_completion(model: str, texts: list[str], finishes: list[str], prompt_tokens: int, completion_tokens: int,
                    id: str | None = None, logprobs: list[dict | None] | None = None) -> dict:
    """A non-streaming text_completion object, one choice per prompt (`logprobs`: one object per choice)."""
    lps = logprobs or [None] * len(texts)
    return {"id": id or new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "text": t, "logprobs": lp, "finish_reason": f}
                        for i, (t, f, lp) in enumerate(zip(texts, finishes, lps))],
            "usage": usage(prompt_tokens, completion_tokens)}


def token_logprob(token: str, logprob: float) -> dict:
    """One chat `logprobs.content` entry's token: {token, logprob, bytes (its UTF-8 bytes)}."""
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(first: tuple[str, float], top: list[tuple[str, float]]) -> dict:
    """The chat `logprobs` object for one generated token: itself and its `top_logprobs` alternatives."""
    return {"content": [{**token_logprob(*first), "top_logprobs": [token_logprob(t, v) for t, v in top]}],
            "refusal": None}


def sse(obj: dict | str) -> bytes:
    """One server-sent event line pair."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


def chat_chunk(id: str, model: str, created: int, delta: dict, finish: str | None = None,
               usage_: dict | None = None, logprobs: dict | None = None) -> dict:
    d = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
         "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
    if usage_ is not None:
        d["usage"] = usage_
    return d


def text_chunk(id: str, model: str, created: int, text: str, finish: str | None = None, index: int = 0) -> dict:
    return {"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]}


def chat_stream(model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
                include_usage: bool, logprobs: dict | None = None) -> list[bytes]:
    """A whole answer as chat SSE events: role, content (with `logprobs`), finish, [usage], [DONE]."""
    id, created = new_id("chatcmpl"), int(time.time())
    out = [sse(chat_chunk(id, model, created, {"role": "assistant", "content": ""})),
           sse(chat_chunk(id, model, created, {"content": text}, logprobs=logprobs)),
           sse(chat_chunk(id, model, created, {}, finish))]
    if include_usage:
        out.append(sse({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": usage(prompt_tokens, completion_tokens)}))
    return out + [SSE_DONE]


def text_stream(model: str, texts: list[str], finishes: list[str], prompt_tokens: int, completion_tokens: int,
                include_usage: bool) -> list[bytes]:
    """Whole answers as completions SSE events."""
    id, created = new_id("cmpl"), int(time.time())
    out = []
    for i, (t, f) in enumerate(zip(texts, finishes)):
        out.append(sse(text_chunk(id, model, created, t, None, i)))
        out.append(sse(text_chunk(id, model, created, "", f, i)))
    if include_usage:
        out.append(sse({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [],
                        "usage": usage(prompt_tokens, completion_tokens)}))
    return out + [SSE_DONE]


# --- what a request's fields must be -----------------------------------------------------------------


class _Fields(BaseModel):
    """Fields both endpoints share: strict types (no "false" for false), finite numbers."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: Optional[StrictStr] = None
    stream: Optional[StrictBool] = None
    stream_options: Optional[dict] = None
    max_tokens: Optional[StrictInt] = None
    n: Optional[StrictInt] = None
    seed: Optional[StrictInt] = None
    temperature: Optional[FiniteFloat] = None
    top_p: Optional[FiniteFloat] = None
    presence_penalty: Optional[FiniteFloat] = None
    frequency_penalty: Optional[FiniteFloat] = None
    logit_bias: Optional[dict[str, FiniteFloat]] = None
    stop: Union[StrictStr, list[StrictStr], None] = None
    user: Optional[StrictStr] = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: StrictStr
    content: Union[StrictStr, list[dict], None] = None


class ChatRequest(_Fields):
    messages: Optional[list[Message]] = None
    max_completion_tokens: Optional[StrictInt] = None
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[StrictInt] = None


class CompletionRequest(_Fields):
    prompt: Any = None  # a string or strings: checked where it is rendered
    logprobs: Optional[StrictInt] = None
    echo: Optional[StrictBool] = None


def json_as_sse(d: Any, include_usage: bool) -> list[bytes]:
    """The SSE lines of a stream equal to a whole chat.completion or text_completion `d`.

    For an upstream that ignored `stream: true`; anything else (an error object, an unknown object) gives
    one error event.
    """
    obj = d.get("object") if isinstance(d, dict) else None
    if obj not in ("chat.completion", "text_completion") or not isinstance(d.get("choices"), list):
        err = d.get("error") if isinstance(d, dict) and isinstance(d.get("error"), dict) else None
        return [sse({"error": err or {"message": "the upstream answered a streaming request with something else "
                                                 "than a stream or a completion", "type": "upstream_error",
                                      "code": "upstream_error", "param": None}})]
    chat = obj == "chat.completion"
    base = {"id": d.get("id") or new_id("chatcmpl" if chat else "cmpl"), "created": d.get("created") or 0,
            "model": d.get("model"), "object": "chat.completion.chunk" if chat else "text_completion"}
    out = []
    for i, ch in enumerate(d["choices"]):
        index = ch.get("index", i) if isinstance(ch, dict) else i
        ch = ch if isinstance(ch, dict) else {}
        if chat:
            msg = ch.get("message") or {}
            delta = {"role": msg.get("role", "assistant"), "content": msg.get("content") or ""}
            if msg.get("tool_calls"):
                delta["tool_calls"] = msg["tool_calls"]
            first = {"index": index, "delta": delta, "logprobs": ch.get("logprobs"), "finish_reason": None}
            last = {"index": index, "delta": {}, "logprobs": None, "finish_reason": ch.get("finish_reason")}
        else:
            first = {"index": index, "text": ch.get("text") or "", "logprobs": ch.get("logprobs"),
                     "finish_reason": None}
            last = {"index": index, "text": "", "logprobs": None, "finish_reason": ch.get("finish_reason")}
        out += [{**base, "choices": [first]}, {**base, "choices": [last]}]
    if include_usage and d.get("usage"):
        out.append({**base, "choices": [], "usage": d["usage"]})
    return [sse(x) for x in out] + [SSE_DONE]


__all__ = ["ChatRequest", "CompletionRequest", "json_as_sse", "ServeError", "error_body", "chat_completion", "chat_logprobs", "token_logprob", "text_completion", "chat_chunk", "text_chunk",
           "chat_stream", "text_stream", "sse", "SSE_DONE", "usage", "new_id"]
