"""CallCache: keys, persistence, secrets, disabled mode, threads and processes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from fakes import REPO

from promptlift.files import cache_dir
from promptlift.lm.cache import CallCache

REQ = {"endpoint": "chat", "messages": [{"role": "user", "content": "hi"}], "n": 1, "temperature": 0.0,
       "max_tokens": 64, "stop": [], "top_p": 1.0, "seed": None, "rollout": 0}


def test_key_is_deterministic_and_order_independent():
    k = CallCache.key("openai:x:m", REQ)
    assert len(k) == 64 and all(c in "0123456789abcdef" for c in k)
    assert CallCache.key("openai:x:m", dict(reversed(list(REQ.items())))) == k
    assert CallCache(enabled=False).key("openai:x:m", REQ) == k


def test_key_depends_on_model_and_every_sampling_parameter():
    base = CallCache.key("openai:x:m", REQ)
    assert CallCache.key("openai:x:other", REQ) != base
    changes = {"temperature": 0.5, "n": 2, "max_tokens": 10, "stop": ["\n"], "top_p": 0.9, "seed": 1,
               "rollout": 1, "messages": [{"role": "user", "content": "ho"}], "endpoint": "completions"}
    keys = {CallCache.key("openai:x:m", {**REQ, k: v}) for k, v in changes.items()}
    assert base not in keys and len(keys) == len(changes)


def test_secrets_are_not_part_of_the_key():
    base = CallCache.key("m", REQ)
    assert CallCache.key("m", {**REQ, "api_key": "sk-1"}) == base
    assert CallCache.key("m", {**REQ, "api_key": "sk-2", "headers": {}}) == CallCache.key("m", {**REQ, "headers": {}})
    assert (CallCache.key("m", {**REQ, "headers": {"Authorization": "Bearer sk-1", "X-Api-Key": "k"}})
            == CallCache.key("m", {**REQ, "headers": {}}))


def test_put_get_roundtrip_and_persistence(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    c = CallCache(path)
    k = c.key("m", REQ)
    assert c.get(k) is None and k not in c
    c.put(k, [["a", "b"], {"x": 1.5}])
    assert c.get(k) == [["a", "b"], {"x": 1.5}]
    c.put(k, ["replaced"])
    assert c.get(k) == ["replaced"] and len(c) == 1
    c.close()
    c2 = CallCache(str(path))
    assert c2.get(k) == ["replaced"]
    c2.clear()
    assert c2.get(k) is None
    mode = c2._connect().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"


def test_default_path_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTLIFT_CACHE_DIR", str(tmp_path / "cd"))
    monkeypatch.delenv("PROMPTLIFT_NO_CACHE", raising=False)
    monkeypatch.delenv("PROMPTLIFT_CALL_CACHE", raising=False)  # set by conftest for the session
    assert cache_dir() == tmp_path / "cd" and not (tmp_path / "cd").exists()  # a path; the writer makes it
    c = CallCache()
    assert c.enabled and c.path == tmp_path / "cd" / "calls.sqlite"
    c.put("k", 1)
    assert c.get("k") == 1 and c.path.exists()


def test_call_cache_file_env_moves_the_calls_and_not_the_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTLIFT_CACHE_DIR", str(tmp_path / "cd"))
    monkeypatch.setenv("PROMPTLIFT_CALL_CACHE", str(tmp_path / "calls" / "c.sqlite"))
    monkeypatch.delenv("PROMPTLIFT_NO_CACHE", raising=False)
    c = CallCache()
    c.put("k", 1)
    assert c.path == tmp_path / "calls" / "c.sqlite" and CallCache().get("k") == 1
    assert not (tmp_path / "cd" / "calls.sqlite").exists()
    assert cache_dir() == tmp_path / "cd"  # the model weights stay where they were


def test_the_test_session_does_not_write_to_the_user_call_cache():
    import os

    user = Path(os.environ.get("PROMPTLIFT_CACHE_DIR") or Path.home() / ".cache" / "promptlift").expanduser()
    c = CallCache(enabled=True)
    c.put("session-key", 1)
    assert c.get("session-key") == 1 and c.path.exists()
    assert user not in c.path.parents and c.path != user / "calls.sqlite"
    # conftest also fails the whole session if anything connects to user / "calls.sqlite"


def test_disabled(monkeypatch, tmp_path):
    c = CallCache(path=None, enabled=False)
    c.put("k", 1)
    assert c.get("k") is None and len(c) == 0 and not c.enabled

    monkeypatch.setenv("PROMPTLIFT_NO_CACHE", "1")
    c = CallCache(tmp_path / "x.sqlite")
    c.put("k", 1)
    assert c.get("k") is None and not (tmp_path / "x.sqlite").exists()


def test_threads(tmp_path):
    c = CallCache(tmp_path / "t.sqlite")
    errors = []

    def work(t):
        try:
            for i in range(50):
                c.put(f"{t}-{i}", i)
                assert c.get(f"{t}-{i}") == i
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(c) == 400


def test_two_processes_share_a_file(tmp_path):
    path = tmp_path / "p.sqlite"
    src = REPO / "src"
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from promptlift.lm.cache import CallCache; c = CallCache(sys.argv[2]);"
            "[c.put(f'{sys.argv[3]}-{i}', i) for i in range(100)];"
            "assert all(c.get(f'{sys.argv[3]}-{i}') == i for i in range(100))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(src), str(path), tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]  # generous: imports are slow on a busy machine
    c = CallCache(path)
    assert len(c) == 200 and c.get("a-99") == 99 and c.get("b-0") == 0
