"""Reading task files (JSONL, JSON, CSV, TSV, task.yaml) with one-line errors naming file, line and field.

What loads and what is refused (every refusal is a `DataError` "PATH:LINE: what is wrong"):

- Every file is UTF-8 text; a UTF-8 BOM is skipped. A NUL byte, a UTF-16 file or a byte that is not
  UTF-8 is refused, naming the line.
- `.jsonl`: one JSON object per line. Lines are split on "\\n" only, so U+2028, U+2029, U+0085,
  \\x0b and \\x0c inside a JSON string stay text (raw control characters inside strings are accepted);
  CRLF endings and blank lines are fine. An object with a key twice is refused.
- `.json`: one JSON list of objects; errors name the line where the element starts.
- `.csv` / `.tsv`: read by the `csv` module from the whole text, so a quoted field may hold newlines
  and delimiters; a field that opens a quote must close it just before the delimiter (strict
  quoting: `"hi" he said` would otherwise lose its quotes silently). The first non-blank line is the
  header: names non-empty and distinct. Every record has as many fields as the header; records whose
  fields are all blank are skipped. A record's line is the line where it starts.
- `task.yaml`: a mapping of the keys in `TASK_YAML_KEYS`. Plain scalars stay the text the user
  wrote (YAML 1.1 would turn `yes`/`no`/`on`/`off` into booleans, `010` into 8 and `1:30` into 90);
  only `null`/`~`/nothing is null. A key given twice is refused.

An empty file is not an error here (it has no rows); the task loader says which split is empty.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import DataError

SPLITS = ("train", "dev", "test")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
TASK_YAML_NAMES = ("task.yaml", "task.yml")
TASK_YAML_KEYS = ("name", "type", "kind", "input_field", "input_format", "label_field", "output_field",
                  "labels", "instruction", "metric")


@dataclass(frozen=True)
class Record:
    """One row of a data file and the file line where it starts."""

    line: int
    data: dict


@dataclass
class TaskYaml:
    """A parsed task.yaml: its settings and the line of each key (for error messages)."""

    path: Path
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    label_lines: dict[str, int] = field(default_factory=dict)


# --- text --------------------------------------------------------------------------------------------
def read_text(path: Path | str) -> str:
    """The text of a UTF-8 file (BOM skipped); a one-line DataError for anything else."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path}: UTF-16 text; save the file as UTF-8")
    if b"\x00" in data[:4096]:
        raise DataError(f"{path}: binary file, expected UTF-8 text (JSONL, JSON, CSV or TSV)")
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: skip + e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {skip + e.start}); save the file as UTF-8") from None
    nul = text.find("\x00")
    if nul >= 0:
        raise DataError(f"{path}:{text.count(chr(10), 0, nul) + 1}: NUL character, expected text")
    return text


