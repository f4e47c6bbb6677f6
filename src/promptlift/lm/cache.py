"""A persistent cache of model calls, in one SQLite file.

Every request a backend sends (model id + endpoint + prompt + every sampling
parameter) hashes to a key; the answer is stored as JSON under that key. Running
the same experiment twice therefore costs nothing the second time, and a run
that was cut off resumes where it stopped.

Sampling at temperature > 0 is cached too: the same request gives the same
cached sample. A caller that wants a *fresh* sample that is still cached asks
with another `rollout` number (0, 1, 2, ...), which is part of the key.

Secrets (API keys, authorization headers) are removed from a request before it
is hashed, and requests themselves are never stored: only their hash and the
answer.

The file is opened in WAL mode with a busy timeout, so several threads of one
process and several processes can read and write it at once.

Environment:
  PROMPTLIFT_CACHE_DIR: folder of the default cache file (default ~/.cache/promptlift).
  PROMPTLIFT_CALL_CACHE: the call cache file itself (default $PROMPTLIFT_CACHE_DIR/calls.sqlite); the
    model weights stay under PROMPTLIFT_CACHE_DIR.
  PROMPTLIFT_NO_CACHE=1: disable the cache (nothing is read or written).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from ..files import cache_dir

__all__ = ["CallCache", "cache_disabled_by_env", "redact"]

# Request fields that must never reach a key or the disk (compared after
# lower-casing and turning "-" into "_").
SECRET_FIELDS = frozenset({
    "api_key", "apikey", "x_api_key", "openai_api_key", "authorization",
    "proxy_authorization", "password", "secret", "client_secret", "access_token",
    "bearer", "cookie",
})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    created REAL NOT NULL
)
"""


_BUSY_TIMEOUT_S = 30.0


def _retry_busy(fn: Any) -> Any:
    """Run `fn`, retrying while SQLite says the database is locked or busy (up to _BUSY_TIMEOUT_S)."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            text = str(e).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def cache_disabled_by_env() -> bool:
    """True when $PROMPTLIFT_NO_CACHE is set to a true value (1, true, yes, on)."""
    return os.environ.get("PROMPTLIFT_NO_CACHE", "").strip().lower() in {"1", "true", "yes", "on"}


def _is_secret(name: Any) -> bool:
    return isinstance(name, str) and name.strip().lower().replace("-", "_") in SECRET_FIELDS


def redact(obj: Any) -> Any:
    """A copy of `obj` with every dict entry whose name is a secret (api_key, authorization, ...) removed, at any depth."""
    if isinstance(obj, Mapping):
        return {k: redact(v) for k, v in obj.items() if not _is_secret(k)}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True, default=str)


class CallCache:
    """A thread- and process-safe SQLite cache of model calls.

    Args:
      path: the SQLite file; default $PROMPTLIFT_CALL_CACHE or `cache_dir()/"calls.sqlite"`. The file and
        its folder are created on first use.
      enabled: False turns the cache off (`get` always misses, `put` does
        nothing, no file is touched). Default: on unless $PROMPTLIFT_NO_CACHE=1.

    Use `key(model_id, request)` to hash a request, then `get(key)` / `put(key, value)`.
    Values are anything JSON can hold; `get` returns None on a miss.
    """

    def __init__(self, path: str | Path | None = None, enabled: bool | None = None):
        self.enabled: bool = (not cache_disabled_by_env()) if enabled is None else bool(enabled)
        self._path_arg = Path(path).expanduser() if path is not None else None
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None

    @property
    def path(self) -> Path | None:
        """The SQLite file (None when the cache is disabled and no path was given)."""
        if self._path_arg is not None:
            return self._path_arg
        if not self.enabled:
            return None
        if os.environ.get("PROMPTLIFT_CALL_CACHE"):
            return Path(os.environ["PROMPTLIFT_CALL_CACHE"]).expanduser()
        return cache_dir() / "calls.sqlite"

    def __repr__(self) -> str:
        return f"CallCache(path={str(self.path)!r}, enabled={self.enabled})"

    # ---- keys -------------------------------------------------------------

    @staticmethod
    def key(model_id: str, request: Mapping[str, Any]) -> str:
        """The sha256 hex digest of the canonical JSON of `model_id` and `request`.

        `request` should hold everything that changes the answer: endpoint,
        prompt or messages, n, temperature, max_tokens, stop, top_p, seed and
        `rollout`. Secret fields (api_key, authorization, ...) are dropped first,
        so the key does not depend on them.
        """
        payload = {"model_id": model_id, "request": redact(dict(request))}
        return hashlib.sha256(_canonical(payload).encode("utf-8")).hexdigest()

    # ---- storage ----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection | None:
        # Called with self._lock held. Reopen after a fork: SQLite connections
        # must not cross processes.
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        path = self.path
        assert path is not None
        conn = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT_S, check_same_thread=False,
                                   isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
            # Switching to WAL while another process creates the same file can answer
            # SQLITE_BUSY without waiting: retry.
            _retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
            conn.execute("PRAGMA synchronous=NORMAL")
            _retry_busy(lambda: conn.execute(_SCHEMA))
        except (sqlite3.DatabaseError, OSError) as e:
            if conn is not None:
                conn.close()
            warnings.warn(f"promptlift: call cache {path} cannot be used ({e}); continuing without a cache",
                          RuntimeWarning, stacklevel=3)
            self.enabled = False
            return None
        self._conn, self._pid = conn, os.getpid()
        return conn

    def get(self, key: str) -> Any | None:
        """The value stored under `key`, or None if there is none (or the cache is disabled)."""
        if not self.enabled:
            return None
        with self._lock:
            conn = self._connect()
            if conn is None:
                return None
            row = _retry_busy(lambda: conn.execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone())
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError:
            return None

    def put(self, key: str, value: Any) -> None:
        """Store `value` (JSON-serializable) under `key`, replacing any previous value."""
        if not self.enabled:
            return
        text = json.dumps(value, ensure_ascii=False, allow_nan=True)
        with self._lock:
            conn = self._connect()
            if conn is None:
                return
            _retry_busy(lambda: conn.execute("INSERT OR REPLACE INTO calls (key, value, created) VALUES (?, ?, ?)",
                                             (key, text, time.time())))

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        """Number of stored entries (0 when disabled)."""
        if not self.enabled:
            return 0
        with self._lock:
            conn = self._connect()
            return 0 if conn is None else int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def clear(self) -> None:
        """Delete every entry."""
        if not self.enabled:
            return
        with self._lock:
            conn = self._connect()
            if conn is not None:
                conn.execute("DELETE FROM calls")

    def close(self) -> None:
        """Close the SQLite connection (it is reopened on next use)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn, self._pid = None, None

    def __enter__(self) -> "CallCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # Picklable (e.g. for multiprocessing): the connection and lock are rebuilt.
        return {"enabled": self.enabled, "_path_arg": self._path_arg}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["_path_arg"], state["enabled"])
