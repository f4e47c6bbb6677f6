"""`promptlift serve --workers N`: processes behind one port sharing rate limits, metrics and reloads.

The real command in a subprocess (2 workers on a free port of 127.0.0.1, stopped
at the end) in front of the fake upstream of test_serve.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from promptlift.artifacts import TextPrompt
from promptlift.errors import ConfigError
from promptlift.serve.config import hash_key, parse_config, usable_cores
from promptlift.serve.ratelimit import SharedRateLimiter
from fakes import ADMIN_KEY, KEY, OTHER_KEY, fake, save, write_config  # noqa: F401

LIMIT = 5


def _metric(text: str, status: str) -> float:
    m = re.search(r'^promptlift_requests_total\{[^}]*status="%s"[^}]*\} ([0-9.e+]+)$' % status, text, re.M)
    return float(m.group(1)) if m else 0.0


def _wait(cond, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Served:
    """`promptlift serve --config FILE` with its stdout and stderr in files (read while it runs)."""

    def __init__(self, tmp_path: Path, config: Path):
        self.out, self.err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "promptlift.cli", "serve", "--config", str(config),
                                          "--port", "0"], stdout=out, stderr=err, env={**os.environ})
        line = _wait(lambda: self._listening(), 120, "the server to listen")
        self.port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def _listening(self) -> str | None:
        assert self.proc.poll() is None, self.err.read_text()
        return next((x for x in self.out.read_text().splitlines() if x.startswith("listening on")), None)

    def post(self, body: dict, key: str) -> httpx.Response:
        """A new connection for each request, so the kernel spreads them over the workers."""
        return httpx.post(self.url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {key}", "connection": "close"})

    def requests(self) -> list[dict]:
        lines = [json.loads(x) for x in self.err.read_text().splitlines() if x.startswith("{")]
        return [x for x in lines if x.get("event") == "request"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_two_workers_share_limits_metrics_reloads_and_stop_gracefully(tmp_path, fake):
    a_path, a_sha = save(TextPrompt(instruction="First."), tmp_path / "a")
    b_path, b_sha = save(TextPrompt(instruction="Second."), tmp_path / "b")
    c_path, c_sha = save(TextPrompt(instruction="Third."), tmp_path / "c")

    def config(path, sha):
        return write_config(tmp_path, {
            "workers": 2,
            "routes": [{"name": "r", "upstream": fake.url, "prompt": str(path), "sha256": sha}],
            "keys": [{"name": "alice", "sha256": hash_key(KEY), "requests_per_minute": LIMIT},
                     {"name": "bob", "sha256": hash_key(OTHER_KEY)},
                     {"name": "ops", "sha256": hash_key(ADMIN_KEY), "admin": True}]})

    srv = Served(tmp_path, config(a_path, a_sha))
    try:
        assert "2 worker(s)" in srv.out.read_text() and "rate limit: none; key alice: 5 per minute" in \
            srv.out.read_text()
        body = {"model": "r", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
        # the key's limit holds across workers: N answered in all, whichever worker took each connection
        statuses = [srv.post(body, KEY).status_code for _ in range(30)]
        assert statuses.count(200) == LIMIT and statuses.count(429) == 30 - LIMIT
        _wait(lambda: len(srv.requests()) >= 30, what="30 log lines")
        logged = srv.requests()
        per_worker = {w: sum(1 for x in logged if x["worker"] == w) for w in (0, 1)}
        assert per_worker[0] > 0 and per_worker[1] > 0, per_worker  # both workers answered some
        # /metrics sums the workers: every answer, whichever worker renders it
        for _ in range(6):
            text = httpx.get(srv.url + "/metrics", headers={"connection": "close"}).text
            assert (_metric(text, "200"), _metric(text, "429")) == (LIMIT, 30 - LIMIT)

        def all_served_with(sha: str) -> bool:
            before = len(srv.requests())
            heads = [srv.post(body, OTHER_KEY).headers.get("x-promptlift-prompt") for _ in range(20)]
            workers = {x["worker"] for x in srv.requests()[before:]}
            return heads == [sha] * 20 and workers == {0, 1}

        assert all_served_with(a_sha)
        # POST /admin/reload on one worker reaches both
        config(b_path, b_sha)
        r = httpx.post(srv.url + "/admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert r.status_code == 200 and r.json()["reloaded"], r.text
        _wait(lambda: all_served_with(b_sha), what="every worker to serve the reloaded prompt")
        # SIGHUP to the master reaches both
        config(c_path, c_sha)
        srv.proc.send_signal(signal.SIGHUP)
        _wait(lambda: all_served_with(c_sha), what="every worker to serve the prompt after SIGHUP")
        assert fake.last["messages"][0]["content"] == "Third.\n\nhello"
        # graceful shutdown: a request in flight when SIGTERM arrives is answered, then everything exits
        fake.script = [("sleep", 1.5)]
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("r", srv.post(body, OTHER_KEY)))
        t.start()
        _wait(lambda: len(fake.received) and fake.script == [], what="the slow request to reach the upstream")
        srv.proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert got["r"].status_code == 200 and got["r"].json()["choices"][0]["message"]["content"]
        assert srv.proc.wait(30) == 0
        with pytest.raises(OSError):  # nothing listens any more
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
        assert "Traceback" not in srv.err.read_text()
    finally:
        srv.stop()


def test_shared_rate_limiter_counts_across_processes(tmp_path):
    """Two limiters on one file (as two workers have): N pass in all; Retry-After from the oldest counted hit."""
    now = [100.0]
    a = SharedRateLimiter(tmp_path / "rl.sqlite", clock=lambda: now[0])
    b = SharedRateLimiter(tmp_path / "rl.sqlite", clock=lambda: now[0])
    got = [(a if i % 2 else b).check("alice", 3) for i in range(8)]
    assert got[:3] == [None] * 3 and all(w == pytest.approx(60.0) for w in got[3:])
    assert a.check("bob", 3) is None  # another caller has its own window
    now[0] = 130.0
    assert b.check("alice", 3) == pytest.approx(30.0)
    now[0] = 160.5  # the first three hits have left the window
    assert [a.check("alice", 3), b.check("alice", 3), a.check("alice", 3), b.check("alice", 3)][:3] == [None] * 3
    assert a.check("alice", 0) is None  # 0 = no limit
    a.close()
    b.close()


def test_workers_and_limits_backend_in_serve_yaml(tmp_path):
    path, sha = save(TextPrompt(instruction="I."), tmp_path / "p")
    doc = {"routes": [{"name": "r", "upstream": "http://127.0.0.1:9/v1", "prompt": str(path), "sha256": sha}]}
    assert parse_config(doc).workers == 1
    assert parse_config({**doc, "workers": 3}).workers == 3
    assert parse_config({**doc, "workers": "auto"}).workers == usable_cores() >= 1
    assert parse_config({**doc, "limits": {"backend": "local"}}).limits.requests_per_minute == 0
    for bad, field in (({"workers": 0}, "workers"), ({"workers": "many"}, "workers"),
                       ({"limits": {"backend": "redis://10.0.0.5:6379/0"}}, "limits.backend")):
        with pytest.raises(ConfigError, match=field) as e:
            parse_config({**doc, **bad})
        assert len(str(e.value).splitlines()) == 1