# --- data files --------------------------------------------------------------------------------------
def read_records(path: Path | str) -> list[Record]:
    """Rows of a .jsonl/.json/.csv/.tsv file with the line each starts on ([] for a file with no rows)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.exists() and not path.is_dir() and suffix not in DATA_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; "
                        f"expected {', '.join(DATA_SUFFIXES)}")
    text = read_text(path)
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, text, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json":
        return _read_json_list(path, text)
    return _read_jsonl(path, text)


def read_rows(path: Path | str) -> list[dict]:
    """Rows of a .jsonl/.json/.csv/.tsv file as dicts (errors name the file and line)."""
    return [r.data for r in read_records(path)]


class _DuplicateKey(ValueError):
    pass


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _loads(text: str) -> Any:
    # strict=False: raw control characters (\x0b, \x0c, tabs) inside strings are text, not errors
    return json.loads(text, strict=False, object_pairs_hook=_object_pairs)


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _read_jsonl(path: Path, text: str) -> list[Record]:
    records = []
    for i, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 etc. may sit in strings
        if not line.strip(" \t\r"):
            continue
        try:
            row = _loads(line)
        except _DuplicateKey as e:
            raise DataError(f"{path}:{i}: key {e.args[0]!r} appears twice in the object") from None
        except json.JSONDecodeError as e:
            hint = "; a JSON list belongs in a .json file" if i == 1 and line.strip() == "[" else ""
            raise DataError(f"{path}:{i}: malformed JSON ({e.msg} at column {e.colno}){hint}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {_json_type(row)}")
        records.append(Record(i, row))
    return records


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _read_json_list(path: Path, text: str) -> list[Record]:
    if not text.strip(" \t\n\r"):
        return []
    try:
        data = json.loads(text, strict=False)
    except json.JSONDecodeError as e:
        hint = "; a .json file holds one list of objects (one object per line is .jsonl)" \
            if e.msg == "Extra data" else ""
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno}){hint}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {_json_type(data)}")
    # the document is valid: decode the list again element by element to know where each starts
    decoder = json.JSONDecoder(strict=False, object_pairs_hook=_object_pairs)
    pos = _JSON_SPACE.match(text, 0).end() + 1  # after "["
    line, counted = 1, 0
    records = []
    for _ in data:
        pos = _JSON_SPACE.match(text, pos).end()
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            item, pos = decoder.raw_decode(text, pos)
        except _DuplicateKey as e:
            raise DataError(f"{path}:{line}: key {e.args[0]!r} appears twice in the object") from None
        if not isinstance(item, dict):
            raise DataError(f"{path}:{line}: expected a JSON object, got {_json_type(item)}")
        records.append(Record(line, item))
        pos = _JSON_SPACE.match(text, pos).end() + 1  # after "," (or the closing "]")
    return records


def _read_delimited(path: Path, text: str, delimiter: str) -> list[Record]:
    kind = "TSV" if delimiter == "\t" else "CSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    header_line = 0
    records = []
    end = 0  # line where the previous record ended
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not any(f.strip() for f in row):
                continue
            if header is None:
                header, header_line = _check_header(path, start, row, kind), start
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{start}: {len(row)} field{'s' * (len(row) != 1)}, but the header "
                                f"(line {header_line}) has {len(header)}: {', '.join(header)}")
            records.append(Record(start, dict(zip(header, row))))
    except csv.Error as e:
        msg = str(e)
        if "unexpected end of data" in msg:
            raise DataError(f"{path}:{end + 1}: malformed {kind}: a quoted field that starts in this record "
                            f"is never closed (unbalanced '\"')") from None
        if "expected after" in msg:
            raise DataError(f"{path}:{reader.line_num}: malformed {kind}: text after a closing quote; quote "
                            f"the whole field and double the quotes inside it (\"\")") from None
        if "field larger than field limit" in msg:
            raise DataError(f"{path}:{end + 1}: malformed {kind}: a field longer than {csv.field_size_limit()} "
                            f"characters (often an unclosed quote)") from None
        raise DataError(f"{path}:{reader.line_num}: malformed {kind} ({msg})") from None
    return records


def _check_header(path: Path, line: int, names: list[str], kind: str) -> list[str]:
    seen: dict[str, int] = {}
    for col, name in enumerate(names, start=1):
        if not name.strip():
            raise DataError(f"{path}:{line}: {kind} header column {col} has no name")
        if name in seen:
            raise DataError(f"{path}:{line}: {kind} header names {name!r} twice (columns {seen[name]} and {col})")
        seen[name] = col
    return names


def why_empty(path: Path | str) -> str:
    """Why a data file that gave no rows has none, e.g. "the file has only a header line"."""
    text = read_text(path)
    if not text.strip():
        return "the file is empty" if not text else "the file has only blank lines"
    if Path(path).suffix.lower() in (".csv", ".tsv"):
        return "the file has only a header line"
    return "the file holds no rows"


def find_split_file(directory: Path, split: str) -> Path | None:
    """`directory/SPLIT.{jsonl,json,csv,tsv}`, None if absent; an error if more than one exists."""
    found = [directory / f"{split}{ext}" for ext in DATA_SUFFIXES if (directory / f"{split}{ext}").exists()]
    if len(found) > 1:
        raise DataError(f"{directory}: {' and '.join(p.name for p in found)} are both there; keep one {split} file")
    return found[0] if found else None


# --- task.yaml ---------------------------------------------------------------------------------------
class _TextLoader(yaml.SafeLoader):
    """SafeLoader where plain scalars stay text (except null) and duplicate keys are errors."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: SafeLoader reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice, first on line {first}", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_TextLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag == "tag:yaml.org,2002:null"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def task_yaml_path(directory: Path) -> Path | None:
    """The task.yaml (or task.yml) of a data directory, None if absent; an error if both exist."""
    found = [directory / n for n in TASK_YAML_NAMES if (directory / n).exists()]
    if len(found) > 1:
        raise DataError(f"{directory}: task.yaml and task.yml are both there; keep one")
    return found[0] if found else None


