"""Run directories: marker, overwrite that deletes only promptlift's files, one writer, atomic JSON,
fsynced history with truncation for --resume, predictions appended as computed and read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import promptlift
from promptlift.errors import ConfigError
from promptlift.files import read_jsonl, write_json
from promptlift.runs import LOCK, MARKER, RunDir, is_run_dir, probe_run_dir, truncate_history
from promptlift.task import Example, Task
from fakes import make_tiny_lm  # noqa: F401

SRC = str(Path(promptlift.__file__).resolve().parents[1])


def tiny_task() -> Task:
    rows = [Example(f"the movie was {w}", "positive" if w in ("great", "good") else "negative")
            for w in ("great", "boring", "good", "bad")]
    return Task(name="synth", kind="classification", train=rows, dev=rows, test=rows,
                labels={"negative": "cold", "positive": "hot"}, instruction="Classify.")


# --- marker and overwrite -----------------------------------------------------------------------------
def test_new_directory_is_marked(tmp_path):
    rd = RunDir(tmp_path / "a" / "run")
    marker = json.loads((rd.path / MARKER).read_text())
    assert marker["format"] == "promptlift-run" and marker["promptlift"] == promptlift.__version__
    assert is_run_dir(rd.path) and not is_run_dir(tmp_path)
    rd.close()


def test_non_empty_foreign_directory_is_refused_and_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "config.json").write_text('{"my": "settings"}')
    with pytest.raises(ConfigError, match="not a promptlift run directory") as ei:
        RunDir(tmp_path)
    assert "\n" not in str(ei.value)
    assert (tmp_path / "config.json").read_text() == '{"my": "settings"}'
    assert sorted(os.listdir(tmp_path)) == ["config.json", "notes.txt"]  # no marker, no lock file left


def test_optimize_refuses_a_foreign_directory_even_with_overwrite(tiny_lm, tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not a promptlift run directory"):
        promptlift.optimize("zero-shot", tiny_lm, tiny_task(), out=tmp_path, progress=False, overwrite=True)
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_legacy_run_directory_without_marker_is_adopted(tmp_path):
    write_json(tmp_path / "config.json", {"method": "zero-shot", "model": "m", "task": "t", "seed": 0})
    (tmp_path / "history.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "checkpoint").mkdir()
    rd = RunDir(tmp_path)
    assert is_run_dir(tmp_path) and rd.read_config()["method"] == "zero-shot"
    rd.close()


def test_clear_deletes_only_promptlift_files(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.write_config({"method": "x", "model": "m", "task": "t"})
    rd.log({"step": 1})
    rd.write_result({"ok": True})
    rd.write_predictions("test", [{"i": 0}])
    rd.write_predictions("extra", [{"i": 0}])
    (rd.path / "prompt.json").write_text("{}")
    (rd.path / "prompt.safetensors").write_bytes(b"x")
    write_json(rd.path / "spend.json", {"calls": 3})
    (rd.checkpoint_dir).mkdir()
    (rd.checkpoint_dir / "state.pt").write_bytes(b"x")
    (rd.path / "my_analysis.ipynb").write_text("user's")
    (rd.path / "plots").mkdir()
    (rd.path / "plots" / "a.png").write_bytes(b"png")
    rd.clear()
    assert sorted(os.listdir(rd.path)) == sorted([MARKER, LOCK, "my_analysis.ipynb", "plots"])
    assert (rd.path / "plots" / "a.png").exists()
    rd.close()


def test_clear_refuses_a_directory_without_marker(tmp_path):
    rd = RunDir(tmp_path / "run")
    (rd.path / MARKER).unlink()
    (rd.path / "data.csv").write_text("a,b")
    with pytest.raises(ConfigError, match="refusing to delete"):
        rd.clear()
    assert (rd.path / "data.csv").exists()
    rd.close()


def test_overwrite_keeps_user_files_in_a_run_directory(tiny_lm, tmp_path):
    out = tmp_path / "r"
    promptlift.optimize("zero-shot", tiny_lm, tiny_task(), out=out, progress=False)
    (out / "README.md").write_text("notes about this run")
    with pytest.raises(ConfigError, match="already holds a run"):
        promptlift.optimize("zero-shot", tiny_lm, tiny_task(), out=out, progress=False)
    promptlift.optimize("zero-shot", tiny_lm, tiny_task(), out=out, progress=False, overwrite=True)
    assert (out / "README.md").read_text() == "notes about this run"
    assert json.loads((out / "result.json").read_text())["method"] == "zero-shot"


# --- one writer ---------------------------------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {src!r})
    from promptlift.runs import RunDir
    rd = RunDir(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.readline()
""")


