"""`--method auto`: the race drops a clearly worse candidate before its full dev pass, the pick is never below the
best baseline on dev, and the result carries the leaderboard and the test gate over the best baseline."""

from __future__ import annotations

import pytest

import promptlift
from promptlift.artifacts import TextPrompt
from promptlift.methods.auto.portfolio import Entry, race
from fakes import RuleTarget, learner, sentiment_rule, synth_task, toy_task

pytestmark = pytest.mark.usefixtures("one_thread")


def test_racing_drops_a_clearly_worse_candidate_before_its_full_dev_pass():
    task = toy_task(n_dev=16)
    task.dev = task.dev * 4  # 64 rows: 'sentiment' reads every one right, the other says 'negative' to all
    lm = RuleTarget(sentiment_rule)
    good = Entry("good", TextPrompt(instruction="Give the sentiment."))
    bad = Entry("bad", TextPrompt(instruction="Answer."))
    race([good, bad], lm, task, chunk=16)
    assert good.dev == 1.0 and len(good.scores) == 64
    assert bad.dropped_at is not None and len(bad.scores) < 64  # never scored on all of dev


def test_a_close_candidate_is_not_dropped():
    task = toy_task(n_dev=16)
    lm = RuleTarget(sentiment_rule)
    a = Entry("a", TextPrompt(instruction="Give the sentiment."))
    b = Entry("b", TextPrompt(instruction="Sentiment?"))
    race([a, b], lm, task, chunk=4)
    assert a.dropped_at is None and b.dropped_at is None and len(b.scores) == len(task.dev)


def test_auto_picks_at_least_the_best_baseline_and_reports_the_leaderboard(tmp_path):
    lm, task = learner(), synth_task()
    r = promptlift.optimize("auto", lm, task, out=tmp_path / "run", progress=False, shots="2,4", tokens=3,
                            epochs=1)
    info = r.details["auto"]
    board = {row["name"]: row for row in info["leaderboard"]}
    full = [row for row in board.values() if row["dropped_at"] is None]
    best_base = max(row["dev"] for row in full if row["baseline"])
    assert board[info["chosen"]]["dev"] >= best_base
    assert r.dev.accuracy >= best_base - 1e-9
    assert {"zero-shot", "zero-shot (no instruction)", "few-shot k=2", "few-shot k=4"} <= set(board)
    gate = info["gate"]
    assert gate["baseline"] == info["best_baseline"] and -1 <= gate["ci95"][0] <= gate["gain"] <= gate["ci95"][1]
    assert gate["gain"] == pytest.approx(r.test.accuracy - gate["baseline_score"])
