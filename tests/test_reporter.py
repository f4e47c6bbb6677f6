"""One reporter: the engine and the methods send progress, notes and step records to the reporter they are
handed; the Python API can capture or silence it, and nothing reaches stderr behind its back."""

from __future__ import annotations

import pytest

import promptlift
from promptlift.artifacts import TextPrompt
from promptlift.reporter import Capture
from fakes import make_tiny_lm, synth_task  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

OPTS = {"tokens": 2, "epochs": 2, "batch_size": 8}


def test_a_capturing_reporter_gets_the_notes_and_stderr_stays_empty(tmp_path, capsys):
    cap = Capture()
    run = promptlift.optimize("prompt-tuning", make_tiny_lm(), synth_task(), out=tmp_path / "run", budget="backward=2",
                              reporter=cap, **OPTS)  # progress bars on (the default): they go to the reporter too
    assert run.stopped == "budget"
    assert any("budget exhausted" in n and "keeping the best prompt so far" in n for n in cap.notes)
    steps = [r for r in cap.records if "loss" in r and "epoch" in r]
    assert steps and steps == [r for r in run_history(tmp_path / "run") if "loss" in r and "epoch" in r]
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""


def test_quiet_silences_and_console_writes_the_same_notes(tmp_path, capsys):
    promptlift.optimize("prompt-tuning", make_tiny_lm(), synth_task(), budget="backward=2", reporter="quiet",
                        eval_splits=(), **OPTS)
    assert capsys.readouterr().err == ""
    promptlift.optimize("prompt-tuning", make_tiny_lm(), synth_task(), budget="backward=2", progress=False,
                        eval_splits=(), **OPTS)  # the default console reporter: what the CLI shows
    assert "promptlift: budget exhausted" in capsys.readouterr().err


def test_evaluate_notes_go_to_the_reporter(capsys):
    task, cap = synth_task(), Capture()
    other = TextPrompt(instruction=task.instruction, task="another-task")
    promptlift.evaluate(make_tiny_lm(), task, other, split="dev", reporter=cap)
    assert cap.notes == [f"note: this prompt was made for task 'another-task', not {task.name!r}"]
    assert capsys.readouterr().err == ""


def run_history(path):
    from promptlift.runs import read_jsonl

    return [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(path / "history.jsonl")]


def test_the_search_loop_reports_through_the_reporter(capsys):
    from promptlift.registry import get_method

    cap = Capture()
    run = promptlift.optimize("ape", make_tiny_lm(), synth_task(), reporter=cap, eval_splits=(),
                              **get_method("ape").smoke)
    assert any(n.startswith("ape: spent ") and "calls" in n for n in cap.notes)  # the spend after the search
    assert any(n.startswith("ape: ") and "limits:" in n for n in cap.notes)  # the estimate before it
    assert [r["step"] for r in cap.records if "step" in r and "event" not in r]  # one record per step
    assert run.prompt is not None and capsys.readouterr().err == ""
