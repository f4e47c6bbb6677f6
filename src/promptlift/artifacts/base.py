"""The base of every prompt artifact: data, metadata, the content hash, and one way to save and load.

An artifact is a dataclass that holds data only. What it does at inference (how
it is rendered, scored, decoded) lives in one applier per artifact type in
`promptlift.engine.apply`, looked up by type; an artifact never runs a model.

Serialisation is generic over the dataclass fields, so adding an artifact type
is declaring its fields:

- plain JSON values (str, int, float, bool, dict, list) are stored as they are;
- `field(metadata={"kind": "examples"})`: a list of `Example` (stored as
  `{"input", "output"}` objects);
- `field(metadata={"kind": "prompt"})`: a nested artifact (wrappers such as
  `Calibrated` hold the prompt they wrap);
- `field(metadata={"kind": "prompts"})`: a list of nested artifacts (a mixture's members);
- `field(metadata={"kind": "tensor"})`: a torch tensor, stored in a
  safetensors file beside the JSON and referred to by name.

The file `prompt.json` holds `{"format", "type", ...fields, "sha256"}`; the
hash covers the canonical JSON and the exact tensor bytes, so `load` refuses a
file that was changed after it was saved, and a save/load round trip is bit-exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ArtifactError
from ..files import write_bytes
from ..task import CLASSIFICATION, Example, Task

FORMAT = "promptlift.prompt/v1"
_TYPES: dict[str, type["Prompt"]] = {}


def register_type(cls):
    """Class decorator: make an artifact type loadable by its `type` name."""
    if cls.type in _TYPES and _TYPES[cls.type] is not cls:
        raise ValueError(f"artifact type {cls.type!r} registered twice")
    _TYPES[cls.type] = cls
    return cls


def artifact_types() -> dict[str, type["Prompt"]]:
    """Every registered artifact type, by name."""
    return dict(_TYPES)


def content_hash(obj: Any, extra: bytes = b"") -> str:
    """SHA-256 of canonical JSON (+ raw bytes, e.g. tensor data)."""
    h = hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())
    h.update(extra)
    return h.hexdigest()


@dataclass
class Prompt:
    """Base of every artifact: what was made, for which model and task, by which method.

    model: identity of the model the prompt was made on (None = any).
    task: name of the task it was made for (None = unknown).
    method: the method that made it.
    meta: free-form, JSON-serialisable notes (best epoch, dev score, seed, ...).
    labels: label name -> label words of the task it was made for (classification), in the task's
      order: how its demonstrations answer and what it answers when served. Empty for a generation
      task, or an artifact saved before labels were stored.
    task_kind: "classification" or "generation" ("" = unknown: saved before it was stored).
    Both are `omit_default`: left out of the file while empty, so older files keep their hash.
    """

    type: ClassVar[str] = "base"
    # False where the demonstrations nested inside answer with free text (reasoning that ends in a label), not
    # with a label's words: label checks then leave them alone
    demos_are_labels: ClassVar[bool] = True
    model: str | None = field(default=None, kw_only=True)
    task: str | None = field(default=None, kw_only=True)
    method: str = field(default="", kw_only=True)
    meta: dict = field(default_factory=dict, kw_only=True)
    labels: dict = field(default_factory=dict, kw_only=True, metadata={"omit_default": True})
    task_kind: str = field(default="", kw_only=True, metadata={"omit_default": True})

    # --- what every consumer may ask of any artifact -------------------------------------
    @property
    def text_only(self) -> bool:
        """True if the prompt is text all the way down (it can go to any model or endpoint)."""
        return not any(_kind(f) == "tensor" for f in dataclasses.fields(self)) and all(
            p.text_only for p in self.children())

    def made_for(self, task: Task) -> "Prompt":
        """Record the task this prompt was made for: its name, kind and label words. Returns self."""
        self.task = task.name
        self.task_kind = task.kind
        self.labels = dict(task.labels) if task.is_classification else {}
        return self

    def label_task(self) -> Task | None:
        """A task carrying only the label words this prompt was made with (or a prompt it wraps was), or
        None: a generation task, or an artifact saved before labels were stored."""
        if self.labels:
            return Task(name=self.task or "prompt", kind=CLASSIFICATION, labels=dict(self.labels))
        if self.task_kind:
            return None
        return next((t for c in self.children() if (t := c.label_task()) is not None), None)

    def children(self) -> list["Prompt"]:
        """Nested artifacts (the prompt a wrapper wraps, a mixture's members), in field order."""
        out: list[Prompt] = []
        for f in dataclasses.fields(self):
            if _kind(f) == "prompt":
                out.append(getattr(self, f.name))
            elif _kind(f) == "prompts":
                out += list(getattr(self, f.name))
        return out

    @property
    def hash(self) -> str:
        """The content hash `save` writes (and `load` checks): canonical JSON + exact tensor bytes.

        Computed once per version of the artifact: assigning a field, changing a tensor in place or
        changing a nested artifact makes a new version; copies start without it. Artifacts are values:
        change a list or dict field (`meta`, `demos`) by assigning a new one, never in place, once the
        hash may have been read (the search loop reads it many times per step).
        """
        stamp = self._stamp()
        cached = self.__dict__.get("_hash_cache")
        if cached is None or cached[0] != stamp:
            d, tensors = to_json(self)
            cached = (stamp, content_hash({"format": FORMAT, **d}, tensor_bytes(tensors)))
            object.__setattr__(self, "_hash_cache", cached)
        return cached[1]

    def _stamp(self) -> tuple:
        """What changes when the artifact changes without a field being assigned: its tensors' in-place
        versions and its nested artifacts' hashes."""
        own = tuple((id(v), v._version) for f in dataclasses.fields(self) if _kind(f) == "tensor"
                    for v in [getattr(self, f.name)])
        return own, tuple(c.hash for c in self.children())

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        self.__dict__.pop("_hash_cache", None)  # a field assigned: a new version

    def __getstate__(self) -> dict:  # copies (copy, deepcopy, pickle) start without the cached hash
        return {k: v for k, v in self.__dict__.items() if k != "_hash_cache"}

    def to_dict(self) -> dict:
        """The JSON content of the artifact (tensors as references)."""
        return to_json(self)[0]

    def tensors(self) -> dict:
        """Every tensor of the artifact (nested ones too), by the name it is saved under."""
        return to_json(self)[1]

    def save(self, path: str | Path) -> Path:
        """Write the artifact (atomically) and return the JSON file's path.

        A directory (or a path without suffix) gets `prompt.json` inside; tensors go
        to `<name>.safetensors` beside it.
        """
        return save(self, path)


def _kind(f: dataclasses.Field) -> str:
    return f.metadata.get("kind", "json")


def tensor_bytes(tensors: dict) -> bytes:
    """Bytes hashed for the tensors: name, dtype, shape and raw data of each, in name order."""
    out = []
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        out.append(f"{k}|{t.dtype}|{list(t.shape)}|".encode())
        out.append(t.view(-1).view(_byte_dtype()).numpy().tobytes() if t.numel() else b"")
    return b"".join(out)


def _byte_dtype():
    import torch

    return torch.uint8


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def to_json(p: Prompt, prefix: str = "") -> tuple[dict, dict]:
    """(JSON dict, tensors by name) of an artifact; nested artifacts are encoded in place."""
    d: dict[str, Any] = {"type": p.type}
    tensors: dict = {}
    for f in dataclasses.fields(p):
        v = getattr(p, f.name)
        if f.metadata.get("omit_default") and v == _default(f):
            continue  # an optional field added later: files saved before it existed keep their hash
        kind = _kind(f)
        if kind == "examples":
            d[f.name] = [{"input": e.input, "output": e.output} for e in v]
        elif kind == "prompt":
            sub, sub_t = to_json(v, prefix + f.name + ".")
            d[f.name] = sub
            tensors.update(sub_t)
        elif kind == "prompts":
            d[f.name] = []
            for i, member in enumerate(v):
                sub, sub_t = to_json(member, f"{prefix}{f.name}.{i}.")
                d[f.name].append(sub)
                tensors.update(sub_t)
        elif kind == "tensor":
            name = prefix + f.name
            tensors[name] = v
            d[f.name] = {"tensor": name, "dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
        else:
            d[f.name] = v
    return d, tensors


def from_json(d: Any, tensors: dict, where: str) -> Prompt:
    """The artifact described by `d` (inverse of `to_json`); errors name `where`."""
    if not isinstance(d, dict):
        raise ArtifactError(f"{where}: expected an artifact object, got {type(d).__name__}")
    typ = d.get("type")
    cls = _TYPES.get(typ)
    if cls is None:
        raise ArtifactError(f"{where}: unknown prompt type {typ!r}; expected one of: {', '.join(sorted(_TYPES))}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields) - {"type"})
    if unknown:
        raise ArtifactError(f"{where}: unknown field(s) {', '.join(unknown)} for a {typ!r} prompt")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in d:
            continue
        v = d[name]
        kind = _kind(f)
        try:
            if kind == "examples":
                kwargs[name] = [Example(str(x["input"]), str(x["output"])) for x in v]
            elif kind == "prompt":
                kwargs[name] = from_json(v, tensors, f"{where}: {name}")
            elif kind == "prompts":
                if not isinstance(v, list):
                    raise ArtifactError(f"{where}: field {name!r} must be a list of artifacts, got {type(v).__name__}")
                kwargs[name] = [from_json(x, tensors, f"{where}: {name}[{i}]") for i, x in enumerate(v)]
            elif kind == "tensor":
                if v["tensor"] not in tensors:
                    raise ArtifactError(f"{where}: tensor {v['tensor']!r} is missing from the tensor file")
                kwargs[name] = tensors[v["tensor"]]
            else:
                kwargs[name] = v
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{where}: field {name!r} is malformed ({type(e).__name__}: {e})") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{where}: invalid {typ!r} prompt ({e})") from None


def save(p: Prompt, path: str | Path) -> Path:
    """See `Prompt.save`."""
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        path = path / "prompt.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    d, tensors = to_json(p)
    d = {"format": FORMAT, **d}
    tpath = path.with_suffix(".safetensors")
    cpu, seen = {}, set()
    for k, v in tensors.items():
        t = v.detach().cpu().contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in seen:  # one tensor in two nested artifacts
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        cpu[k] = t
    digest = content_hash(d, tensor_bytes(cpu))  # the file name of the tensors is not content
    if cpu:
        from safetensors.torch import save as st_save

        d["tensors"] = tpath.name
        write_bytes(tpath, st_save(cpu))
    d["sha256"] = digest
    write_bytes(path, (json.dumps(d, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return path


def load(path: str | Path) -> Prompt:
    """Load any artifact (a prompt.json, or a run directory holding one); verifies its hash."""
    path = Path(path)
    if path.is_dir():
        path = path / "prompt.json"
    if not path.exists():
        raise ArtifactError(f"{path}: prompt artifact not found")
    try:
        d = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not a promptlift artifact (malformed JSON: {e})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a promptlift artifact (expected format {FORMAT!r})")
    stored = d.pop("sha256", None)
    tensors: dict = {}
    extra = b""
    if "tensors" in d:
        tname = d.pop("tensors")
        if not isinstance(tname, str) or "/" in tname or "\\" in tname or tname.startswith("."):
            raise ArtifactError(f"{path}: field 'tensors' must be a file name beside the artifact, got {tname!r}")
        tpath = path.parent / tname
        if not tpath.exists():
            raise ArtifactError(f"{tpath}: tensor file of the prompt artifact is missing")
        try:
            from safetensors.torch import load_file

            tensors = load_file(str(tpath))
        except Exception as e:  # safetensors raises its own error types on a corrupt file
            raise ArtifactError(f"{tpath}: unreadable safetensors file ({str(e).splitlines()[0]})") from None
        extra = tensor_bytes(tensors)
    if stored != content_hash(d, extra):
        raise ArtifactError(f"{path}: content hash mismatch: the prompt or its tensors changed after saving")
    body = {k: v for k, v in d.items() if k != "format"}
    return from_json(body, tensors, str(path))
