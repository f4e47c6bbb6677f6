"""Helpers shared by the bench scripts: timing, memory, machine facts, BENCHMARKS.md sections.

Each bench script owns one section of BENCHMARKS.md, delimited by
`<!-- NAME:start -->` / `<!-- NAME:end -->`, and replaces only that section
(`write_section`); sections written by other scripts are kept as they are.

Timings record wall seconds and the process's CPU seconds: on a shared machine
wall time depends on what else runs, CPU time much less, so ratios are given
for both.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
_T0 = time.perf_counter()

# --- data --------------------------------------------------------------------------------------
# The full public data sets sit beside the checkout (the tests ship only the few rows they read, under
# tests/data); PROMPTLIFT_BENCH_DATA names a copy elsewhere (a GPU box).
DATASETS = Path(os.environ.get("PROMPTLIFT_BENCH_DATA") or REPO.parent / "shared" / "datasets")
SST2 = DATASETS / "sst2"
# Instruction-induction tasks: the instruction each task's zero-shot row uses (after the task
# descriptions of Honovich et al. 2022, "Instruction Induction", Table 1).
II_INSTRUCTIONS = {
    "antonyms": "Write a word that means the opposite of the input word.",
    "first_word_letter": "Extract the first letter of the input word.",
    "singular_to_plural": "Convert the input word to its plural form.",
    "sum": "Sum the two given numbers.",
    "num_to_verbal": "Write the number in English words.",
    "negation": "Negate the input sentence.",
    "larger_animal": "Write the larger of the two given animals.",
}
II_DEV = 32  # peers' split: dev = 32 rows of train.jsonl (after a seed-0 shuffle), the induce/train pool = the rest


def discrete_task(name: str, n_train: int, n_dev: int):
    """The split of `discrete.py` and `dev_sweep.py`: SST-2 as shipped, or an instruction-induction task whose
    train and dev are fixed slices (rows 0..n_train and the next n_dev) of a seed-0 shuffle of its pool."""
    import random

    from promptlift.task import Task

    if name == "sst2":
        return Task.from_dir(SST2)
    if name not in II_INSTRUCTIONS:
        raise SystemExit(f"--task: expected sst2 or one of {', '.join(II_INSTRUCTIONS)}, got {name!r}")
    full = Task.from_dir(DATASETS / "instruction_induction" / name, instruction=II_INSTRUCTIONS[name])
    pool = sorted(full.train + full.dev, key=lambda ex: (ex.input, ex.output))  # undo from_dir's own dev carve
    random.Random(0).shuffle(pool)
    return Task(name=name, kind=full.kind, train=pool[:n_train], dev=pool[n_train:n_train + n_dev],
                test=full.test, labels=full.labels, instruction=full.instruction, metric=full.metric,
                source=full.source)


def peers_task(name: str, test_limit: int):
    """The split of `llm_opt_vs_peers.py` (and the investigations on its runs): SST-2 as shipped (train 32 /
    dev 32); an instruction-induction task with dev = II_DEV rows of a seed-0 shuffle of train.jsonl and the
    rest as the train pool; the first `test_limit` test rows (0 = all)."""
    import json
    import random

    from promptlift.task import Task

    if name == "sst2":
        task = Task.from_dir(SST2)
    else:
        d = DATASETS / "instruction_induction" / name
        rows = [json.loads(line) for line in (d / "train.jsonl").read_text().splitlines() if line.strip()]
        random.Random(0).shuffle(rows)  # train.jsonl can be ordered (sum: "0 0", "0 1", ...): dev must be a sample
        test = [json.loads(line) for line in (d / "test.jsonl").read_text().splitlines() if line.strip()]
        task = Task.from_rows({"train": rows[II_DEV:], "dev": rows[:II_DEV], "test": test}, name=name, source=str(d))
    if test_limit:
        task = task.with_splits(test=task.test[:test_limit])
    return task


# --- timing --------------------------------------------------------------------------------
@dataclass
class Timing:
    """Wall and CPU seconds of one timed block (filled in when the block exits)."""

    wall: float = 0.0
    cpu: float = 0.0

    def __str__(self) -> str:
        return f"{self.wall:.1f}s wall, {self.cpu:.1f}s CPU"


@contextlib.contextmanager
def timed() -> Iterator[Timing]:
    """`with timed() as t: ...` -> t.wall (perf_counter) and t.cpu (process_time, all threads)."""
    t = Timing()
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        yield t
    finally:
        t.wall = time.perf_counter() - w0
        t.cpu = time.process_time() - c0


def progress(msg: str) -> None:
    """One progress line on stdout with the elapsed time, flushed at once."""
    el = time.perf_counter() - _T0
    print(f"[{int(el // 60):3d}:{el % 60:04.1f}] {msg}", flush=True)


# --- memory --------------------------------------------------------------------------------
def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size in MiB of this process (or of its largest waited-for child)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    kb = r.ru_maxrss if sys.platform != "darwin" else r.ru_maxrss / 1024  # Linux: KiB, macOS: bytes
    return kb / 1024


def current_rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; 0.0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


@contextlib.contextmanager
def python_heap_peak() -> Iterator[dict]:
    """Peak Python-heap allocation (MiB) inside the block, via tracemalloc.

    Only Python-level allocations are traced (not torch tensor storage), and
    tracing slows Python code: do not wrap timed sections with it.
    """
    out: dict = {}
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield out
    finally:
        out["peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        if started:
            tracemalloc.stop()


# --- machine facts -------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError):
        pass
    return None


def loadavg() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_facts() -> dict:
    """CPU model, cores, memory, torch/transformers versions and threads, load average."""
    import torch

    try:
        import transformers

        tv = transformers.__version__
    except ImportError:  # pragma: no cover
        tv = "n/a"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        usable = os.cpu_count()
    mem = mem_total_gib()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": round(mem, 1) if mem else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "transformers": tv,
        "python": platform.python_version(),
        "os": platform.platform(),
        "loadavg_start": loadavg(),
    }


# --- report --------------------------------------------------------------------------------
def command_line() -> str:
    """The command as it was typed (interpreter path made relative to the repo when inside it)."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    exe = Path(argv[0])
    with contextlib.suppress(ValueError):
        argv[0] = str(exe.absolute().relative_to(Path.cwd())) if exe.is_absolute() else argv[0]
    return shlex.join(argv)


