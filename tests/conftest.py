"""Shared fixtures: a tiny randomly initialised chat model built in the test (seconds), and the real bundled model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from fakes import REPO, make_tiny_lm, read_guard  # noqa: F401


@pytest.fixture
def tiny_lm():
    return make_tiny_lm()


@pytest.fixture
def tiny_plain_lm():
    return make_tiny_lm(chat=False)


@pytest.fixture(scope="session")
def real_lm():
    """The bundled SmolLM2-135M (dequantized once into the cache)."""
    from promptlift.lm.hf import HFModel

    return HFModel("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny chat model saved as a transformers folder: `--model DIR` for the CLI in tests and subprocesses."""
    d = tmp_path_factory.mktemp("tiny-model")
    lm = make_tiny_lm()
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def one_thread():
    """One torch thread: tiny models' matrices are too small for more, and on a busy 2-core machine two
    spinning threads make even the real model ~10x slower. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # The LM call cache is per test session (PROMPTLIFT_CALL_CACHE, read by lm/cache.py); the model weight
    # cache (PROMPTLIFT_CACHE_DIR) stays shared: it is slow to rebuild and tests only read it.
    os.environ["PROMPTLIFT_CALL_CACHE"] = str(tmp_path_factory.mktemp("calls") / "calls.sqlite")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    yield


# --- nothing outside the repository --------------------------------------------------------------------
_OUTSIDE: list[tuple[str, str]] = []  # (path, test) read outside the repository, or the user's call cache


def _not_data_dirs() -> tuple[str, ...]:
    """Folders beside the repository that hold no test data: caches, temp, the interpreter and its packages."""
    import site
    import sysconfig
    import tempfile

    home = Path.home()
    dirs = [tempfile.gettempdir(), home / ".cache", home / ".config", home / ".local", sys.prefix, sys.base_prefix,
            sys.exec_prefix, *site.getsitepackages(), site.getusersitepackages(), sysconfig.get_paths()["stdlib"]]
    dirs += [os.environ[v] for v in ("XDG_CACHE_HOME", "HF_HOME", "PROMPTLIFT_CACHE_DIR", "TMPDIR") if os.environ.get(v)]
    dirs = [os.path.abspath(d) + os.sep for d in dirs]
    return tuple(d for d in dirs if not (str(REPO) + os.sep).startswith(d))  # a clone in /tmp is still watched


_GUARD_ON = False


@pytest.fixture(scope="session", autouse=True)
def _no_reads_outside_repo(_cache_dir):
    """Fails the session if any test opened a file beside the repository (a datasets folder next to the
    checkout: a fresh clone has none) or the user's call cache. Subprocesses are not watched: test_repo_data.py checks that no
    test names such a path."""
    global _GUARD_ON
    user_calls = os.path.abspath(Path(os.environ.get("PROMPTLIFT_CACHE_DIR") or Path.home() / ".cache" / "promptlift")
                                 .expanduser() / "calls.sqlite")
    if not _GUARD_ON:  # an audit hook cannot be removed: install it once per process
        sys.addaudithook(read_guard(_OUTSIDE, user_calls, _not_data_dirs()))
        _GUARD_ON = True
    yield
    if _OUTSIDE:
        seen = list(dict.fromkeys(_OUTSIDE))
        lines = "\n".join(f"  {p}  ({t.rsplit(' ', 1)[0] or 'outside a test'})" for p, t in seen[:20])
        pytest.fail(f"tests read {len(seen)} path(s) outside the repository; ship what they need under "
                    f"tests/data/:\n{lines}", pytrace=False)


