"""The one budget ledger: `--budget` parsing (time= included), one budget object in `optimize --json` for every
family, a time= stop that keeps the best prompt and resumes with the time already spent, the caller's model
left as it was."""

from __future__ import annotations

import json

import pytest

import promptlift
from fakes import make_tiny_lm, synth_task
from promptlift.artifacts import load
from promptlift.cli import main
from promptlift.errors import BudgetExceeded, ConfigError
from promptlift.lm import budget as budget_mod
from promptlift.lm.budget import LIMITS, Budget, ledger_of

pytestmark = pytest.mark.usefixtures("one_thread")


# --- parsing and the ledger itself -----------------------------------------------------------------
def test_time_limits_parse_to_seconds_and_bad_ones_are_one_line_config_errors():
    assert Budget.parse("time=20m").limits == {"time": 1200.0}
    assert Budget.parse("time=90s,calls=5").limits == {"time": 90.0, "calls": 5.0}
    assert Budget.parse("time=1.5h").limits["time"] == 5400.0 and Budget.parse("time=30").limits["time"] == 30.0
    for bad in ("time=abc", "time=0", "time=-3m", "time=5d", "calls=-1", "forward=nan"):
        with pytest.raises(ConfigError) as e:
            Budget.parse(bad)
        assert "\n" not in str(e.value) and bad.split("=")[0] in str(e.value)


class Clock:
    """A wall clock that moves `step` seconds every time it is read."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def perf_counter(self) -> float:
        self.now += self.step
        return self.now


def test_the_clock_runs_only_while_the_ledger_runs_and_a_time_limit_stops_the_next_charge(monkeypatch):
    monkeypatch.setattr(budget_mod, "_time", Clock(1.0))
    b = Budget.parse("time=5s")
    b.charge(forward=1)  # outside a run: no time passes
    assert b.elapsed() == 0.0
    with b.running(), pytest.raises(BudgetExceeded, match="time"):
        for _ in range(10):
            b.charge(forward=1)
    assert 5.0 < b.seconds < 8.0 and b.exhausted() == "time"
    resumed = Budget.parse("time=5s")
    resumed.add(b.counters())  # what spend.json carries to a resumed run
    assert resumed.seconds == pytest.approx(b.seconds, abs=1e-3)
    with pytest.raises(BudgetExceeded):
        resumed.check()


def test_a_model_charges_the_running_ledger_not_its_own_budget():
    lm = make_tiny_lm()
    own = lm.budget
    run = Budget()
    with run.running():
        assert ledger_of(lm) is run
        lm.generate(["hello"], promptlift.GenerationConfig(max_tokens=2))
    assert run.forward > 0 and run.calls == 1 and own.forward == 0 and lm.budget is own


# --- one budget object in optimize --json, every family ------------------------------------------
FAMILIES = {  # one method of each family, with options that make the run tiny
    "baseline": ["few-shot", "--shots", 1, "--trials", 2],
    "hard": ["autoprompt", "--steps", 1, "--tokens", 2, "--candidates", 2, "--batch-size", 4],
    "blackbox": ["bbt", "--steps", 1, "--popsize", 3, "--dim", 4, "--tokens", 2],
    "llm": ["ape", "--subsets", 1, "--samples-per-subset", 1, "--pairs", 2, "--dev-examples", 4],
    "soft": ["prompt-tuning", "--epochs", 1, "--tokens", 2, "--batch-size", 8],
}
BIG = "calls=100000,tokens=1e9,forward=100000,backward=100000,time=1h"


def write_task(d, n: int = 8):
    d.mkdir(parents=True, exist_ok=True)
    words = {"pos": ["great", "good"], "neg": ["bad", "boring"]}
    for split in ("train", "dev", "test"):
        rows = [{"text": f"the movie was {words[lab][i % 2]} {i}", "label": lab}
                for i, lab in enumerate(["pos", "neg"] * (n // 2))]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def optimize_json(capsys, args) -> tuple[int, dict, str]:
    capsys.readouterr()
    code = main([str(a) for a in ["optimize", *args, "--json"]])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


def test_every_family_reports_the_same_budget_object_in_optimize_json(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROMPTLIFT_NO_CACHE", "1")
    data = write_task(tmp_path / "data")
    keys = set()
    for family, (method, *opts) in FAMILIES.items():
        out = tmp_path / family
        code, result, err = optimize_json(capsys, ["--method", method, "--model", tiny_dir, "--data", data,
                                                   "--out", out, "--budget", BIG, *opts])
        assert code == 0, f"{family}: {err}"
        b = result["budget"]
        assert set(b) == {"limits", "spent"} and b["limits"] == Budget.parse(BIG).limits
        assert set(LIMITS) <= set(b["spent"]), family
        for k, lim in b["limits"].items():
            assert 0 <= b["spent"][k] <= lim, (family, k)
        assert b["spent"]["time"] > 0 and json.loads((out / "result.json").read_text())["budget"] == b
        keys.add(frozenset(b["spent"]))
    assert len(keys) == 1  # the same keys for every family


def test_optimize_leaves_the_callers_model_as_it_was(tmp_path):
    lm = make_tiny_lm()
    own = lm.budget
    run = promptlift.optimize("prompt-tuning", lm, synth_task(), progress=False, epochs=1, tokens=2, batch_size=8,
                              budget="time=1h")
    assert run.budget["spent"]["backward"] > 0  # training spent on the run's ledger ...
    assert lm.budget is own and own.backward == 0  # ... not on the caller's model (evaluation after fit is)


# --- time= stops a search and a training run like a calls stop ------------------------------------
@pytest.mark.parametrize("method, opts", [
    ("ape", ["--subsets", 2, "--samples-per-subset", 1, "--pairs", 2, "--dev-examples", 4]),
    ("prompt-tuning", ["--epochs", 50, "--tokens", 2, "--batch-size", 4]),
])
def test_a_time_budget_stops_keeps_the_best_prompt_and_resumes_with_the_time_spent(method, opts, tiny_dir, tmp_path,
                                                                                  capsys, monkeypatch):
    monkeypatch.setenv("PROMPTLIFT_NO_CACHE", "1")
    data, out = write_task(tmp_path / "data"), tmp_path / "run"
    monkeypatch.setattr(budget_mod, "_time", Clock(1.0))  # each reading of the run's clock: a second later
    args = ["--method", method, "--model", tiny_dir, "--data", data, "--out", out, "--budget", "time=30s", *opts]
    code, result, err = optimize_json(capsys, args)
    assert code == 0, err
    lines = [x for x in err.splitlines() if "stopped at the budget" in x]  # (a search also notes its spend)
    assert len(lines) == 1 and lines[0].startswith("promptlift: stopped at the budget after "), err
    assert "error" not in err and "Traceback" not in err
    assert result["stopped"] == "budget" and result["budget"]["spent"]["time"] > 30
    assert load(out).hash == json.loads((out / "prompt.json").read_text())["sha256"]  # the best so far, written
    spent = json.loads((out / "spend.json").read_text())["seconds"]
    assert spent > 30  # the time spent survives into the run directory ...
    code, again, err = optimize_json(capsys, ["--out", out, "--resume"])
    assert code == 0, err
    assert again["stopped"] == "budget" and again["budget"]["spent"]["time"] >= spent  # ... and counts on resume
