"""Run directories: config, history, artifact, results. Every optimize() writes one.

    RUNDIR/.promptlift-run      marker (JSON): this directory is a promptlift run
    RUNDIR/.promptlift-run.lock held (flock) by the process writing the run
    RUNDIR/config.json          what was asked (method, options, model, task, seed)
    RUNDIR/history.jsonl        one line per step: score, loss, calls, seconds
    RUNDIR/prompt.json          the final artifact (+ prompt.safetensors for soft prompts)
    RUNDIR/result.json          dev and test scores, cost, seconds
    RUNDIR/predictions_{dev,test}.jsonl
    RUNDIR/spend.json           budget spent so far (so --resume keeps counting)
    RUNDIR/checkpoint/          method state for --resume (the whole folder is promptlift's)

Safety rules:
  * a directory that is not empty and has no marker is never used (nor cleared):
    promptlift does not write among, or delete, a user's own files;
  * `clear` (--overwrite) deletes only the names listed above;
  * one writer at a time: a second process opening the same run fails at once
    (`ConfigError`); within one process a newer `RunDir` on the same path takes
    the lock over from an older one (e.g. one kept alive by a traceback);
  * JSON files are replaced atomically; JSONL lines are appended, flushed and
    fsynced, and a torn last line (a killed writer) is skipped when read.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from .errors import ConfigError, DataError
from .files import TMP_PREFIX, append_lines, json_lines, read_jsonl, read_jsonl_prefix, write_json, write_lines
from ._version import __version__

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected against a second writer
    fcntl = None  # type: ignore[assignment]

MARKER = ".promptlift-run"
LOCK = ".promptlift-run.lock"
# Every name promptlift writes into a run directory (besides MARKER and LOCK); `clear` deletes these only.
OWNED_FILES = ("config.json", "history.jsonl", "result.json", "prompt.json", "prompt.safetensors", "spend.json")
OWNED_GLOBS = ("predictions_*.jsonl", TMP_PREFIX + "*")
CHECKPOINT = "checkpoint"
SPEND = "spend.json"
# what must match for --resume to continue a run
COMPARABLE = ("method", "options", "model", "task", "seed")


def _comparable(config: dict) -> dict:
    return {k: config.get(k) for k in COMPARABLE}


def config_differences(old: dict, new: dict, where: str = "") -> str:
    """The keys whose values differ, with both values: "options.lr 0.03 -> 0.1; seed 0 -> 1"."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = config_differences(a, b, f"{where}{k}.")
            out += [inner] if inner else []
        elif a != b:
            out.append(f"{where}{k} {a!r} -> {b!r}")
    return "; ".join(out)


def truncate_history(run_dir: str | Path, keep: Callable[[dict], bool]) -> int:
    """Keep only the history rows for which `keep(row)` is true (atomic rewrite); return how many were dropped.

    For `--resume`: drop the rows logged after the checkpoint was written, e.g.
    `truncate_history(run_dir, lambda r: r.get("step", 0) <= last_step)`, so the
    resumed run does not log them twice. A torn last line is dropped too.
    """
    path = Path(run_dir) / "history.jsonl"
    if not path.exists():
        return 0
    rows, good = read_jsonl_prefix(path)
    kept = [r for r in rows if keep(r)]
    dropped = len(rows) - len(kept) + (1 if good < path.stat().st_size else 0)
    if dropped:
        write_lines(path, kept)
    return dropped


class PredictionWriter:
    """Appends prediction records to `predictions_<split>.jsonl` as they are computed (see `RunDir.open_predictions`)."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        if resume:
            _, good = read_jsonl_prefix(path)
            if path.exists() and good < path.stat().st_size:
                os.truncate(path, good)  # cut a torn last line so new lines start cleanly
            self._f = path.open("a", encoding="utf-8")
        else:
            self._f = path.open("w", encoding="utf-8")

    def append(self, record: dict) -> None:
        """Write one record (flushed and fsynced)."""
        self.extend([record])

    def extend(self, records: Iterable[dict]) -> None:
        """Write several records, e.g. one batch, with one fsync."""
        text = json_lines(records)
        if text:
            self._f.write(text)
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        """Close the file (idempotent)."""
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Locks this process holds, by resolved path: a newer RunDir on the same path takes the lock over.
_HELD: dict[str, "RunDir"] = {}


def _is_legacy_run(path: Path, entries: list[str]) -> bool:
    """A run directory written before markers existed: only promptlift's names and a run config.json."""
    import fnmatch

    for e in entries:
        if e in OWNED_FILES or e == CHECKPOINT or any(fnmatch.fnmatch(e, g) for g in OWNED_GLOBS):
            continue
        return False
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and {"method", "model", "task"} <= set(cfg)


