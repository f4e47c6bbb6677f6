"""Soft prompt artifacts: `SoftPrompt` (input vectors) and `PrefixPrompt` (per-layer keys/values).

Saved as two files side by side:
    prompt.json          metadata: type, model, hidden size, layers, position, template, method, sha256
    prompt.safetensors   the tensors

The hash covers the metadata and the exact tensor bytes, so `load` refuses a
file changed after saving; applying a prompt to a model of another id or
shape is refused with one line.

Where the vectors go (`position`):
    "after_header" (default): [chat header][soft][instruction, demos][input] — the
        header's cache is shared across the whole run and the soft tokens sit
        inside the user turn;
    "prepend": [soft][chat header][...] — PEFT's placement.
A SoftPrompt may split its vectors around the body (`split` = how many go
before the instruction; the rest follow it), as P-tuning's anchors do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file

from .artifacts import FORMAT, Prompt, content_hash, register_type
from .errors import ArtifactError
from .kv import KV
from .task import Example

POSITIONS = ("after_header", "prepend")


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return b"".join(k.encode() + tensors[k].detach().cpu().contiguous().numpy().tobytes() for k in sorted(tensors))


def header_kv(lm, layout) -> KV | None:
    """Cache of the constant chat header (computed once per run)."""
    if not layout.header:
        return None
    _, kv = lm.forward(ids=torch.tensor([layout.header], device=lm.device))
    return kv


@dataclass
class _TensorPrompt(Prompt):
    position: str = "after_header"
    hidden_size: int = 0
    num_layers: int = 0

    tensor_names: ClassVar[tuple[str, ...]] = ()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.tensor_names}

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update({"position": self.position, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                  "shapes": {k: list(v.shape) for k, v in self.tensors().items()}})
        return d

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path = path / "prompt.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}
        d = self.to_dict()
        d["tensors"] = path.with_suffix(".safetensors").name
        d["sha256"] = content_hash(d, _tensor_bytes(tensors))
        save_file(tensors, str(path.with_suffix(".safetensors")))
        path.write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load_checked(cls, d: dict, stored: str | None, path: Path) -> "Prompt":
        tpath = path.parent / d.get("tensors", path.with_suffix(".safetensors").name)
        if not tpath.exists():
            raise ArtifactError(f"{tpath}: tensor file of the prompt artifact is missing")
        try:
            tensors = load_file(str(tpath))
        except Exception as e:  # safetensors raises its own error types on a corrupt file
            raise ArtifactError(f"{tpath}: unreadable safetensors file ({str(e).splitlines()[0]})") from None
        if stored != content_hash(d, _tensor_bytes(tensors)):
            raise ArtifactError(f"{path}: content hash mismatch: the prompt or its tensors changed after saving")
        base = Prompt.from_dict(d, path)
        return cls(instruction=base.instruction, demos=base.demos, knn=base.knn, calibrate=base.calibrate,
                   reasoning=base.reasoning, model=base.model, method=base.method, meta=base.meta,
                   position=d.get("position", "after_header"), hidden_size=int(d.get("hidden_size", 0)),
                   num_layers=int(d.get("num_layers", 0)), **cls._extra_from(d), **tensors)

    @classmethod
    def _extra_from(cls, d: dict) -> dict:
        return {}

    def check_model(self, lm) -> None:
        if self.model and self.model != lm.model_id:
            raise ArtifactError(f"soft prompt was trained for model {self.model!r}, not {lm.model_id!r}")
        if self.hidden_size and self.hidden_size != lm.hidden_size:
            raise ArtifactError(f"soft prompt has hidden size {self.hidden_size}, the model {lm.hidden_size}")
        if self.num_layers and self.num_layers != lm.num_layers:
            raise ArtifactError(f"soft prompt has {self.num_layers} layers, the model {lm.num_layers}")


@register_type
@dataclass
class SoftPrompt(_TensorPrompt):
    """k trainable input vectors. embeds: (k, hidden); the first `split` go before the body, the rest after it."""

    type: ClassVar[str] = "soft"
    tensor_names: ClassVar[tuple[str, ...]] = ("embeds",)
    embeds: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    split: int = -1  # -1: all before the body

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["split"] = self.split
        return d

    @classmethod
    def _extra_from(cls, d: dict) -> dict:
        return {"split": int(d.get("split", -1))}

    def prefix(self, lm, layout, header: KV | None = None, embeds: torch.Tensor | None = None) -> KV:
        """Cache of [header][soft][body] (or [soft][header][body] when prepended); batch 1.

        `header` may pass a precomputed header cache; `embeds` (k, hidden) overrides
        the stored vectors (training passes its live parameters here).
        """
        soft = self.embeds if embeds is None else embeds
        soft = soft.to(lm.device, lm.embedding_matrix().dtype)
        body = torch.tensor(layout.body, dtype=torch.long, device=lm.device)
        body_e = lm.embed(body)  # (len(body), hidden)
        k = soft.shape[0]
        s = k if self.split < 0 else min(self.split, k)
        seq = [soft[:s], body_e, soft[s:]]
        if self.position == "prepend":
            head = torch.tensor(layout.header, dtype=torch.long, device=lm.device)
            seq = [soft[:s], lm.embed(head), body_e, soft[s:]]
            past = None
        else:
            past = header if header is not None else header_kv(lm, layout)
        x = torch.cat(seq, dim=0).unsqueeze(0)  # (1, T, hidden)
        _, kv = lm.forward(embeds=x, past=past)
        return kv


@register_type
@dataclass
class PrefixPrompt(_TensorPrompt):
    """Per-layer key/value prefixes. keys, values: (layers, kv_heads, k, head_dim)."""

    type: ClassVar[str] = "prefix"
    tensor_names: ClassVar[tuple[str, ...]] = ("keys", "values")
    keys: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    values: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def prefix(self, lm, layout, header: KV | None = None, kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> KV:
        """Cache of [header][learned k/v][body] (or [learned][header][body]); batch 1.

        `kv` overrides the stored (keys, values) (training passes live parameters).
        """
        keys, values = kv if kv is not None else (self.keys, self.values)
        k = keys.shape[2]
        learned = KV([x.unsqueeze(0) for x in keys.unbind(0)], [x.unsqueeze(0) for x in values.unbind(0)],
                     torch.ones(1, k, dtype=torch.long, device=keys.device))
        if self.position == "prepend":
            past = learned
            ids = layout.header + layout.body
        else:
            h = header if header is not None else header_kv(lm, layout)
            past = learned if h is None else h.cat(learned)
            ids = layout.body
        if not ids:
            return past
        _, out = lm.forward(ids=torch.tensor([ids], device=lm.device), past=past)
        return out


__all__ = ["SoftPrompt", "PrefixPrompt", "POSITIONS", "header_kv", "Example"]
