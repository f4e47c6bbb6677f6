"""Task: labelled examples + answer space + metric.

A classification task maps each label to its label words (`"sci": "science and
technology"`) and is scored by rank classification; a generation task compares
generated text to the reference with a metric (`exact`, `contains`, `f1`, or a
function). Loaders: a directory of train/dev/test files (with an optional
task.yaml), single files with a field mapping, or a Hugging Face `Dataset`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .datafiles import SPLITS, find_split_file, read_rows, read_task_yaml
from .errors import ConfigError, DataError

CLASSIFICATION = "classification"
GENERATION = "generation"


@dataclass(frozen=True)
class Example:
    """One labelled example. `output` is a label name (classification) or reference text."""

    input: str
    output: str
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass
class Task:
    """Examples of each split, the answer space and the metric.

    labels: label name -> label words (classification only), in a fixed order.
    instruction: the default instruction (zero-shot baseline, soft-prompt init).
    metric: "accuracy" for classification; "exact" | "contains" | "f1" or a
      function (pred, gold) -> float for generation.
    """

    name: str
    kind: str
    train: list[Example] = field(default_factory=list)
    dev: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    instruction: str = ""
    metric: str | Callable[[str, str], float] = "accuracy"
    source: str = "<memory>"
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in (CLASSIFICATION, GENERATION):
            raise ConfigError(f"task type must be 'classification' or 'generation', got {self.kind!r}")
        if self.kind == CLASSIFICATION and len(self.labels) < 2:
            raise DataError(f"{self.source}: a classification task needs at least 2 labels, found {list(self.labels)}")
        if not self.instruction:
            self.instruction = default_instruction(self)

    @property
    def is_classification(self) -> bool:
        return self.kind == CLASSIFICATION

    @property
    def label_names(self) -> list[str]:
        return list(self.labels)

    def split(self, name: str) -> list[Example]:
        """Examples of split `name` (train/dev/test); a clear error if unknown or empty."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; expected one of: {', '.join(SPLITS)}")
        rows = getattr(self, name)
        if not rows:
            raise DataError(f"{self.source}: split {name!r} is empty or missing (expected {name}.jsonl)")
        return rows

    def with_splits(self, **splits: list[Example]) -> "Task":
        return replace(self, **splits)

    # ---------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path, *, input_field: str | None = None, output_field: str | None = None,
                 labels: Mapping[str, str] | None = None, instruction: str | None = None,
                 kind: str | None = None, metric: str | None = None, name: str | None = None) -> "Task":
        """Load `path/{train,dev,test}.{jsonl,json,csv,tsv}` and the optional `path/task.yaml`.

        task.yaml keys: name, type, input_field (or input_format with {field}
        placeholders), label_field/output_field, labels (label -> words),
        instruction, metric. Arguments override the file. Without a task.yaml,
        rows with text+label are classification, rows with input+output generation.
        A missing dev split is taken from train (a seeded 20%, at most 100 rows).
        """
        d = Path(path)
        if not d.exists():
            raise DataError(f"{d}: data directory not found")
        if not d.is_dir():
            raise DataError(f"{d}: expected a directory with train/dev/test files")
        meta = read_task_yaml(d)
        files = {s: find_split_file(d, s) for s in SPLITS}
        if not any(files.values()):
            raise DataError(f"{d}: no train/dev/test file found (expected train.jsonl, dev.jsonl, test.jsonl)")
        rows = {s: (read_rows(p) if p else []) for s, p in files.items()}
        return cls.from_rows(
            rows, files={s: str(p) for s, p in files.items() if p}, source=str(d),
            name=name or meta.get("name") or d.name,
            kind=kind or meta.get("type") or meta.get("kind"),
            input_field=input_field or meta.get("input_field"),
            input_format=meta.get("input_format"),
            output_field=output_field or meta.get("label_field") or meta.get("output_field"),
            labels=labels if labels is not None else meta.get("labels"),
            instruction=instruction if instruction is not None else meta.get("instruction"),
            metric=metric or meta.get("metric"),
        )

    @classmethod
    def from_files(cls, *, train: str | Path | None = None, dev: str | Path | None = None,
                   test: str | Path | None = None, **kw) -> "Task":
        """Load single JSONL/CSV/TSV files per split, with the same options as `from_dir`."""
        files = {s: Path(p) for s, p in (("train", train), ("dev", dev), ("test", test)) if p is not None}
        if not files:
            raise ConfigError("from_files needs at least one of train=, dev=, test=")
        rows = {s: read_rows(p) for s, p in files.items()}
        kw.setdefault("name", next(iter(files.values())).stem)
        return cls.from_rows(rows, files={s: str(p) for s, p in files.items()},
                             source=str(next(iter(files.values())).parent), **kw)

    @classmethod
    def from_hf(cls, dataset, *, name: str = "hf_dataset", **kw) -> "Task":
        """From a `datasets.Dataset` (used as train) or `DatasetDict` (train/validation|dev/test)."""
        try:
            keys = list(dataset.keys())
            is_dict = True
        except AttributeError:
            is_dict = False
        if is_dict:
            alias = {"validation": "dev", "valid": "dev", "dev": "dev", "train": "train", "test": "test"}
            rows = {alias[k]: [dict(r) for r in dataset[k]] for k in keys if k in alias}
        else:
            rows = {"train": [dict(r) for r in dataset]}
        return cls.from_rows(rows, name=name, source=f"<datasets:{name}>", **kw)

    @classmethod
    def demo(cls, name: str = "demo_topics") -> "Task":
        """One of the project's own demo tasks: `demo_topics` (4 topics, multi-token labels), `demo_antonyms`."""
        d = Path(__file__).parent / "data" / name
        if not d.exists():
            raise ConfigError(f"unknown demo task {name!r}; expected demo_topics or demo_antonyms")
        return cls.from_dir(d)

    @classmethod
    def from_rows(cls, rows: Mapping[str, list[dict]], *, name: str, source: str = "<memory>",
                  files: Mapping[str, str] | None = None, kind: str | None = None,
                  input_field: str | None = None, input_format: str | None = None,
                  output_field: str | None = None, labels: Mapping[Any, Any] | None = None,
                  instruction: str | None = None, metric: str | Callable | None = None,
                  dev_fraction: float = 0.2, seed: int = 0) -> "Task":
        """Build a Task from raw row dicts per split, validating every row."""
        files = dict(files or {})
        first = next((r[0] for r in rows.values() if r), None)
        if first is None:
            where = next(iter(files.values())) if len(files) == 1 else source  # name the file when there is one
            raise DataError(f"{where}: every split is empty")
        if kind is None:
            if "label" in first or (labels and "text" in first):
                kind = CLASSIFICATION
            elif "output" in first:
                kind = GENERATION
            elif output_field:
                kind = CLASSIFICATION if labels else GENERATION
            else:
                raise DataError(f"{files.get('train', source)}: cannot tell the task type: rows need 'text'+'label' "
                                f"(classification) or 'input'+'output' (generation), or a task.yaml naming the fields")
        if input_field is None and input_format is None:
            input_field = next((f for f in ("text", "input", "sentence", "question") if f in first), None)
            if input_field is None:
                raise DataError(f"{files.get('train', source)}: no input field; expected 'text' or 'input' "
                                f"(or set input_field in task.yaml), found {sorted(first)}")
        if output_field is None:
            output_field = "label" if kind == CLASSIFICATION else "output"

        splits: dict[str, list[Example]] = {}
        for split, split_rows in rows.items():
            where = files.get(split, f"{source}[{split}]")
            exs = []
            for i, r in enumerate(split_rows, start=1):
                exs.append(_make_example(r, i, where, input_field, input_format, output_field))
            splits[split] = exs
        for split in rows:
            if not splits[split] and split in files:
                raise DataError(f"{files[split]}: split {split!r} is empty")

        label_words: dict[str, str] = {}
        if kind == CLASSIFICATION:
            if labels:
                label_words = {str(k): str(v) for k, v in labels.items()}
            else:
                seen: list[str] = []
                for ex in splits.get("train") or next(iter(splits.values())):
                    if ex.output not in seen:
                        seen.append(ex.output)
                label_words = {lab: lab for lab in sorted(seen)}
            for split, exs in splits.items():
                where = files.get(split, f"{source}[{split}]")
                for i, ex in enumerate(exs, start=1):
                    if ex.output not in label_words:
                        raise DataError(f"{where}:{i}: field {output_field!r}: label {ex.output!r} is not in the "
                                        f"label set {sorted(label_words)}")
        if not splits.get("dev") and len(splits.get("train", [])) >= 10:
            train = list(splits["train"])
            random.Random(seed).shuffle(train)
            k = min(100, max(1, int(len(train) * dev_fraction)))
            splits["dev"], splits["train"] = train[:k], train[k:]
        return cls(name=name, kind=kind, train=splits.get("train", []), dev=splits.get("dev", []),
                   test=splits.get("test", []), labels=label_words, instruction=instruction or "",
                   metric=metric or ("accuracy" if kind == CLASSIFICATION else "exact"),
                   source=source, files=files)


def _make_example(r: dict, i: int, where: str, input_field: str | None, input_format: str | None,
                  output_field: str) -> Example:
    if input_format:
        try:
            text = input_format.format(**r)
        except KeyError as e:
            raise DataError(f"{where}:{i}: missing field {e.args[0]!r} (needed by input_format)") from None
    else:
        if input_field not in r or r[input_field] is None:
            raise DataError(f"{where}:{i}: missing field {input_field!r}")
        text = r[input_field]
    if output_field not in r or r[output_field] is None:
        raise DataError(f"{where}:{i}: missing field {output_field!r}")
    if not isinstance(text, (str, int, float)):
        raise DataError(f"{where}:{i}: field {input_field!r} must be text, got {type(text).__name__}")
    out = r[output_field]
    if isinstance(out, list):  # several acceptable references: keep the first as the target
        if not out:
            raise DataError(f"{where}:{i}: field {output_field!r} is an empty list")
        out = out[0]
    return Example(input=str(text), output=str(out), fields=r)


def default_instruction(task: Task) -> str:
    if task.kind == CLASSIFICATION:
        words = ", ".join(task.labels.values())
        return f"Classify the input. Answer with one of: {words}."
    return "Answer the input with a short answer."
