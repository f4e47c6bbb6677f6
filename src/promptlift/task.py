"""Task: labelled examples + answer space + metric.

A classification task maps each label to its label words (`"sci": "science and
technology"`) and is scored by rank classification; a generation task compares
generated text to the reference with a metric (`exact`, `contains`, `f1`, or a
function). Loaders: a directory of train/dev/test files (with an optional
task.yaml), single files with a field mapping, or a Hugging Face `Dataset`.

Every row is checked when the task is built; a problem is one `DataError` line
naming the file, the line and the field ("data/test.csv:7: field 'label': ...").
Settings passed as arguments that are wrong raise `ConfigError`; the same
settings read from task.yaml raise `DataError` naming task.yaml and the line.

Values: text fields take strings; numbers are written as text (`5` -> "5",
`0.5` -> "0.5"), so JSON labels 0/1 match task.yaml labels `0:`/`1:`. Booleans,
null, NaN/Infinity, objects and lists are refused (a generation reference may be a
list of acceptable answers; the first is the target). Labels are compared after
stripping surrounding whitespace; an empty label or reference is refused. An empty
input (an empty review in a public benchmark file) is a valid example: the model
still answers; `Task.empty_inputs` counts such rows per split.
"""

from __future__ import annotations

import json
import math
import numbers
import random
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .datafiles import SPLITS, find_split_file, load_task_yaml, read_records, why_empty
from .errors import ConfigError, DataError, PromptliftError
from .metrics import check_metric

