"""Requests to an OpenAI-compatible HTTP upstream: pooled connections, timeouts, bounded retries.

Retried (at most `limits.upstream_retries` times, exponential backoff from
50 ms, capped at 2 s): the statuses `lm.openai.retryable_status` retries (408,
409, 425, 429, a 5xx other than 501), a refused connection, a connect timeout,
a connection the server dropped before answering. An upstream's `Retry-After`
is honoured whole: never retried earlier than asked, and when the wait would
outlast `limits.upstream_timeout_s` the proxy gives up at once and passes the
429 or 503 on with that Retry-After. Not retried: a read timeout (the upstream
may still be working on it) and other 4xx. What is left after the retries
becomes a `ServeError` (see `protocol`): 504 on a timeout, 429 and 503 passed on
(with Retry-After), 502 when the upstream is down or keeps failing otherwise,
other 4xx passed through as they are. Messages never name the upstream's URL.

The pool: httpx clients of 8 connections each (httpcore scans every connection
of its pool for every queued request, which costs more than the rest of the
proxy once dozens are in flight); each request goes to the client with the
fewest requests in flight, so long streams on one client never make short
requests queue there while others are free. A pool a reload no longer uses is
`retire`d: closed once its last request is done.
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


class Stream:
    """An upstream's open 2xx answer, read line by line; `aclose` frees its connection for the next request."""

    def __init__(self, resp: httpx.Response, release):
        self.resp = resp
        self.status_code = resp.status_code
        self.headers = resp.headers
        self._release = release

    def aiter_lines(self):
        return self.resp.aiter_lines()

    async def aread(self) -> bytes:
        return await self.resp.aread()

    async def aclose(self) -> None:
        try:
            await self.resp.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class HttpUpstream:
    """One OpenAI-compatible endpoint (base URL ending in /v1) and its connection pool.

    `transport` replaces the network (tests use `httpx.MockTransport`). The clients
    are made on first use, inside the server's event loop.
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
        self._load: list[int] = []  # requests in flight per client
        self.in_flight = 0
        self.retired = False
        self._closing: asyncio.Task | None = None

    def _clients_made(self) -> list[httpx.AsyncClient]:
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
            self._load = [0] * shards
        return self._clients

    def _acquire(self):
        """(client, release): the client with the fewest requests in flight; call release once done."""
        clients, load = self._clients_made(), self._load
        i = load.index(min(load))
        load[i] += 1
        self.in_flight += 1

        def release() -> None:
            if self._clients is clients:
                load[i] -= 1
            self.in_flight -= 1
            if self.in_flight == 0 and self.retired:
                self._close_soon()

        return clients[i], release

    def retire(self) -> None:
        """No new snapshot uses this pool: close it once the requests in flight are done."""
        self.retired = True
        if self.in_flight == 0:
            self._close_soon()

    def _close_soon(self) -> None:
        if self._clients and (self._closing is None or self._closing.done()):
            self._closing = asyncio.get_running_loop().create_task(self.aclose())

    async def aclose(self) -> None:
        clients, self._clients, self._load = self._clients, [], []
        for c in clients:
            await c.aclose()

    async def post(self, path: str, payload: dict) -> tuple[int, bytes]:
        """POST JSON and read the whole answer: (status, body) of a 2xx; anything else raises ServeError."""
        async def whole() -> tuple[int, bytes]:
            resp = await self._send(path, payload)
            try:
                return resp.status_code, await resp.aread()
            except httpx.TimeoutException:
                raise self._timeout() from None
            except httpx.TransportError as e:
                raise ServeError(502, f"the upstream broke off its answer ({type(e).__name__})", "upstream_error",
                                 "upstream_unavailable") from None
            finally:
                await resp.aclose()

        try:
            return await asyncio.wait_for(whole(), self.limits.upstream_timeout_s)
        except asyncio.TimeoutError:
            raise self._timeout() from None

    async def stream(self, path: str, payload: dict) -> Stream:
        """POST JSON and return the open 2xx answer to read as a stream (the caller closes it)."""
        return await self._send(path, payload)

    def _timeout(self) -> ServeError:
        return ServeError(504, f"the upstream did not answer within {self.limits.upstream_timeout_s:g} s",
                          "upstream_error", "upstream_timeout")

    async def _send(self, path: str, payload: dict) -> Stream:
        content = json.dumps(payload, ensure_ascii=False).encode()
        url = self.base_url + path
        retries = max(0, self.limits.upstream_retries)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.upstream_timeout_s
        for attempt in range(retries + 1):
            last = attempt == retries
            client, release = self._acquire()
            try:
                req = client.build_request("POST", url, content=content, headers=self.headers)
                resp = await client.send(req, stream=True)
            except _RETRY_TRANSPORT as e:
                release()
                if not last and await self._backoff(attempt, None, deadline):
                    continue
                if isinstance(e, httpx.ConnectTimeout):
                    raise self._timeout() from None
                raise ServeError(502, f"the upstream is unreachable ({type(e).__name__})", "upstream_error",
                                 "upstream_unavailable") from None
            except httpx.TimeoutException:
                release()
                raise self._timeout() from None
            except httpx.TransportError as e:
                release()
                raise ServeError(502, f"the upstream failed ({type(e).__name__})", "upstream_error",
                                 "upstream_unavailable") from None
            except BaseException:  # cancelled (the client went away, or the post's deadline)
                release()
                raise
            status = resp.status_code
            if status < 400:
                return Stream(resp, release)
            try:
                body = await resp.aread()
            finally:
                await resp.aclose()
                release()
            wait = retry_after(resp.headers)
            if retryable_status(status) and not last and await self._backoff(attempt, wait, deadline):
                continue
            raise _status_error(status, body, wait, attempt + 1)
        raise AssertionError("unreachable")

    async def _backoff(self, attempt: int, retry_after: float | None, deadline: float) -> bool:
        """Wait before the next try; False (no wait) when the wait would end after `deadline`."""
        delay = min(_MAX_BACKOFF_S, _BACKOFF_S * (2 ** attempt)) * (0.5 + random.random() / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)  # never earlier than asked
        if asyncio.get_running_loop().time() + delay >= deadline:
            return False
        await asyncio.sleep(delay)
        return True


def _status_error(status: int, body: bytes, wait: float | None, tries: int) -> ServeError:
    """What the client gets for an upstream's last error status (`wait`: its Retry-After, seconds)."""
    msg = upstream_message(body)
    headers = {"retry-after": str(max(1, -(-int(wait * 1000) // 1000)))} if wait else {}
    if status == 429:
        return ServeError(429, f"the upstream is rate limited: {msg}", "rate_limit_error", "upstream_rate_limited",
                          headers)
    if status == 503:
        return ServeError(503, f"the upstream is overloaded (503 after {tries} tries): {msg}", "upstream_error",
                          "upstream_overloaded", headers)
    if status >= 500:
        return ServeError(502, f"the upstream answered {status} after {tries} tries: {msg}", "upstream_error",
                          "upstream_error")
    return ServeError(status, msg or f"the upstream answered {status}", "invalid_request_error", "upstream_rejected",
                      body=body if _is_openai_error(body) else None)


def _is_openai_error(body: bytes) -> bool:
    try:
        d = json.loads(body)
    except ValueError:
        return False
    return isinstance(d, dict) and isinstance(d.get("error"), dict) and "message" in d["error"]


__all__ = ["HttpUpstream", "Stream", "public_url", "upstream_message"]
