"""The per-key requests-per-minute limit: at most N requests in any 60-second window per caller.

Off unless configured (`limits.requests_per_minute`, or a key's own `requests_per_minute`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable


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


__all__ = ["RateLimiter", "retry_after_header"]