@pytest.fixture
def held_run(tmp_path):
    """A run directory locked by another process for the duration of the test."""
    path = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(src=SRC), str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield path, proc.pid
    proc.stdin.close()
    proc.wait(timeout=30)


def test_second_writer_fails_at_once(held_run, tiny_lm):
    path, pid = held_run
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as ei:
        RunDir(path)
    assert time.perf_counter() - t0 < 1.0
    msg = str(ei.value)
    assert "another promptlift process" in msg and f"pid {pid}" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="another promptlift process"):
        promptlift.optimize("zero-shot", tiny_lm, tiny_task(), out=path, progress=False, resume=True)


def test_second_optimize_on_the_cli_fails_with_one_line(held_run, tmp_path, capsys):
    from promptlift.cli import main

    path, _ = held_run
    tiny = tmp_path / "tiny"
    from fakes import make_tiny_lm

    lm = make_tiny_lm()
    lm.model.save_pretrained(tiny)
    lm.tokenizer.save_pretrained(tiny)
    capsys.readouterr()
    code = main(["optimize", "--method", "zero-shot", "--data", "demo:demo_topics", "--out", str(path),
                 "--model", str(tiny), "--device", "cpu"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("promptlift")]  # not progress bars
    assert code == 2 and len(err) == 1 and "another promptlift process" in err[0], err


def test_probe_says_the_same_before_any_model_is_loaded(held_run, tmp_path):
    path, pid = held_run
    with pytest.raises(ConfigError, match=f"pid {pid}"):
        probe_run_dir(path)
    probe_run_dir(tmp_path / "does-not-exist")
    assert not (tmp_path / "does-not-exist").exists()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a promptlift run directory"):
        probe_run_dir(tmp_path / "foreign")


def test_lock_is_released_when_the_holder_exits(tmp_path):
    path = tmp_path / "run"
    subprocess.run([sys.executable, "-c", HOLDER.format(src=SRC), str(path)], input="\n", text=True,
                   capture_output=True, check=True)
    RunDir(path).close()  # no error: a dead process holds no lock


def test_same_process_takes_the_lock_over(tmp_path):
    a = RunDir(tmp_path / "run")
    b = RunDir(tmp_path / "run")  # e.g. `a` is kept alive by a traceback of an earlier failed run
    assert a._lock_fd is None and b._lock_fd is not None
    b.close()


# --- atomic JSON --------------------------------------------------------------------------------------
def test_write_json_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    p = tmp_path / "result.json"
    write_json(p, {"v": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_json(p, {"v": 2})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["result.json"]
    assert oct(p.stat().st_mode & 0o777) != oct(0o600)  # the usual permissions, not mkstemp's


def test_concurrent_json_writers_never_collide(tmp_path):
    p = tmp_path / "x.json"
    errors = []

    def writer(i):
        try:
            for j in range(30):
                write_json(p, {"writer": i, "j": j, "pad": "x" * 1000})
        except Exception as e:  # pragma: no cover - the failure this test guards against
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert json.loads(p.read_text())["j"] == 29
    assert os.listdir(tmp_path) == ["x.json"]


# --- history ------------------------------------------------------------------------------------------
def test_history_lines_are_fsynced_and_a_torn_line_is_skipped(tmp_path, monkeypatch):
    rd = RunDir(tmp_path / "run")
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    for s in range(3):
        rd.log({"step": s + 1, "loss": 1.0})
    assert len(synced) == 3
    with (rd.path / "history.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # killed in the middle of a line
    assert [r["step"] for r in rd.history()] == [1, 2, 3]
    rd.close()


def test_resume_truncates_history_so_no_line_is_duplicated(tmp_path):
    """The trainer's pattern: steps are logged, a checkpoint records step 6, the run dies at step 9."""
    rd = RunDir(tmp_path / "run")
    for s in range(1, 10):
        rd.log({"step": s, "epoch": (s - 1) // 3, "loss": 1.0 / s})
        if s % 3 == 0:
            rd.log({"step": s, "epoch": (s - 1) // 3, "dev_score": 0.5})
    with (rd.path / "history.jsonl").open("a") as f:
        f.write('{"step": 10')
    last_step = 6  # what the checkpoint says
    dropped = rd.truncate_history(lambda r: r.get("step", 0) <= last_step)
    assert dropped == 5  # steps 7, 8, 9, the epoch row of step 9, and the torn line
    for s in range(7, 13):  # the resumed run logs from step 7 again
        rd.log({"step": s, "loss": 1.0 / s})
    steps = [(r["step"], "dev_score" in r) for r in rd.history()]
    assert len(steps) == len(set(steps))
    assert [s for s, dev in steps if not dev] == list(range(1, 13))
    assert truncate_history(rd.path, lambda r: True) == 0  # nothing to drop: file untouched
    rd.close()


# --- predictions --------------------------------------------------------------------------------------
def test_predictions_are_appended_as_computed_and_read_back_on_resume(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.open_predictions("test") as w:
        w.append({"index": 0, "prediction": "a"})
        w.extend([{"index": 1, "prediction": "b"}, {"index": 2, "prediction": "c"}])
        assert [r["index"] for r in rd.done_predictions("test")] == [0, 1, 2]  # visible before close
    with rd.predictions_path("test").open("a") as f:
        f.write('{"index": 3, "predi')  # killed mid-line
    done = rd.done_predictions("test")
    assert [r["index"] for r in done] == [0, 1, 2]
    with rd.open_predictions("test", resume=True) as w:
        w.extend({"index": i, "prediction": "z"} for i in range(3, 5))
    assert [r["index"] for r in read_jsonl(rd.predictions_path("test"))] == [0, 1, 2, 3, 4]
    with rd.open_predictions("test") as w:  # not resuming: start afresh
        w.append({"index": 9})
    assert rd.done_predictions("test") == [{"index": 9}]
    assert rd.done_predictions("dev") == []
    rd.close()


def test_predictions_written_at_once_are_atomic(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.write_predictions("dev", [{"i": i} for i in range(5)])
    assert [r["i"] for r in rd.done_predictions("dev")] == list(range(5))
    assert not [n for n in os.listdir(rd.path) if n.endswith(".tmp")]
    rd.close()


# --- checkpoints: written atomically, never run code on load -------------------------------------------
class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    import pickle

    import torch

    from promptlift.checkpoints import load_checkpoint
    from promptlift.errors import ArtifactError

    marker = tmp_path / "pwned"
    evil_zip = tmp_path / "state.pt"
    torch.save({"module": {}, "payload": _RunsCode(marker)}, evil_zip)  # torch's zip format
    evil_pickle = tmp_path / "legacy.pt"
    evil_pickle.write_bytes(pickle.dumps({"payload": _RunsCode(marker)}))  # a bare pickle
    for path in (evil_zip, evil_pickle):
        with pytest.raises(ArtifactError) as ei:
            load_checkpoint(path)
        msg = str(ei.value)
        assert msg.startswith(f"{path}: corrupt or foreign checkpoint (") and "\n" not in msg, msg
    assert not marker.exists(), "loading a checkpoint ran code"


def test_truncated_or_missing_checkpoint_is_a_named_error(tmp_path):
    import torch

    from promptlift.checkpoints import load_checkpoint, save_checkpoint
    from promptlift.errors import ArtifactError

    p = save_checkpoint(tmp_path / "ckpt" / "state.pt", {"w": torch.randn(1000)})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"state\.pt: corrupt or foreign checkpoint \(RuntimeError") as ei:
        load_checkpoint(p)
    assert "\n" not in str(ei.value)
    p.write_bytes(b"")
    with pytest.raises(ArtifactError, match="corrupt or foreign checkpoint"):
        load_checkpoint(p)
    with pytest.raises(ArtifactError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    assert os.listdir(p.parent) == ["state.pt"]  # the atomic save left no temporary file


def test_trainer_state_round_trips_under_weights_only(tmp_path):
    """What the trainer saves: module, AdamW and LambdaLR state dicts, history, best state, config."""
    import math

    import torch

    from promptlift.checkpoints import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    module = torch.nn.LSTM(4, 8)
    opt = torch.optim.AdamW(module.parameters(), lr=0.1, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    for _ in range(3):
        module(torch.randn(5, 1, 4))[0].sum().backward()
        opt.step()
        sched.step()
    state = {"module": module.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(), "epoch": 2,
             "history": [{"epoch": 0, "loss": 0.5, "dev_score": 0.75}], "bad_epochs": 0,
             "best": {"score": -math.inf, "epoch": -1, "state": {k: v.clone() for k, v in module.state_dict().items()}},
             "config": {"lr": 0.1, "loss": "auto", "patience": 0, "warmup": 0.1, "flag": True, "none": None}}
    save_checkpoint(tmp_path / "state.pt", state)
    back = load_checkpoint(tmp_path / "state.pt")

    module2 = torch.nn.LSTM(4, 8)
    opt2 = torch.optim.AdamW(module2.parameters(), lr=0.1, weight_decay=0.01)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: 1.0 / (step + 1))
    module2.load_state_dict(back["module"])
    opt2.load_state_dict(back["optim"])
    sched2.load_state_dict(back["sched"])
    assert sched2.get_last_lr() == sched.get_last_lr() and sched2.last_epoch == 3
    x = torch.randn(5, 1, 4)
    for m, o, s in ((module, opt, sched), (module2, opt2, sched2)):  # one more identical step on both
        o.zero_grad()
        m(x)[0].sum().backward()
        o.step()
        s.step()
    for a, b in zip(module.parameters(), module2.parameters()):
        assert torch.equal(a, b)
    assert back["history"] == state["history"] and back["config"] == state["config"]
    assert back["best"]["score"] == -math.inf and back["epoch"] == 2


def test_the_run_directory_keeps_spend_and_predictions_for_resume(tmp_path):
    """`RunDir.start` refuses, clears or resumes a run and hands back its spend; `predictions` reuses the records
    of a killed evaluation only for the prompt the killed run saved."""
    config = {"method": "m", "options": {"k": 1}, "model": "tiny", "task": "t", "seed": 0}
    with RunDir(tmp_path / "run") as rd:
        assert rd.start(config) == {}
        rd.write_spend({"forward": 3, "calls": 2})
        write_json(rd.path / "prompt.json", {"type": "text", "sha256": "abc"})
        with rd.predictions("dev", "abc") as (done, write):  # a new run: nothing to reuse
            assert done == []
            write([{"i": 0}, {"i": 1}])
    with RunDir(tmp_path / "run") as rd:
        with pytest.raises(ConfigError, match="already holds a run"):
            rd.start(config)
        with pytest.raises(ConfigError, match="other settings than the run there: seed 0 -> 1"):
            rd.start({**config, "seed": 1}, resume=True)
        assert rd.start(config, resume=True) == {"forward": 3, "calls": 2}
        with rd.predictions("dev", "abc") as (done, write):  # the same prompt: its records are kept, new ones follow
            assert done == [{"i": 0}, {"i": 1}]
            write([{"i": 2}])
        assert [r["i"] for r in rd.done_predictions("dev")] == [0, 1, 2]
        with rd.predictions("dev", "another") as (done, write):  # another prompt: the file starts afresh
            assert done == []
        assert rd.done_predictions("dev") == []
        (rd.path / "spend.json").write_text("{not json")
        with pytest.raises(ConfigError, match="corrupt spend record"):
            rd.start(config, resume=True)
        assert rd.start(config, overwrite=True) == {} and not (rd.path / "spend.json").exists()
