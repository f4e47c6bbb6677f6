"""The command line end to end on the real bundled model (slow), and the listing commands."""

from __future__ import annotations

import json

import pytest

from promptlift.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


def run_json(capsys, args):
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


TOPICS = {
    "weather": ["Heavy snow expected across the north tonight", "Heatwave breaks records in the south",
                "Storm brings strong winds and flooding to the coast"],
    "food": ["Chef shares a simple recipe for tomato soup", "Bakery wins prize for its sourdough bread",
             "New restaurant serves spicy noodles downtown"],
    "sport": ["Striker scores twice in the cup final", "Tennis star wins her third title",
              "Marathon runner sets a new course record"],
    "music": ["Band announces a world tour for next summer", "Pianist releases an album of nocturnes",
              "Singer tops the charts with a new single"],
}


@pytest.mark.slow
def test_eval_json_on_a_data_directory(tmp_path, capsys):
    (tmp_path / "task.yaml").write_text(
        "name: headlines\ntype: classification\ninstruction: What is the headline about?\nlabels:\n"
        "  weather: weather and climate\n  food: food and cooking\n  sport: sports and games\n"
        "  music: music and concerts\n", encoding="utf-8")
    rows = [{"text": t, "label": lab} for i in range(3) for lab, ts in TOPICS.items() for t in ts[i:i + 1]]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    out = run_json(capsys, ["eval", "--data", tmp_path, "--limit", 8, "--json", "--predictions", preds])
    assert out["n"] == 8 and out["task"] == "headlines" and out["split"] == "test"
    assert out["model"] == "smollm2-135m"
    assert 0.0 <= out["accuracy"] <= 1.0
    lo, hi = out["ci95"]
    assert 0.0 <= lo <= out["accuracy"] <= hi <= 1.0 and hi - lo > 0.1  # n=8: a wide interval
    per = out["per_class"]
    assert set(per) <= set(TOPICS) and sum(v["support"] for v in per.values()) == 8
    assert sum(v["predicted"] for v in per.values()) == 8
    recs = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["input"] for r in recs] == [r["text"] for r in rows[:8]]  # the first 8, in order
    assert out["accuracy"] == pytest.approx(sum(r["score"] for r in recs) / 8)
    assert all(set(r["scores"]) == set(TOPICS) for r in recs)


@pytest.mark.slow
def test_optimize_writes_run_and_eval_reproduces_it(tmp_path, capsys):
    run = tmp_path / "run"
    s = run_json(capsys, ["optimize", "--method", "few-shot", "--data", "demo:demo_topics", "--out", run,
                          "--json", "-o", "shots=2"])
    for name in ("config.json", "prompt.json", "result.json", "predictions_test.jsonl"):
        assert (run / name).is_file(), name
    if (run / "history.jsonl").exists():  # few-shot with one trial logs nothing; if it does, it is JSONL
        for line in (run / "history.jsonl").read_text().splitlines():
            json.loads(line)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"] == "few-shot" and cfg["options"]["shots"] == 2 and cfg["model"] == "smollm2-135m"
    result = json.loads((run / "result.json").read_text())
    assert result == json.loads(json.dumps(s))  # --json prints result.json
    assert result["method"] == "few-shot" and result["model"] == "smollm2-135m"
    assert result["dev"]["n"] == 40 and result["test"]["n"] == 120
    for split in ("dev", "test"):
        assert 0.0 <= result[split]["accuracy"] <= 1.0
    assert isinstance(result["cost"], dict) and result["seconds"] > 0
    prompt = json.loads((run / "prompt.json").read_text())
    assert len(prompt["demos"]) == 2 and prompt["method"] == "few-shot"
    assert prompt["model"].startswith("smollm2-135m@sha256:")  # the weights' content identity

    again = run_json(capsys, ["eval", "--data", "demo:demo_topics", "--prompt", run, "--json"])
    assert again["n"] == 120
    assert again["accuracy"] == pytest.approx(result["test"]["accuracy"])


def test_methods_and_models_json(capsys):
    methods = run_json(capsys, ["methods", "--json"])
    names = {m["name"] for m in methods}
    assert {"zero-shot", "few-shot", "calibrated", "zero-shot-cot"} <= names
    fs = next(m for m in methods if m["name"] == "few-shot")
    assert {o["name"] for o in fs["options"]} >= {"shots", "selection"}
    assert fs["family"] == "baseline" and fs["doc"]
    models = run_json(capsys, ["models", "--json"])
    sm = next(m for m in models if m["alias"] == "smollm2-135m")
    assert sm["default"] is True and "installed" in sm and "cached" in sm