CLASSIFICATION = "classification"
GENERATION = "generation"
KINDS = (CLASSIFICATION, GENERATION)
MIN_TRAIN_FOR_DEV = 10  # a dev split is carved from train only when train has at least this many rows
# task.yaml key -> Task.from_rows argument
_YAML_SETTING = {"name": "name", "type": "kind", "kind": "kind", "input_field": "input_field",
                 "input_format": "input_format", "label_field": "output_field", "output_field": "output_field",
                 "labels": "labels", "instruction": "instruction", "metric": "metric"}


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
      function (pred, gold) -> float for generation (default "exact").
    empty_reasons: split -> why the loader left it empty (used in `split`'s error).
    """

    name: str
    kind: str
    train: list[Example] = field(default_factory=list)
    dev: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    instruction: str = ""
    metric: str | Callable[[str, str], float] = ""
    source: str = "<memory>"
    files: dict[str, str] = field(default_factory=dict)
    empty_reasons: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"task type must be 'classification' or 'generation', got {self.kind!r}")
        if self.kind == CLASSIFICATION and len(self.labels) < 2:
            raise DataError(f"{self.source}: a classification task needs at least 2 labels, found {list(self.labels)}")
        if not self.metric:
            self.metric = "accuracy" if self.kind == CLASSIFICATION else "exact"
        check_metric(self.metric, self.kind)
        if not self.instruction:
            self.instruction = default_instruction(self)

    @property
    def is_classification(self) -> bool:
        """True for a classification task (labels + rank classification)."""
        return self.kind == CLASSIFICATION

    @property
    def label_names(self) -> list[str]:
        """The label names, in the task's fixed order."""
        return list(self.labels)

    def split(self, name: str) -> list[Example]:
        """Examples of split `name` (train/dev/test); a clear error if unknown or empty."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; expected one of: {', '.join(SPLITS)}")
        rows = getattr(self, name)
        if not rows:
            if name in self.empty_reasons:
                raise DataError(f"{self.source}: split {name!r} is empty or missing: {self.empty_reasons[name]}")
            raise DataError(f"{self.source}: split {name!r} is empty or missing (expected {name}.jsonl)")
        return rows

    @property
    def empty_inputs(self) -> dict[str, int]:
        """split -> number of examples whose input is empty (or only whitespace); splits without any are left out."""
        counts = {s: sum(1 for ex in getattr(self, s) if not ex.input.strip()) for s in SPLITS}
        return {s: n for s, n in counts.items() if n}

    def load_note(self) -> str | None:
        """One line on what loaded unusually (today: rows with an empty input), None when nothing did."""
        empty = self.empty_inputs
        if not empty:
            return None
        n = sum(empty.values())
        where = ", ".join(f"{k} {v}" for k, v in empty.items())
        return f"{self.source}: {n} row{'s' * (n != 1)} with an empty input ({where}), kept as examples"

    def with_splits(self, **splits: list[Example]) -> "Task":
        """A copy of the task with some splits replaced."""
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
        A missing dev split is taken from train (a seeded 20%, at most 100 rows)
        when train has at least 10 rows.
        """
        d = Path(path)
        if not d.exists():
            raise DataError(f"{d}: data directory not found")
        if not d.is_dir():
            raise DataError(f"{d}: expected a directory with train/dev/test files")
        ty = load_task_yaml(d)
        files = {s: p for s in SPLITS if (p := find_split_file(d, s)) is not None}
        if not files:
            raise DataError(f"{d}: no train/dev/test file found (expected train.jsonl, dev.jsonl, test.jsonl)")
        records = {s: read_records(p) for s, p in files.items()}

        settings: dict[str, Any] = {}
        origins: dict[str, str] = {}  # setting -> "task.yaml:LINE", for errors
        if ty is not None:
            for key, value in ty.values.items():
                settings[_YAML_SETTING[key]] = value
                origins[_YAML_SETTING[key]] = f"{ty.path}:{ty.lines[key]}"
            origins.update({f"labels/{k}": f"{ty.path}:{n}" for k, n in ty.label_lines.items()})
        args = {"name": name, "kind": kind, "input_field": input_field, "output_field": output_field,
                "labels": labels, "instruction": instruction, "metric": metric}
        for k, v in args.items():
            if v is None:
                continue
            settings[k] = v  # an argument overrides the file
            origins = {o: w for o, w in origins.items() if o != k and not o.startswith(f"{k}/")}
            if k == "input_field":  # ... and replaces the file's input_format
                settings.pop("input_format", None)
                origins.pop("input_format", None)
        settings.setdefault("name", d.name or d.resolve().name)
        return cls.from_rows(
            {s: [r.data for r in recs] for s, recs in records.items()},
            lines={s: [r.line for r in recs] for s, recs in records.items()},
            files={s: str(p) for s, p in files.items()}, source=str(d), origins=origins, **settings)

    @classmethod
    def from_files(cls, *, train: str | Path | None = None, dev: str | Path | None = None,
                   test: str | Path | None = None, **kw) -> "Task":
        """Load single JSONL/JSON/CSV/TSV files per split, with the same options as `from_dir`."""
        files = {s: Path(p) for s, p in (("train", train), ("dev", dev), ("test", test)) if p is not None}
        if not files:
            raise ConfigError("from_files needs at least one of train=, dev=, test=")
        records = {s: read_records(p) for s, p in files.items()}
        kw.setdefault("name", next(iter(files.values())).stem)
        return cls.from_rows({s: [r.data for r in recs] for s, recs in records.items()},
                             lines={s: [r.line for r in recs] for s, recs in records.items()},
                             files={s: str(p) for s, p in files.items()},
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
    def from_rows(cls, rows: Mapping[str, Sequence[dict]], *, name: str, source: str = "<memory>",
                  files: Mapping[str, str] | None = None, kind: str | None = None,
                  input_field: str | None = None, input_format: str | None = None,
                  output_field: str | None = None, labels: Mapping[Any, Any] | None = None,
                  instruction: str | None = None, metric: str | Callable | None = None,
                  dev_fraction: float = 0.2, seed: int = 0,
                  lines: Mapping[str, Sequence[int]] | None = None,
                  origins: Mapping[str, str] | None = None) -> "Task":
        """Build a Task from raw row dicts per split, validating every setting and row.

        lines: the file line of each row per split (for errors; default: the row's number).
        origins: where a setting came from, e.g. {"metric": "data/task.yaml:4"} and
          {"labels/pos": "data/task.yaml:7"}; a bad setting with an origin is a DataError
          naming it, without one a ConfigError naming the argument.
        """
        files = dict(files or {})
        src = _Origins(dict(origins or {}))
        for split, split_rows in rows.items():
            if split not in SPLITS:
                raise ConfigError(f"unknown split {split!r} in rows; expected one of: {', '.join(SPLITS)}")
            if isinstance(split_rows, (str, bytes, Mapping)) or not isinstance(split_rows, Sequence):
                raise ConfigError(f"rows[{split!r}] must be a list of row dicts, got {type(split_rows).__name__}")

        def where(split: str) -> str:
            return files.get(split, f"{source}[{split}]")

        def at(split: str, i: int) -> str:  # i: 0-based row index
            n = lines[split][i] if lines and split in lines else i + 1
            return f"{where(split)}:{n}"

        for split, split_rows in rows.items():
            for i, r in enumerate(split_rows):
                if not isinstance(r, Mapping):
                    raise DataError(f"{at(split, i)}: expected a row object (field -> value), got {type(r).__name__}")

        # --- settings (checked before any row, so a wrong setting is reported as such) ---
        bad = src.error
        for key, value in (("name", name), ("kind", kind), ("input_field", input_field), ("input_format", input_format),
                           ("output_field", output_field), ("instruction", instruction)):
            if value is not None and not isinstance(value, str):
                raise bad(key, f"{key} must be text, got {type(value).__name__}")
            if value is not None and key != "instruction" and not value.strip():
                raise bad(key, f"{key} is empty")
        if kind is not None and kind not in KINDS:
            raise bad("kind", f"task type must be 'classification' or 'generation', got {kind!r}")
        if input_field is not None and input_format is not None:
            raise bad("input_format", "set input_field or input_format, not both")
        format_fields: list[str] = []
        if input_format is not None:
            try:
                format_fields = _format_fields(input_format)
            except ValueError as e:
                raise bad("input_format", str(e)) from None
        if metric is not None and not (isinstance(metric, str) or callable(metric)):
            raise bad("metric", f"metric must be a name or a function, got {type(metric).__name__}")
        if labels is not None and not labels and "labels" not in src.where:
            labels = None  # labels={} as an argument has always meant: take them from train
        label_words = _label_words(labels, src) if labels is not None else None

        # --- what kind of task, which fields ---
        first_split = next((s for s, r in rows.items() if r), None)
        if first_split is None:
            if len(files) == 1:  # name the file when there is one
                split, only = next(iter(files.items()))
                raise DataError(f"{only}: split {split!r} is empty: {why_empty(only)}")
            raise DataError(f"{source}: every split is empty (no data rows in {', '.join(files.values()) or 'rows'})")
        first = rows[first_split][0]
        if kind is None:
            if "label" in first or (label_words and "text" in first):
                kind = CLASSIFICATION
            elif "output" in first:
                kind = GENERATION
            elif output_field:
                kind = CLASSIFICATION if label_words else GENERATION
            else:
                raise DataError(f"{where(first_split)}: cannot tell the task type: rows need 'text'+'label' "
                                f"(classification) or 'input'+'output' (generation), or a task.yaml naming the "
                                f"fields; found {_field_list(first)}")
        if kind == GENERATION and label_words is not None:
            raise bad("labels", "labels are set but the task is a generation task; set type: classification "
                                "(or remove labels)")
        if kind == CLASSIFICATION and label_words is not None and len(label_words) < 2:
            raise bad("labels", f"a classification task needs at least 2 labels; labels lists only {list(label_words)}")
        if metric is None:
            metric = "accuracy" if kind == CLASSIFICATION else "exact"
        try:
            check_metric(metric, kind)
        except ConfigError as e:
            raise bad("metric", str(e)) from None
        if input_field is None and input_format is None:
            input_field = next((f for f in ("text", "input", "sentence", "question") if f in first), None)
            if input_field is None:
                raise DataError(f"{at(first_split, 0)}: no input field; expected 'text' or 'input' "
                                f"(or set input_field in task.yaml), found {_field_list(first)}")
        if output_field is None:
            output_field = "label" if kind == CLASSIFICATION else "output"

        # --- rows ---
        splits: dict[str, list[Example]] = {}
        for split, split_rows in rows.items():
            splits[split] = [_make_example(r, at(split, i), kind, input_field, input_format, format_fields,
                                           output_field) for i, r in enumerate(split_rows)]
            if not splits[split] and split in files:
                raise DataError(f"{files[split]}: split {split!r} is empty: {why_empty(files[split])}")

        # --- labels ---
        if kind == CLASSIFICATION:
            if label_words is not None:
                set_from = src.file("labels") or "the labels argument"
            else:
                ref = "train" if splits.get("train") else first_split
                seen = sorted({ex.output for ex in splits[ref]})
                if len(seen) < 2:
                    raise DataError(f"{where(ref)}: a classification task needs at least 2 labels; field "
                                    f"{output_field!r} has only {seen}; add rows of another label or list the "
                                    f"labels in task.yaml")
                label_words = {lab: lab for lab in seen}
                set_from = f"{where(ref)} (list every label under `labels:` in task.yaml to allow others)"
            known = ", ".join(repr(k) for k in label_words)
            for split, exs in splits.items():
                for i, ex in enumerate(exs):
                    if ex.output not in label_words:
                        hint = _did_you_mean(ex.output, label_words)
                        raise DataError(f"{at(split, i)}: field {output_field!r}: label {ex.output!r} is not in "
                                        f"the label set {known}, from {set_from}{hint}")
        else:
            label_words = {}

        # --- dev split ---
        empty_reasons: dict[str, str] = {}
        n_train = len(splits.get("train", []))
        if not splits.get("dev"):
            if n_train >= MIN_TRAIN_FOR_DEV:
                train = list(splits["train"])
                random.Random(seed).shuffle(train)
                k = min(100, max(1, int(len(train) * dev_fraction)))
                splits["dev"], splits["train"] = train[:k], train[k:]
            elif n_train:
                empty_reasons["dev"] = (f"there is no dev file, and {where('train')} has {n_train} row"
                                        f"{'s' * (n_train != 1)}, too few to carve a dev split from "
                                        f"({MIN_TRAIN_FOR_DEV} needed); add a dev.jsonl")
        return cls(name=name, kind=kind, train=splits.get("train", []), dev=splits.get("dev", []),
                   test=splits.get("test", []), labels=label_words, instruction=instruction or "",
                   metric=metric, source=source, files=files, empty_reasons=empty_reasons)


# --- helpers ---------------------------------------------------------------------------------------
@dataclass
class _Origins:
    """Where each setting came from ("data/task.yaml:4"); settings without one were arguments."""

    where: dict[str, str]

    def error(self, key: str, msg: str) -> PromptliftError:
        """A DataError naming the file line of setting `key`, or a ConfigError for an argument."""
        if key in self.where:
            return DataError(f"{self.where[key]}: {msg}")
        return ConfigError(msg)

    def label_key(self, name: Any) -> str:
        """The origin key of label `name` (its own line when known, else the labels setting)."""
        return f"labels/{name}" if f"labels/{name}" in self.where else "labels"

    def file(self, key: str) -> str | None:
        """'data/task.yaml' for a setting (or, for "labels", any label) read from a file."""
        origin = self.where.get(key) or next((v for k, v in self.where.items() if k.startswith(f"{key}/")), None)
        return origin.rsplit(":", 1)[0] if origin else None


def _field_list(row: Mapping) -> str:
    names = [repr(k) for k in list(row)[:12]]
    return ", ".join(names) + (", ..." if len(row) > 12 else "") if names else "no fields"


def _did_you_mean(label: str, known: Mapping[str, str]) -> str:
    """A hint for a near miss: another case, or a number written as 1.0 for 1."""
    for k in known:
        if k.casefold() == label.casefold() or (label.endswith(".0") and label[:-2] == k):
            return f" (did you mean {k!r}?)"
    return ""


def _format_fields(fmt: str) -> list[str]:
    """The field names of an input_format's {placeholders}; ValueError saying what is wrong."""
    try:
        parts = list(string.Formatter().parse(fmt))
    except ValueError as e:
        raise ValueError(f"input_format {fmt!r} is malformed ({e}); write a literal brace as {{{{ or }}}}") from None
    names = []
    for _, name, spec, _ in parts:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError(f"input_format {fmt!r}: placeholder {{{name}}} must name a field, e.g. {{text}}")
        if "." in name or "[" in name or "{" in (spec or ""):
            raise ValueError(f"input_format {fmt!r}: placeholder {{{name}}} must be a plain field name")
        names.append(name)
    if not names:
        raise ValueError(f"input_format {fmt!r} has no {{field}} placeholder, so every input would be the same")
    return names


def _label_words(labels: Any, src: _Origins) -> dict[str, str]:
    """label name -> words, checked: a non-empty mapping of non-empty text; distinct names and words."""
    bad = src.error
    if not isinstance(labels, Mapping):
        raise bad("labels", f"labels must be a mapping of label -> label words, got {type(labels).__name__}")
    if not labels:
        raise bad("labels", "labels is empty; give each label and its words")
    out: dict[str, str] = {}
    by_words: dict[str, str] = {}
    for raw_name, raw_words in labels.items():
        where_key = src.label_key(raw_name)
        try:
            name = _as_text(raw_name).strip()
            words = _as_text(raw_words)
        except ValueError as e:
            raise bad(where_key, f"label {raw_name!r}: {e}") from None
        if not name:
            raise bad(where_key, "a label name is empty")
        if not words.strip():
            raise bad(where_key, f"label {name!r} has empty label words")
        if name in out:
            raise bad(where_key, f"label {name!r} is listed twice")
        if words.strip() in by_words:
            raise bad(where_key, f"labels {by_words[words.strip()]!r} and {name!r} have the same label words "
                                 f"{words.strip()!r}; the model could not tell them apart")
        out[name], by_words[words.strip()] = words, name
    return out


def _as_text(value: Any) -> str:
    """A field value as text: strings as they are, numbers written out; ValueError for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected text, got {json.dumps(value)}; write it as a string if it is meant as text")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        if not math.isfinite(float(value)):
            raise ValueError(f"expected text, got the number {float(value)!r}")
        return str(float(value))
    kind = {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)
    raise ValueError(f"expected text, got {kind}")


def _field_text(r: Mapping, name: str, at: str, why: str = "") -> str:
    """Text of field `name` of row `r`; a DataError naming the row if missing, null or not text."""
    if name not in r:
        raise DataError(f"{at}: missing field {name!r}{why}; the row has {_field_list(r)}")
    if r[name] is None:
        raise DataError(f"{at}: field {name!r} is null{why}")
    try:
        return _as_text(r[name])
    except ValueError as e:
        raise DataError(f"{at}: field {name!r}{why}: {e}") from None


def _make_example(r: Mapping, at: str, kind: str, input_field: str | None, input_format: str | None,
                  format_fields: list[str], output_field: str) -> Example:
    if input_format:
        why = " (used by input_format)"
        values = {}
        for f in format_fields:
            _field_text(r, f, at, why)
            values[f] = r[f]  # the value itself, so a spec like {score:.2f} works
        try:
            text = input_format.format_map(values)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise DataError(f"{at}: input_format {input_format!r} cannot format this row ({e})") from None
    else:
        text = _field_text(r, input_field, at)  # may be empty: a valid input, counted by Task.empty_inputs
    if output_field not in r or r[output_field] is None:
        _field_text(r, output_field, at)  # raises: missing or null
    out = r[output_field]
    if isinstance(out, list) and kind == GENERATION:  # several acceptable references: the first is the target
        if not out:
            raise DataError(f"{at}: field {output_field!r} is an empty list; give at least one reference")
        refs = [_field_text({output_field: o}, output_field, at) for o in out]
        out = refs[0]
    elif isinstance(out, list):
        raise DataError(f"{at}: field {output_field!r}: expected one label, got a list")
    else:
        out = _field_text(r, output_field, at)
    if kind == CLASSIFICATION:
        out = out.strip()
    if not out.strip():
        raise DataError(f"{at}: field {output_field!r} is empty")
    return Example(input=text, output=out, fields=r)


def default_instruction(task: Task) -> str:
    """The zero-shot instruction used when the task sets none."""
    if task.kind == CLASSIFICATION:
        words = ", ".join(task.labels.values())
        return f"Classify the input. Answer with one of: {words}."
    return "Answer the input with a short answer."