def load_task_yaml(directory: Path) -> TaskYaml | None:
    """The parsed task.yaml of a data directory, checked for shape (None if absent).

    Checked here: a mapping, only known keys, not two spellings of one setting, settings are
    text, `labels` a mapping whose names and words are text. What the values mean (type,
    metric, label words, input_format) is checked by the task loader.
    """
    p = task_yaml_path(Path(directory))
    if p is None:
        return None
    loader = _TextLoader(read_text(p))
    try:
        node = loader.get_single_node()
        meta = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "'\\t'" in problem:
            problem += "; indent with spaces, not tabs"
        raise DataError(f"{p}{where}: malformed YAML ({problem})") from None
    finally:
        loader.dispose()
    out = TaskYaml(p)
    if meta is None:
        return out
    if not isinstance(meta, dict):
        raise DataError(f"{p}:{node.start_mark.line + 1}: expected a mapping of task settings "
                        f"(key: value lines), got {_json_type(meta)}")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    for key in meta:
        if key not in TASK_YAML_KEYS:
            close = difflib.get_close_matches(str(key), TASK_YAML_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"{p}:{lines.get(str(key), 1)}: unknown key {key!r}{hint}; "
                            f"known keys: {', '.join(TASK_YAML_KEYS)}")
    for a, b in (("type", "kind"), ("label_field", "output_field"), ("input_field", "input_format")):
        if a in meta and b in meta:
            raise DataError(f"{p}:{lines[b]}: both {a!r} and {b!r} are set; keep one")
    for key, value in meta.items():
        if key == "labels":
            continue
        if value is None:
            raise DataError(f"{p}:{lines[key]}: {key!r} has no value; give one or remove the line")
        if not isinstance(value, str):
            raise DataError(f"{p}:{lines[key]}: {key!r} must be text, got {_json_type(value)}")
    out.values, out.lines = dict(meta), lines
    if "labels" in meta:
        out.label_lines = _check_yaml_labels(p, lines["labels"], meta["labels"], node)
    return out


def _check_yaml_labels(p: Path, line: int, labels: Any, root: yaml.MappingNode) -> dict[str, int]:
    example = "labels:\\n  pos: positive\\n  neg: negative"
    if not isinstance(labels, dict):
        raise DataError(f"{p}:{line}: 'labels' must be a mapping of label -> label words "
                        f"(e.g. \"{example}\"), got {_json_type(labels)}")
    if not labels:
        raise DataError(f"{p}:{line}: 'labels' is empty; list each label and its words")
    value_node = next(v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "labels")
    label_lines = {str(k.value): k.start_mark.line + 1 for k, _ in value_node.value}
    for name, words in labels.items():
        at = label_lines.get(str(name), line)
        if not isinstance(name, str):
            raise DataError(f"{p}:{at}: label name {name!r} must be text, got {_json_type(name)}")
        if words is None:
            raise DataError(f"{p}:{at}: label {name!r} has no label words (write `{name}: {name}` to use the name)")
        if not isinstance(words, str):
            raise DataError(f"{p}:{at}: label {name!r}: label words must be text, got {_json_type(words)}")
    return label_lines
