"""A run killed with SIGKILL resumes: training loses at most the epoch it was in and ends with the same
prompt as an uninterrupted run; an evaluation killed part way keeps what it had written."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from fakes import REPO
from promptlift.artifacts import load

CLI = [sys.executable, "-m", "promptlift.cli"]


def write_task(d: Path, n_train: int, n_test: int) -> Path:
    rng = random.Random(0)
    words = {"pos": ["great", "wonderful", "good"], "neg": ["terrible", "boring", "bad"]}

    def rows(n):
        out = []
        for i in range(n):
            lab = ["pos", "neg"][i % 2]
            out.append({"text": f"the movie was {rng.choice(words[lab])} {i}", "label": lab})
        return out

    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", 8), ("test", n_test)):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n)))
    return d


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PROMPTLIFT_NO_CACHE="1", TOKENIZERS_PARALLELISM="false")
    e["PYTHONPATH"] = str(REPO / "src")
    return e


def run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + [str(a) for a in args], env=env(), capture_output=True, text=True, timeout=300, **kw)


def kill_when(args, ready, limit_s: float = 240) -> None:
    """Start the CLI, SIGKILL it as soon as `ready()` is true."""
    p = subprocess.Popen(CLI + [str(a) for a in args], env=env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        while not ready():
            assert p.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() - t0 < limit_s
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()


def history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            out.append(json.loads(line))
    return out


def test_training_killed_mid_epoch_resumes_to_the_same_prompt(tiny_dir, tmp_path):
    data = write_task(tmp_path / "data", 160, 8)
    common = ["optimize", "--method", "prompt-tuning", "--model", tiny_dir, "--data", data, "--epochs", 3,
              "--tokens", 2, "--batch-size", 2, "--seed", 0, "--json"]
    full = run(common + ["--out", tmp_path / "full"])
    assert full.returncode == 0, full.stderr

    killed = tmp_path / "killed"
    # kill in the middle of epoch 1 (epoch 0 is checkpointed by then)
    kill_when(common + ["--out", killed],
              lambda: any(r.get("epoch") == 1 and "dev_score" not in r and r.get("step", 0) >= 100
                          for r in history(killed)))
    assert not (killed / "result.json").exists()
    assert (killed / "checkpoint" / "state.pt").exists()
    resumed = run(common + ["--out", killed, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "at epoch 1" in resumed.stderr  # lost at most epoch 1

    a, b = load(tmp_path / "full"), load(killed)
    assert torch.allclose(a.embeds, b.embeds, atol=1e-6)
    steps = [r["step"] for r in history(killed) if "dev_score" not in r and "step" in r]
    assert steps == sorted(set(steps)), "a resumed run's history has no duplicated lines"
    assert [r["dev_score"] for r in history(killed) if "dev_score" in r] == \
           [r["dev_score"] for r in history(tmp_path / "full") if "dev_score" in r]


def test_evaluation_killed_part_way_resumes_without_redoing_work(tiny_dir, tmp_path):
    data = write_task(tmp_path / "data", 8, 600)
    preds = tmp_path / "preds.jsonl"
    common = ["eval", "--model", tiny_dir, "--data", data, "--chunk-size", 20, "--batch-size", 4, "--json"]
    kill_when(common + ["--predictions", preds],
              lambda: preds.exists() and preds.read_text().count("\n") >= 40)
    written = preds.read_text().count("\n")
    assert 40 <= written < 600
    resumed = run(common + ["--predictions", preds, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["resumed"] >= 40 and out["n"] == 600
    full = run(common + ["--predictions", tmp_path / "full.jsonl"])
    assert full.returncode == 0, full.stderr
    got = [json.loads(x) for x in preds.read_text().splitlines()]
    want = [json.loads(x) for x in (tmp_path / "full.jsonl").read_text().splitlines()]
    assert [g["input"] for g in got] == [w["input"] for w in want]
    assert [g["pred"] for g in got] == [w["pred"] for w in want]
    assert json.loads(full.stdout)["accuracy"] == out["accuracy"]
    again = run(common + ["--predictions", preds])  # neither --resume nor --overwrite: refused, nothing lost
    assert again.returncode == 2 and "--resume" in again.stderr and preds.read_text().count("\n") == 600


def test_ctrl_c_prints_where_it_stopped_and_the_resume_command_that_works(tiny_dir, tmp_path):
    data = write_task(tmp_path / "data", 160, 8)
    out = tmp_path / "run"
    args = ["optimize", "--method", "prompt-tuning", "--model", tiny_dir, "--data", data, "--epochs", 3,
            "--tokens", 2, "--batch-size", 2, "--out", out, "--json"]
    p = subprocess.Popen(CLI + [str(a) for a in args], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    t0 = time.monotonic()
    try:
        while not any("dev_score" in r for r in history(out)):  # epoch 0 done and checkpointed
            assert p.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() - t0 < 240
            time.sleep(0.02)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if "interrupted" in x)
    assert "after step" in line and "epoch 1 done" in line, line
    command = line.split("continue with: ", 1)[1]
    assert command.endswith(f" optimize --out {out} --resume")  # `promptlift`, or the path to it when not on PATH
    # the printed command, as printed: no option retyped, the stored ones are used
    resumed = run(command.split()[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["options"]["epochs"] == 3 and result["config"]["model"] == str(tiny_dir)
