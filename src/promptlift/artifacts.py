"""Prompt artifacts: what an optimization produces, saves, ships and serves.

- `TextPrompt`: instruction + demonstrations (+ contextual calibration), JSON.
- `SoftPrompt` / `PrefixPrompt` (soft-prompt methods): tensors in safetensors +
  JSON metadata (see `promptlift.soft`).

Every artifact records the model it was made for and a SHA-256 hash of its
content; `load` refuses a changed file. For the evaluation engine a prompt is
two things: `prefix(lm, layout)`, the key/value cache of its constant part,
and `rows(...)`, the per-example tokens after it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from .errors import ArtifactError
from .task import Example

FORMAT = "promptlift.prompt/v1"
_TYPES: dict[str, type["Prompt"]] = {}


def content_hash(obj: Any, extra: bytes = b"") -> str:
    """SHA-256 of canonical JSON (+ raw bytes, e.g. tensor data)."""
    h = hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())
    h.update(extra)
    return h.hexdigest()


def register_type(cls):
    _TYPES[cls.type] = cls
    return cls


@dataclass
class Prompt:
    """Base of every artifact: the text template part shared by all prompt types.

    instruction: text at the start of the first user turn ("" for none).
    demos: fixed demonstrations (earlier turns), or the pool for `knn` selection.
    knn: if > 0, each example gets its `knn` nearest demos from `demos` instead.
    calibrate: apply contextual calibration (Zhao et al. 2021) when scoring labels.
    reasoning: a reasoning trigger ("Let's think step by step.") that opens the
      answer; generation then runs in two stages (reason, then extract the answer).
    model: the model id this prompt was made for (None = any).
    """

    type: ClassVar[str] = "base"
    instruction: str = ""
    demos: list[Example] = field(default_factory=list)
    knn: int = 0
    calibrate: bool = False
    reasoning: str = ""
    model: str | None = None
    method: str = ""
    meta: dict = field(default_factory=dict)

    # --- engine hooks -----------------------------------------------------------------
    def layout(self, lm, task):
        from .template import build_layout

        demos = [] if self.knn else self.demos
        return build_layout(lm, self.instruction, demos, _label_words(task))

    def prefix(self, lm, layout):
        """KV cache of the constant part [header][body] (batch 1)."""
        import torch

        ids = layout.header + layout.body
        if self.knn:
            ids = layout.header
        if not ids:
            return None
        _, kv = lm.forward(ids=torch.tensor([ids], device=lm.device))
        return kv

    def rows(self, lm, layout, task, examples: Sequence[Example]) -> list[list[int]]:
        """Per-example tokens after the prefix."""
        if not self.knn:
            return [layout.example(ex.input) for ex in examples]
        from .engine.neighbors import nearest_demos

        chosen = nearest_demos(lm, self.demos, [ex.input for ex in examples], self.knn)
        labels = _label_words(task)
        rows = []
        for d, ex in zip(chosen, examples):
            lay = layout.with_demos(d, labels)
            rows.append(lay.body + lay.example(ex.input))
        return rows

    # --- persistence ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "type": self.type, "model": self.model, "method": self.method,
            "instruction": self.instruction, "knn": self.knn, "calibrate": self.calibrate,
            "reasoning": self.reasoning, "demos": [{"input": d.input, "output": d.output} for d in self.demos],
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """Write the artifact (JSON, with its content hash) and return its path."""
        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path = path / "prompt.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        d = self.to_dict()
        d["sha256"] = content_hash(d)
        path.write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict, path: Path) -> "Prompt":
        return cls(instruction=d.get("instruction", ""), knn=int(d.get("knn", 0)),
                   calibrate=bool(d.get("calibrate", False)), reasoning=d.get("reasoning", ""), model=d.get("model"), method=d.get("method", ""),
                   demos=[Example(x["input"], x["output"]) for x in d.get("demos", [])], meta=d.get("meta", {}))

    def check_model(self, lm) -> None:
        """Refuse to apply a prompt to another model than the one it was made for (if it says)."""
        if self.model and self.type != "text" and self.model != lm.model_id:
            raise ArtifactError(f"prompt was made for model {self.model!r}, not {lm.model_id!r}")


@register_type
@dataclass
class TextPrompt(Prompt):
    """An instruction and demonstrations: portable to any model and any endpoint."""

    type: ClassVar[str] = "text"


def _label_words(task) -> dict | None:
    return task.labels if task is not None and task.is_classification else None


def load(path: str | Path) -> Prompt:
    """Load any artifact (a prompt.json, or a run directory holding one); verifies its hash."""
    path = Path(path)
    if path.is_dir():
        path = path / "prompt.json"
    if not path.exists():
        raise ArtifactError(f"{path}: prompt artifact not found")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not a promptlift artifact (malformed JSON: {e})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a promptlift artifact (expected format {FORMAT!r})")
    stored = d.pop("sha256", None)
    typ = d.get("type")
    if typ not in _TYPES:
        _import_soft_types()
    if typ not in _TYPES:
        raise ArtifactError(f"{path}: unknown prompt type {typ!r}")
    cls = _TYPES[typ]
    return cls.load_checked(d, stored, path) if hasattr(cls, "load_checked") else _load_text(cls, d, stored, path)


def _load_text(cls, d: dict, stored: str | None, path: Path) -> Prompt:
    if stored != content_hash(d):
        raise ArtifactError(f"{path}: content hash mismatch: the file was changed after it was saved")
    return cls.from_dict(d, path)


def _import_soft_types() -> None:
    try:
        import promptlift.soft  # noqa: F401  (registers SoftPrompt, PrefixPrompt)
    except ModuleNotFoundError as e:
        if e.name != "promptlift.soft":
            raise
