"""Run directories: config, history, artifact, results. Every optimize() writes one.

    RUNDIR/config.json         what was asked (method, options, model, task, seed)
    RUNDIR/history.jsonl       one line per step: score, loss, calls, seconds
    RUNDIR/prompt.json         the final artifact (+ prompt.safetensors for soft prompts)
    RUNDIR/result.json         dev and test scores, cost, seconds
    RUNDIR/predictions_{dev,test}.jsonl
    RUNDIR/checkpoint/         method state for --resume (gradient methods)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .errors import DataError


def _json_default(o: Any):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a killed run never leaves half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")
    tmp.replace(path)


class RunDir:
    """A run's directory; created on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()

    def clear(self) -> None:
        """Remove a previous run's files (overwrite)."""
        import shutil

        for name in ("config.json", "history.jsonl", "result.json", "prompt.json", "prompt.safetensors",
                     "predictions_dev.jsonl", "predictions_test.jsonl"):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def write_config(self, config: dict) -> None:
        write_json(self.path / "config.json", config)

    def read_config(self) -> dict | None:
        p = self.path / "config.json"
        return json.loads(p.read_text()) if p.exists() else None

    def log(self, row: dict) -> None:
        """Append one history line (flushed at once)."""
        row = {"time": round(time.perf_counter() - self.t0, 3), **row}
        with (self.path / "history.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=_json_default) + "\n")

    def write_predictions(self, split: str, records: list[dict]) -> None:
        with (self.path / f"predictions_{split}.jsonl").open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n")

    def write_result(self, result: dict) -> None:
        write_json(self.path / "result.json", result)

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoint"


def read_result(path: str | Path) -> dict:
    p = Path(path) / "result.json"
    if not p.exists():
        raise DataError(f"{path}: not a run directory (no result.json)")
    return json.loads(p.read_text())
