"""Reading task files (JSONL, CSV, TSV, task.yaml) with one-line errors naming file, row and field."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .errors import DataError

SPLITS = ("train", "dev", "test")


def _check_text_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    head = path.open("rb").read(4096)
    if b"\x00" in head:
        raise DataError(f"{path}: binary file, expected UTF-8 text (JSONL, CSV or TSV)")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a multi-byte char cut at the 4096 boundary is fine
            raise DataError(f"{path}: not UTF-8 text (byte {e.start}), expected JSONL, CSV or TSV") from None


def read_rows(path: Path | str) -> list[dict]:
    """Rows of a .jsonl/.json/.csv/.tsv file as dicts (errors name the file and line)."""
    path = Path(path)
    _check_text_file(path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if suffix in (".csv", ".tsv"):
        delim = "\t" if suffix == ".tsv" else ","
        reader = csv.DictReader(text.splitlines(), delimiter=delim)
        if not reader.fieldnames:
            return []
        rows = []
        for i, row in enumerate(reader, start=2):
            if None in row:
                raise DataError(f"{path}:{i}: more fields than the header's {len(reader.fieldnames)}")
            rows.append(dict(row))
        return rows
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON list of objects")
        return data
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def find_split_file(directory: Path, split: str) -> Path | None:
    for ext in (".jsonl", ".json", ".csv", ".tsv"):
        p = directory / f"{split}{ext}"
        if p.exists():
            return p
    return None


def read_task_yaml(directory: Path) -> dict:
    """The optional task.yaml of a data directory ({} if absent)."""
    p = directory / "task.yaml"
    if not p.exists():
        p = directory / "task.yml"
        if not p.exists():
            return {}
    import yaml

    try:
        meta = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise DataError(f"{p}{where}: malformed YAML") from None
    if not isinstance(meta, dict):
        raise DataError(f"{p}: expected a mapping of task settings")
    return meta
