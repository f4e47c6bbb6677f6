"""File primitives, the bottom layer: atomic writes, JSON lines, the cache folder's path.

  * JSON files are replaced atomically (a temporary file beside the target, fsynced, then
    `os.replace`d): a killed writer leaves the old file or the new one, never half of one;
  * JSONL lines are appended, flushed and fsynced, and a torn last line (a killed writer)
    and everything after it is left out when read;
  * `cache_dir()` is where promptlift keeps caches; it only names the folder: a writer creates
    what it writes into.

Nothing here imports the rest of promptlift.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

TMP_PREFIX = ".promptlift-tmp-"  # temporary files of an atomic write start with this (a run's `clear` removes them)


def cache_dir() -> Path:
    """The folder for promptlift caches: $PROMPTLIFT_CACHE_DIR or ~/.cache/promptlift (not created here)."""
    return Path(os.environ.get("PROMPTLIFT_CACHE_DIR") or Path.home() / ".cache" / "promptlift").expanduser()


def _json_default(o: Any):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    try:  # Linux: read it without the race of os.umask(set) + os.umask(restore)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def default_permissions(path: str | Path) -> None:
    """Give a file from `mkstemp` (0600) or a folder from `mkdtemp` (0700) the usual umask-based mode."""
    p = Path(path)
    os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~_umask())


def _mkstemp_like(path: Path) -> tuple[int, str]:
    """A unique temporary file beside `path`, with the permissions a plain `open` would give it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX + path.name + ".", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file atomically: a unique temporary file in the same folder, fsynced, then `os.replace`d.

    A killed process leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    fd, tmp = _mkstemp_like(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (see `write_bytes`)."""
    write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n").encode("utf-8"))


def json_lines(rows: Iterable[dict]) -> str:
    """`rows` as JSON lines, each ending in a line break ('' for no rows)."""
    return "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows)


def write_lines(path: str | Path, rows: Iterable[dict]) -> None:
    """Rewrite a JSONL file atomically (see `write_bytes`)."""
    write_bytes(path, json_lines(rows).encode("utf-8"))


def read_jsonl(path: str | Path) -> list[dict]:
    """The complete lines of a JSONL file (a torn or malformed line and all after it are left out)."""
    return read_jsonl_prefix(Path(path))[0]


def read_jsonl_prefix(path: Path) -> tuple[list[dict], int]:
    """(rows, byte length of the good part): reading stops at the first incomplete or malformed line."""
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    rows, good = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # torn write: the writer was killed in the middle of this line
        try:
            row = json.loads(line)
        except ValueError:
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
        good += len(line)
    return rows, good


def append_lines(path: str | Path, rows: Iterable[dict]) -> None:
    """Append `rows` to a JSONL file, flushed and fsynced (one fsync for all of them)."""
    text = json_lines(rows)
    if not text:
        return
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
