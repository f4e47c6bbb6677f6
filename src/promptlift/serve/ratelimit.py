"""The per-key requests-per-minute limit: at most N requests in any 60-second window per caller.

Off unless configured (`limits.requests_per_minute`, or a key's own `requests_per_minute`).
`RateLimiter` counts in memory (one server process); `SharedRateLimiter` counts
in a SQLite file that every worker process of one server opens (`--workers N`),
so a key limited to N per minute gets N in all, whichever workers answer it.
Both read `time.monotonic`, which is one clock for every process of a machine.
"""

from __future__ import annotations

import math
import sqlite3
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


class SharedRateLimiter:
    """`RateLimiter`'s window, kept in a SQLite file shared by processes (one write transaction a request).

    path: the file (created if missing); every process opens its own connection on first use.
    """

    window_s = RateLimiter.window_s
    prune_every = 1000  # requests between removals of every caller's expired rows

    def __init__(self, path, clock: Callable[[], float] = time.monotonic):
        self.path = str(path)
        self.clock = clock
        self._con: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._count = 0

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")  # a crash may lose the last hits: they are a rate window, not data
        con.execute("CREATE TABLE IF NOT EXISTS hits (caller TEXT NOT NULL, t REAL NOT NULL)")
        con.execute("CREATE INDEX IF NOT EXISTS hits_caller_t ON hits (caller, t)")
        return con

    def check(self, caller: str, limit: int) -> float | None:
        """Count one request; None if allowed, else the seconds until one is (the Retry-After)."""
        if limit <= 0:
            return None
        now = self.clock()
        with self._lock:
            if self._con is None:
                self._con = self._connect()
            con = self._con
            self._count += 1
            con.execute("BEGIN IMMEDIATE")  # one writer at a time across processes: count and insert atomically
            try:
                if self._count % self.prune_every == 0:
                    con.execute("DELETE FROM hits WHERE t <= ?", (now - self.window_s,))
                else:
                    con.execute("DELETE FROM hits WHERE caller = ? AND t <= ?", (caller, now - self.window_s))
                (n,) = con.execute("SELECT count(*) FROM hits WHERE caller = ?", (caller,)).fetchone()
                if n >= limit:
                    (t,) = con.execute("SELECT t FROM hits WHERE caller = ? ORDER BY t LIMIT 1 OFFSET ?",
                                       (caller, n - limit)).fetchone()
                    wait: float | None = max(0.0, t + self.window_s - now)
                else:
                    con.execute("INSERT INTO hits VALUES (?, ?)", (caller, now))
                    wait = None
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return wait

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1 (the header takes integers)."""
    return str(max(1, math.ceil(seconds)))


__all__ = ["RateLimiter", "SharedRateLimiter", "retry_after_header"]