def now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A markdown table; `align` is one char per column, 'l' or 'r' (default: first left, others right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(map(str, headers)) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, path: str | Path = BENCHMARKS_MD, title: str = "# Benchmarks") -> Path:
    """Replace the section `name` of BENCHMARKS.md (append it if absent; create the file if needed).

    Other sections are left untouched. The file is locked while it is rewritten and
    replaced atomically, so two bench scripts finishing together do not lose a section.
    """
    path = Path(path)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    # the lock lives outside the repo (and is never deleted, which would race with a waiter)
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"promptlift-benchmarks-{key}.lock"
    with open(lock_path, "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover (Windows)
            pass
        text = path.read_text(encoding="utf-8") if path.exists() else f"{title}\n"
        i, j = text.find(start), text.find(end)
        if i != -1 and j > i:
            text = text[:i] + block + text[j + len(end):]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path


@dataclass
class StageLog:
    """Per-stage wall/CPU seconds, load average and peak RSS, for the report."""

    rows: list[list] = field(default_factory=list)

    def add(self, stage: str, t: Timing) -> None:
        self.rows.append([stage, f"{t.wall:.1f}", f"{t.cpu:.1f}", loadavg().split("/")[0],
                          f"{peak_rss_mb():.0f}"])
        progress(f"{stage}: {t}, load {loadavg()}, peak RSS {peak_rss_mb():.0f} MiB")

    def table(self) -> str:
        return md_table(["stage", "wall s", "CPU s", "load (1 min) after", "peak RSS so far (MiB)"], self.rows)
