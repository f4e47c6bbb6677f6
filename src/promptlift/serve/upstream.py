"""Requests to an OpenAI-compatible HTTP upstream: pooled connections, timeouts, bounded retries.

Retried (at most `limits.upstream_retries` times, exponential backoff from
50 ms, capped at 2 s, `Retry-After` honoured up to that cap): the statuses
`lm.openai.retryable_status` retries (408, 409, 425, 429, a 5xx other than
501), a refused connection, a connect timeout, a connection the
server dropped before answering. Not retried: a read timeout (the upstream may
still be working on it) and other 4xx. What is left after the retries becomes
a `ServeError` (see `protocol`): 504 on a timeout, 502 when the upstream is down
or keeps failing, 429 passed on, other 4xx passed through as they are.
"""

from __future__ import annotations

import asyncio
import json
import random
from urllib.parse import urlsplit, urlunsplit

import httpx

from ..lm.openai import retry_after, retryable_status
from .config import Limits
from .protocol import ServeError

_BACKOFF_S = 0.05
_CONNECTIONS_PER_SHARD = 8
_MAX_BACKOFF_S = 2.0
_RETRY_TRANSPORT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


def public_url(url: str) -> str:
    """`url` without credentials or query (they may hold secrets)."""
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc.rsplit("@", 1)[-1], p.path.rstrip("/"), "", ""))


def upstream_message(body: bytes) -> str:
    """The error message of an upstream's error body, on one line, at most 300 characters."""
    msg = None
    try:
        d = json.loads(body)
        err = d.get("error", d) if isinstance(d, dict) else d
        msg = err.get("message") or err.get("detail") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        msg = body.decode("utf-8", "replace")
    msg = " ".join(str(msg or "").split())
    return msg[:300] + ("..." if len(msg) > 300 else "")


class HttpUpstream:
    """One OpenAI-compatible endpoint (base URL ending in /v1) and its connection pool.

    `transport` replaces the network (tests use `httpx.MockTransport`). The client
    is made on first use, inside the server's event loop.
    """

    def __init__(self, base_url: str, api_key: str | None = None, limits: Limits | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.public = public_url(self.base_url)
        self.limits = limits or Limits()
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.transport = transport
        self._clients: list[httpx.AsyncClient] = []
        self._next = 0

    @property
    def client(self) -> httpx.AsyncClient:
        """A client of the pool, in turn.

        The connections are spread over httpx clients of 8 connections each: httpcore
        scans every connection of its pool (for every queued request) on each request,
        which costs more than the rest of the proxy once dozens of requests are in flight.
        """
        if not self._clients:
            lim = self.limits
            shards = -(-lim.upstream_max_connections // _CONNECTIONS_PER_SHARD)
            per = -(-lim.upstream_max_connections // shards)
            ssl_context = httpx.create_ssl_context()  # one for all shards (each takes ~30 ms to make)
            self._clients = [httpx.AsyncClient(
                transport=self.transport, verify=ssl_context,
                timeout=httpx.Timeout(lim.upstream_timeout_s, connect=lim.upstream_connect_timeout_s),
                limits=httpx.Limits(max_connections=per, max_keepalive_connections=per),
            ) for _ in range(shards)]
        self._next = (self._next + 1) % len(self._clients)
        return self._clients[self._next]

    async def aclose(self) -> None:
        clients, self._clients = self._clients, []
        for c in clients:
            await c.aclose()

    async def post(self, path: str, payload: dict) -> tuple[int, bytes]:
        """POST JSON and read the whole answer: (status, body) of a 2xx; anything else raises ServeError."""
        try:
            resp = await asyncio.wait_for(self._send(path, payload, stream=False), self.limits.upstream_timeout_s)
        except asyncio.TimeoutError:
            raise self._timeout() from None
        return resp.status_code, resp.content

    async def stream(self, path: str, payload: dict) -> httpx.Response:
        """POST JSON and return the open 2xx response to read as a stream (the caller closes it)."""
        return await self._send(path, payload, stream=True)

    def _timeout(self) -> ServeError:
        return ServeError(504, f"upstream {self.public} did not answer within {self.limits.upstream_timeout_s:g} s",
                          "upstream_error", "upstream_timeout")

    async def _send(self, path: str, payload: dict, stream: bool) -> httpx.Response:
        content = json.dumps(payload, ensure_ascii=False).encode()
        url = self.base_url + path
        retries = max(0, self.limits.upstream_retries)
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                client = self.client
                req = client.build_request("POST", url, content=content, headers=self.headers)
                resp = await client.send(req, stream=stream)
            except _RETRY_TRANSPORT as e:
                if not last:
                    await self._backoff(attempt)
                    continue
                if isinstance(e, httpx.ConnectTimeout):
                    raise self._timeout() from None
                detail = " ".join(str(e).split())[:200]
                raise ServeError(502, f"upstream {self.public} is unreachable ({type(e).__name__}: {detail})",
                                 "upstream_error", "upstream_unavailable") from None
            except httpx.TimeoutException:
                raise self._timeout() from None
            except httpx.TransportError as e:
                raise ServeError(502, f"upstream {self.public} failed ({type(e).__name__})", "upstream_error",
                                 "upstream_unavailable") from None
            status = resp.status_code
            if status < 400:
                return resp
            body = await resp.aread()
            await resp.aclose()
            retryable = retryable_status(status)
            if retryable and not last:
                await self._backoff(attempt, retry_after(resp.headers))
                continue
            msg = upstream_message(body)
            if status == 429:
                ra = retry_after(resp.headers)
                raise ServeError(429, f"upstream {self.public} is rate limited: {msg}", "rate_limit_error",
                                 "upstream_rate_limited", {"retry-after": str(max(1, round(ra)))} if ra else {})
            if status >= 500:
                raise ServeError(502, f"upstream {self.public} answered {status} after {attempt + 1} tries: {msg}",
                                 "upstream_error", "upstream_error")
            raise ServeError(status, msg or f"upstream answered {status}", "invalid_request_error", "upstream_rejected",
                             body=body if _is_openai_error(body) else None)
        raise AssertionError("unreachable")

    async def _backoff(self, attempt: int, retry_after: float | None = None) -> None:
        delay = min(_MAX_BACKOFF_S, _BACKOFF_S * (2 ** attempt))
        if retry_after is not None:
            delay = min(_MAX_BACKOFF_S, max(delay, retry_after))
        await asyncio.sleep(delay * (0.5 + random.random() / 2))


def _is_openai_error(body: bytes) -> bool:
    try:
        d = json.loads(body)
    except ValueError:
        return False
    return isinstance(d, dict) and isinstance(d.get("error"), dict) and "message" in d["error"]


__all__ = ["HttpUpstream", "public_url", "upstream_message"]