def _refuse_foreign(path: Path) -> None:
    if (path / MARKER).exists():
        return
    entries = [e for e in os.listdir(path) if e != LOCK]
    if entries and not _is_legacy_run(path, entries):
        raise ConfigError(f"{path}: directory is not empty and is not a promptlift run directory "
                          f"(no {MARKER} file); choose a new or empty --out")


def _busy(path: Path, fd: int) -> ConfigError:
    holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    who = f" (pid {holder})" if holder.isdigit() else ""
    return ConfigError(f"{path}: another promptlift process{who} is writing this run directory; "
                       "wait for it to finish or choose another --out")


def probe_run_dir(path: str | Path) -> None:
    """Raise the `ConfigError` that `RunDir(path)` would raise (foreign directory, another writer),
    without creating or locking anything: lets a command fail before it loads a model."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a directory; choose another --out")
    _refuse_foreign(path)
    if fcntl is None or not (path / LOCK).exists() or str(path.resolve()) in _HELD:
        return
    fd = os.open(path / LOCK, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise _busy(path, fd) from None
    finally:
        os.close(fd)


class RunDir:
    """A run's directory: created, marked and locked on construction.

    Raises `ConfigError` when `path` is a non-empty directory that is not a
    promptlift run (no marker), or when another process is writing the run.
    Call `close()` when the run is finished to release the lock (it is also
    released when the process exits).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path}: exists and is not a directory; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self._lock_fd: int | None = None
        self._resumed_hash: str | None = None
        marker = self.path / MARKER
        _refuse_foreign(self.path)
        self._lock()
        if not marker.exists():
            write_json(marker, {"format": "promptlift-run", "version": 1, "promptlift": __version__,
                                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    # --- lock -------------------------------------------------------------------------------
    def _lock(self) -> None:
        if fcntl is None:
            return
        key = str(self.path.resolve())
        older = _HELD.get(key)
        if older is not None:
            older.close()
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                err = _busy(self.path, fd)
            finally:
                os.close(fd)
            raise err from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        _HELD[key] = self

    def close(self) -> None:
        """Release the lock (idempotent); the directory and its files stay."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock
            key = str(self.path.resolve())
            if _HELD.get(key) is self:
                del _HELD[key]

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # --- a run's life: start or resume, spend, predictions ---------------------------------------
    def start(self, config: dict, *, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
        """Begin the run `config` describes here, or continue the one here (`resume`); return what the earlier
        (killed) run had spent ({counter: amount}, empty for a new run), so the budget keeps counting.

        A run already here is refused unless `resume` (then with the same method, options, model,
        task and seed) or `overwrite` (its files are cleared). On resume the hash of the artifact
        the earlier run saved is remembered: its predictions are reused only for that same prompt.
        """
        old = self.read_config()
        if old is not None and not resume:
            if not overwrite:
                raise ConfigError(f"{self.path} already holds a run; pass --resume to continue it, "
                                  "--overwrite to replace it, or choose another --out")
            self.clear()
        if resume and old is not None and _comparable(old) != _comparable(config):
            raise ConfigError(f"{self.path}: --resume with other settings than the run there: "
                              f"{config_differences(_comparable(old), _comparable(config))}")
        self.write_config(config)
        self._resumed_hash = self._saved_hash() if resume else None
        return self.spent() if resume else {}

    def _saved_hash(self) -> str | None:
        """The content hash recorded in the prompt.json a run saved here, if any."""
        try:
            h = json.loads((self.path / "prompt.json").read_text(encoding="utf-8")).get("sha256")
        except (OSError, ValueError, AttributeError):
            return None
        return h if isinstance(h, str) else None

    def spent(self) -> dict[str, float]:
        """The budget counters spend.json records ({} if none; `seconds` may be fractional)."""
        path = self.path / SPEND
        if not path.exists():
            return {}
        try:
            spent = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise ConfigError(f"{path}: corrupt spend record (expected JSON counters)") from None
        if not isinstance(spent, dict):
            raise ConfigError(f"{path}: corrupt spend record (expected JSON counters)")
        return {k: v for k, v in spent.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def write_spend(self, counters: dict[str, float]) -> None:
        """Record the budget spent so far (atomically; read back by `start(resume=True)`)."""
        write_json(self.path / SPEND, counters)

    @contextmanager
    def predictions(self, split: str, prompt_hash: str) -> Iterator[tuple[list[dict], Callable[[list[dict]], None]]]:
        """`(done, write)` for evaluating the prompt with `prompt_hash` on `split`: the records a killed
        evaluation of that same prompt already wrote (none otherwise: the file starts afresh), and a
        function appending new records as they are computed."""
        same = self._resumed_hash is not None and self._resumed_hash == prompt_hash
        done = self.done_predictions(split) if same else []
        with self.open_predictions(split, resume=bool(done)) as writer:
            yield done, writer.extend

    # --- content ----------------------------------------------------------------------------
    def clear(self) -> None:
        """Remove a previous run's files (--overwrite): only the names promptlift writes, never other files.

        Refuses (`ConfigError`) a non-empty directory without the run marker.
        """
        entries = [e for e in os.listdir(self.path) if e not in (LOCK, MARKER)]
        if entries and not (self.path / MARKER).exists():
            raise ConfigError(f"{self.path}: not a promptlift run directory (no {MARKER} file); "
                              "refusing to delete anything in it")
        for name in OWNED_FILES:
            (self.path / name).unlink(missing_ok=True)
        for pattern in OWNED_GLOBS:
            for p in self.path.glob(pattern):
                if p.is_file():
                    p.unlink(missing_ok=True)
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def write_config(self, config: dict) -> None:
        """Write config.json (atomically)."""
        write_json(self.path / "config.json", config)

    def read_config(self) -> dict | None:
        """config.json, or None when the run has none yet."""
        p = self.path / "config.json"
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:
            raise DataError(f"{p}: malformed JSON ({e})") from None

    def log(self, row: dict) -> None:
        """Append one history line (flushed and fsynced at once)."""
        row = {"time": round(time.perf_counter() - self.t0, 3), **row}
        append_lines(self.path / "history.jsonl", [row])

    def history(self) -> list[dict]:
        """The history rows written so far (a torn last line is left out)."""
        return read_jsonl(self.path / "history.jsonl")

    def truncate_history(self, keep: Callable[[dict], bool]) -> int:
        """Keep only rows with `keep(row)` true; return how many were dropped. See `truncate_history`."""
        return truncate_history(self.path, keep)

    def predictions_path(self, split: str) -> Path:
        """Where the predictions of `split` go."""
        return self.path / f"predictions_{split}.jsonl"

    def open_predictions(self, split: str, *, resume: bool = False) -> PredictionWriter:
        """A writer that appends each prediction as it is computed.

        resume=False starts the file afresh; resume=True keeps the complete lines
        already there (see `done_predictions`) and appends after them.
        """
        return PredictionWriter(self.predictions_path(split), resume)

    def done_predictions(self, split: str) -> list[dict]:
        """The predictions of `split` already written, in the order written (a torn last line is left out)."""
        return read_jsonl(self.predictions_path(split))

    def write_predictions(self, split: str, records: list[dict]) -> None:
        """Write all predictions of `split` at once (atomically)."""
        write_lines(self.predictions_path(split), records)

    def write_result(self, result: dict) -> None:
        """Write result.json (atomically)."""
        write_json(self.path / "result.json", result)

    @property
    def checkpoint_dir(self) -> Path:
        """Where methods keep their --resume state."""
        return self.path / CHECKPOINT


def is_run_dir(path: str | Path) -> bool:
    """True when `path` carries the run marker."""
    return (Path(path) / MARKER).is_file()
