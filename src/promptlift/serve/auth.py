"""Bearer keys (compared by their sha256) and the per-key requests-per-minute limit. Pure: no I/O."""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from .config import ApiKey, hash_key


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a configured key, or (no keys configured) the client address."""

    name: str
    key: ApiKey | None

    def may_use(self, route: str) -> bool:
        return self.key is None or self.key.routes is None or route in self.key.routes

    @property
    def admin(self) -> bool:
        return self.key is not None and self.key.admin


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class KeyStore:
    """Configured keys by hash; `find` hashes the presented token and compares in constant time."""

    def __init__(self, keys: Iterable[ApiKey]):
        self.keys = tuple(keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def find(self, token: str | None) -> ApiKey | None:
        if not token:
            return None
        digest = hash_key(token)
        found = None
        for k in self.keys:  # no early exit: the time taken does not tell which key matched
            if hmac.compare_digest(k.sha256, digest):
                found = k
        return found


class RateLimiter:
    """At most `limit` requests in any 60-second window per caller (sliding window of timestamps)."""

    window_s = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_callers: int = 100_000):
        self.clock = clock
        self.max_callers = max_callers
        self._hits: dict[str, deque] = {}
        self._lock = threading.Lock()

    def check(self, caller: str, limit: int) -> float | None:
        """Count one request; None if allowed, else the seconds until one is (the Retry-After)."""
        if limit <= 0:
            return None
        now = self.clock()
        with self._lock:
            q = self._hits.get(caller)
            if q is None:
                if len(self._hits) >= self.max_callers:  # bounded memory: forget idle callers
                    self._prune(now)
                q = self._hits[caller] = deque()
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if len(q) >= limit:
                return max(0.0, q[len(q) - limit] + self.window_s - now)
            q.append(now)
            return None

    def _prune(self, now: float) -> None:
        for name in [n for n, q in self._hits.items() if not q or q[-1] <= now - self.window_s]:
            del self._hits[name]


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1 (the header takes integers)."""
    return str(max(1, math.ceil(seconds)))


__all__ = ["Caller", "KeyStore", "RateLimiter", "bearer_token", "retry_after_header"]
