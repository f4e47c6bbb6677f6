"""Tests run from a fresh clone: they read data only from the repository (tests/data), never from beside it.

conftest.py watches every file a test session opens and fails the session on a read beside the checkout;
this file checks the watch itself and, statically, that no test names a path above the repository root
(subprocesses a test starts are not watched)."""

from __future__ import annotations

import re
from pathlib import Path

from fakes import REPO, outside_repo, read_guard
from fakes import REPO, outside_repo, read_guard  # noqa: F401

# built so that this file does not match itself
ABOVE_ROOT = [re.compile(r"parents\[[2-9]\]"), re.compile(r"\.\./+shared"), re.compile(r"\bshared\W{1,6}datasets"),
              re.compile(r"\bparent\s*/\s*[\"']shared")]


def test_no_test_names_a_path_above_the_repository():
    hits = []
    for f in sorted((REPO / "tests").rglob("*.py")):
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if any(rx.search(line) for rx in ABOVE_ROOT):
                hits.append(f"{f.relative_to(REPO)}:{n}: {line.strip()}")
    assert not hits, "tests name data outside the repository (ship it under tests/data/):\n" + "\n".join(hits)


def test_a_read_beside_the_checkout_is_caught_and_caches_are_not():
    repo = Path("/home/u/promptlift")
    assert outside_repo("/home/u/shared/sst2/test.jsonl", repo)
    assert outside_repo("/home/u/promptlift-fork/tests/data/x.jsonl", repo)  # a sibling, not the repository
    assert not outside_repo("/home/u/promptlift/tests/data/sst2/test.jsonl", repo)
    assert not outside_repo("/home/u/promptlift", repo)
    assert not outside_repo("/home/u/.cache/promptlift/models/m.safetensors", repo)
    assert not outside_repo("/home/u/venv/lib/python3.11/site-packages/x.py", repo, ("/home/u/venv/",))
    assert not outside_repo("/opt/elsewhere/data.jsonl", repo)


def test_the_session_watch_records_reads_beside_the_checkout_and_the_user_call_cache():
    sink: list = []
    hook = read_guard(sink, "/home/u/.cache/promptlift/calls.sqlite")
    beside = str(REPO.parent / "other-data" / "x.jsonl")
    hook("open", (beside, "r", 0))
    hook("open", (str(REPO / "tests" / "data" / "sst2" / "test.jsonl"), "r", 0))
    hook("os.scandir", (str(REPO.parent / "other-data"),))
    hook("open", (3, "r", 0))  # a file descriptor
    hook("sqlite3.connect", ("/home/u/.cache/promptlift/calls.sqlite",))
    hook("sqlite3.connect", ("/tmp/calls.sqlite",))
    assert [p for p, _ in sink] == [beside, str(REPO.parent / "other-data"),
                                    "/home/u/.cache/promptlift/calls.sqlite (the user's call cache)"]
    assert all("test_the_session_watch" in t for _, t in sink)
