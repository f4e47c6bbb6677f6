"""What a newcomer meets in the first hour: a budget stop that is a normal end, errors found from the files
before any model loads, resume without retyping, a short method list, "did you mean", stratified --limit."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptlift.artifacts import SoftPrompt, TextPrompt
from promptlift.cli import main
from promptlift.task import Example

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail if a local model's weights are loaded: these errors must come from the files first."""
    import promptlift.lm.hf as hf

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the error was found")

    monkeypatch.setattr(hf.HFModel, "__init__", refuse)


def write_task(d: Path, n: int = 16, first_one_class: bool = False) -> Path:
    rng = random.Random(0)
    words = {"pos": ["great", "wonderful", "good"], "neg": ["terrible", "boring", "bad"]}
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        labels = ["pos"] * (n // 2) + ["neg"] * (n - n // 2) if first_one_class and split == "test" else \
            [["pos", "neg"][i % 2] for i in range(n)]
        rows = [{"text": f"the movie was {rng.choice(words[lab])} {i}", "label": lab} for i, lab in enumerate(labels)]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def cli(capsys, args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --- 3. a budget stop is a normal end --------------------------------------------------------------

def test_a_budget_stop_exits_0_with_one_line_and_keeps_the_best(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROMPTLIFT_NO_CACHE", "1")
    data, out = write_task(tmp_path / "data"), tmp_path / "run"
    code, stdout, err = cli(capsys, ["optimize", "--method", "few-shot", "--model", tiny_dir, "--data", data,
                                     "--out", out, "--shots", 1, "--trials", 6, "--budget", "forward=6", "--json"])
    assert code == 0, err
    assert "error" not in err and "Traceback" not in err
    lines = [x for x in err.splitlines() if "budget" in x]
    assert len(lines) == 1 and lines[0].startswith("promptlift: stopped at the budget after "), err
    assert lines[0].endswith(f"candidates; best kept in {out}") or lines[0].endswith(f"candidate; best kept in {out}")
    result = json.loads((out / "result.json").read_text())
    assert result["stopped"] == "budget" and json.loads(stdout) == result
    scored = [r for r in map(json.loads, (out / "history.jsonl").read_text().splitlines()) if "dev_score" in r]
    assert f"after {len(scored)} candidate" in lines[0] and 1 <= len(scored) < 6


def test_a_budget_too_small_for_any_prompt_exits_3(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROMPTLIFT_NO_CACHE", "1")
    data, out = write_task(tmp_path / "data"), tmp_path / "run"
    code, _, err = cli(capsys, ["optimize", "--method", "few-shot", "--model", tiny_dir, "--data", data,
                                "--out", out, "--shots", 1, "--trials", 6, "--budget", "forward=0"])
    assert code == 3, err
    assert err.strip().splitlines()[-1].startswith("promptlift: error: budget forward=0 is too small")
    assert (out / "prompt.json").exists()  # the starting prompt is still written


# --- 6. resume reads the stored configuration; a mismatch names the keys -----------------------------

def test_resume_needs_no_options_and_a_mismatch_names_the_differing_keys(tiny_dir, tmp_path, capsys):
    data, out = write_task(tmp_path / "data"), tmp_path / "run"
    code, _, err = cli(capsys, ["optimize", "--method", "few-shot", "--model", tiny_dir, "--data", data,
                                "--out", out, "--shots", 2, "--trials", 2, "--seed", 1])
    assert code == 0, err
    first = json.loads((out / "result.json").read_text())
    code, _, err = cli(capsys, ["optimize", "--out", out, "--resume", "--json"])
    assert code == 0, err
    again = json.loads((out / "result.json").read_text())
    assert again["config"]["options"]["shots"] == 2 and again["seed"] == 1
    assert again["test"]["accuracy"] == first["test"]["accuracy"]
    g = first["gain"]  # every run: the gain over zero-shot on the same test rows, with its paired test
    assert g["baseline"] == "zero-shot" and g["n"] == first["test"]["n"] and g["test"] == "mcnemar-exact"
    assert g["gain"] == pytest.approx(first["test"]["accuracy"] - g["baseline_score"])
    assert g["ci95"][0] <= g["gain"] <= g["ci95"][1] and 0 <= g["p_value"] <= 1

    code, _, err = cli(capsys, ["optimize", "--out", out, "--resume", "--shots", 3, "--seed", 2])
    assert code == 2
    line = err.strip()
    assert len(line.splitlines()) == 1 and "options.shots '2' -> '3'" in line and "seed 1 -> 2" in line, line
    assert "{" not in line  # the differing keys, not two dumped dicts


def test_resume_without_a_run_and_a_finished_run_without_resume_are_refused_first(tmp_path, capsys,
                                                                                  no_model_load):
    code, _, err = cli(capsys, ["optimize", "--out", tmp_path / "none", "--resume"])
    assert code == 2 and "no run to resume" in err
    run = tmp_path / "run"
    run.mkdir()
    (run / ".promptlift-run").write_text("{}")
    (run / "config.json").write_text(json.dumps({"method": "few-shot", "model": "x", "task": "t"}))
    code, _, err = cli(capsys, ["optimize", "--method", "few-shot", "--data", "demo:demo_topics", "--out", run])
    assert code == 2 and "already holds a run" in err and "--resume" in err


# --- 7. errors found from the files before the model loads ---------------------------------------

def test_a_soft_prompt_made_on_another_model_is_refused_before_loading(tiny_dir, tmp_path, capsys,
                                                                      no_model_load):
    import torch

    p = SoftPrompt(embeds=torch.zeros(2, 32), hidden_size=32, num_layers=2, model="smollm2-135m@sha256:0123")
    path = p.save(tmp_path / "soft")
    t0 = time.perf_counter()
    for args in (["eval", "--data", "demo:demo_topics", "--prompt", path, "--model", tiny_dir],
                 ["generate", "hello", "--prompt", path, "--model", tiny_dir]):
        code, _, err = cli(capsys, args)
        assert code == 2, err
        assert "made for model 'smollm2-135m@sha256:0123'" in err and "--model smollm2-135m" in err, err
        assert len(err.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 10


def test_a_label_set_mismatch_is_refused_before_loading(tmp_path, capsys, no_model_load):
    path = TextPrompt(instruction="Classify.", demos=[Example("the movie was great", "pos")]).save(tmp_path / "p")
    code, _, err = cli(capsys, ["eval", "--data", "demo:demo_topics", "--prompt", path])
    assert code == 2, err
    assert "label(s) 'pos'" in err and "another label set" in err and len(err.strip().splitlines()) == 1


def test_a_run_directory_in_use_names_the_pid_before_loading(tmp_path, capsys, no_model_load):
    from promptlift.runs import RunDir

    run = tmp_path / "run"
    RunDir(run).close()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from promptlift.runs import RunDir; "
        "r = RunDir(sys.argv[2]); print('held', flush=True); time.sleep(60)"),
        str(Path(__file__).resolve().parents[1] / "src"), str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = cli(capsys, ["optimize", "--method", "few-shot", "--data", "demo:demo_topics", "--out", run,
                                    "--overwrite"])
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and f"(pid {holder.pid})" in err and "another promptlift process" in err, err


# --- 8. papercuts -------------------------------------------------------------------------------

def test_methods_lists_one_line_per_method_and_details_for_one(capsys):
    from promptlift.registry import list_methods

    code, out, _ = cli(capsys, ["methods"])
    assert code == 0
    lines = [x for x in out.splitlines() if x.strip()]
    assert len(lines) == len(list_methods()) + 1 and "promptlift methods NAME" in lines[-1]
    assert not any(x.lstrip().startswith("--") for x in lines)
    code, out, _ = cli(capsys, ["methods", "few-shot"])
    assert code == 0 and "--shots INT" in out and "--selection" in out


def test_a_misspelled_method_gets_a_suggestion(tmp_path, capsys, no_model_load):
    code, _, err = cli(capsys, ["optimize", "--method", "promt-tuning", "--data", "demo:demo_topics",
                                "--out", tmp_path / "r"])
    assert code == 2 and "did you mean 'prompt-tuning'?" in err
    code, _, err = cli(capsys, ["methods", "few-shoot"])
    assert code == 2 and "did you mean 'few-shot'" in err


def test_limit_with_stratified_sample_and_a_warning_for_one_class(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROMPTLIFT_NO_CACHE", "1")
    data = write_task(tmp_path / "data", n=16, first_one_class=True)  # test: 8 pos rows, then 8 neg rows
    code, out, err = cli(capsys, ["eval", "--model", tiny_dir, "--data", data, "--limit", 6, "--json"])
    assert code == 0, err
    assert json.loads(out)["n"] == 6
    assert "warning: the 6 rows of test hold one label only ('pos')" in err and "--sample stratified" in err
    runs = []
    for _ in range(2):
        preds = tmp_path / f"p{len(runs)}.jsonl"
        code, out, err = cli(capsys, ["eval", "--model", tiny_dir, "--data", data, "--limit", 6, "--sample",
                                      "stratified", "--seed", 3, "--json", "--predictions", preds])
        assert code == 0 and "warning" not in err, err
        runs.append([json.loads(x)["input"] for x in preds.read_text().splitlines()])
        assert {r["support"] for r in json.loads(out)["per_class"].values()} == {3}
    assert runs[0] == runs[1]  # seeded
    code, _, err = cli(capsys, ["eval", "--data", data, "--limit", 6, "--sample", "random"])
    assert code == 2 and "--sample" in err


# --- 4. proof of the gain: a paired test on the same rows --------------------------------------------

def test_paired_gain_mcnemar_exact_on_a_constructed_case():
    from promptlift.metrics import describe_gain, paired_gain

    # 30 rows: 8 only the new prompt gets right, 2 only the old one, 12 both, 8 neither
    before = [0] * 8 + [1] * 2 + [1] * 12 + [0] * 8
    after = [1] * 8 + [0] * 2 + [1] * 12 + [0] * 8
    g = paired_gain(before, after)
    assert g["test"] == "mcnemar-exact" and g["n"] == 30
    assert g["gain"] == pytest.approx(0.2)
    assert g["p_value"] == pytest.approx(112 / 1024)  # 2 * P(Binomial(10, 1/2) <= 2)
    half = (1.959963984540054 * (10 - 36 / 30) ** 0.5 + 1) / 30
    assert g["ci95"] == pytest.approx([0.2 - half, 0.2 + half])
    assert g["ci95"][0] < 0 and not g["significant"]
    assert "not significant" in describe_gain(g) and "+0.200" in describe_gain(g)

    g = paired_gain([0] * 10 + [1] * 10, [1] * 20)  # 10 wins, no loss
    assert g["p_value"] == pytest.approx(2 / 1024) and g["significant"] and g["ci95"][0] > 0
    assert "significant at 5%" in describe_gain(g)
    assert paired_gain([1, 0], [1, 0])["p_value"] == 1.0  # no discordant pair


def test_paired_gain_bootstrap_on_graded_scores():
    from promptlift.metrics import paired_gain

    before = [0.2, 0.5, 0.4, 0.9, 0.3] * 8
    g = paired_gain(before, [b + 0.1 for b in before])  # every row gains exactly 0.1
    assert g["test"] == "paired-bootstrap"
    assert g["gain"] == pytest.approx(0.1) and g["ci95"] == pytest.approx([0.1, 0.1]) and g["p_value"] == 0.0
    g = paired_gain(before, list(reversed(before)))  # the same scores shuffled: no gain
    assert g["ci95"][0] < 0 < g["ci95"][1] and not g["significant"]


def test_an_llm_method_on_a_local_target_says_to_pass_a_stronger_optimizer(tmp_path, capsys, no_model_load):
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["optimize", "--method", "opro", "--data", "demo:demo_topics", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert "asks the target model smollm2-135m to write prompts for itself" in err
    assert "--optimizer-model openai:NAME --optimizer-base-url URL" in err
