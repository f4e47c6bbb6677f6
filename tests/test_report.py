"""The HTML report: table, embedded plots, escaping, and a clear error for a bad run dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptlift.errors import DataError
from promptlift.report import load_run, split_metric, write_report


def _make_run(root: Path, name: str, *, method: str, test_acc: float, config_extra: dict | None = None,
              with_loss: bool = True) -> Path:
    d = root / name
    d.mkdir(parents=True)
    config = {"method": method, "model": "smollm2-135m", "task": "sst2", "lr": 0.003}
    config.update(config_extra or {})
    (d / "config.json").write_text(json.dumps(config))
    rows = []
    for step in range(0, 50, 10):
        row = {"step": step, "dev_score": 0.5 + step / 200, "calls": step, "seconds": step * 0.1}
        if with_loss:
            row["loss"] = 1.0 / (step + 1)
        rows.append(row)
    (d / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = {
        "method": method, "model": "smollm2-135m", "task": "sst2",
        "dev": {"accuracy": 0.81, "n": 32, "ci95": [0.7, 0.9]},
        "test": {"accuracy": test_acc, "n": 1821, "ci95": [test_acc - 0.02, test_acc + 0.02],
                 "per_class": {"positive": {"accuracy": 0.9, "n": 912}, "negative": {"accuracy": 0.7, "n": 909}}},
        "cost": {"calls": 0, "forward": 120, "backward": 40, "prompt_tokens": 0, "completion_tokens": 0},
        "seconds": 12.3,
    }
    (d / "result.json").write_text(json.dumps(result))
    return d


def test_write_report(tmp_path: Path) -> None:
    a = _make_run(tmp_path / "runs", "fewshot-run", method="few-shot", test_acc=0.8,
                  config_extra={"note": "<script>alert('x')</script>"})
    b = _make_run(tmp_path / "runs", "prompt-tuning-run", method="prompt-tuning", test_acc=0.8734, with_loss=False)
    out = write_report([a, b], tmp_path / "out" / "report.html")

    assert out == tmp_path / "out" / "report.html"
    assert out.is_file()
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "fewshot-run" in page and "prompt-tuning-run" in page
    assert "0.800 [0.780, 0.820]" in page
    assert "0.873 [0.853, 0.893]" in page
    assert "0.810" in page  # dev accuracy
    assert page.count("data:image/png;base64,") == 2  # score plot and loss plot
    # The config string is shown escaped, never as a live tag.
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("<details>") == 2
    # Nothing is loaded from outside the page.
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_write_report_into_directory(tmp_path: Path) -> None:
    a = _make_run(tmp_path, "only", method="zero-shot", test_acc=0.5)
    out_dir = tmp_path / "site"
    out_dir.mkdir()
    out = write_report([a], out_dir)
    assert out == out_dir / "report.html" and out.is_file()


def test_generation_metric_and_no_history(tmp_path: Path) -> None:
    d = tmp_path / "gen"
    d.mkdir()
    (d / "result.json").write_text(json.dumps({
        "method": "zero-shot", "model": "m", "task": "demo_antonyms",
        "dev": {"exact_match": 0.45, "n": 20}, "test": {"exact_match": 0.525, "n": 40, "ci95": [0.37, 0.68]},
    }))
    assert split_metric(load_run(d).result["test"]) == ("exact_match", 0.525)
    page = write_report([d], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "0.525 [0.370, 0.680]" in page
    assert "data:image/png;base64," not in page  # nothing to plot


def test_missing_result_raises_data_error(tmp_path: Path) -> None:
    good = _make_run(tmp_path, "good", method="few-shot", test_acc=0.8)
    bad = tmp_path / "unfinished"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    with pytest.raises(DataError) as info:
        write_report([good, bad], tmp_path / "report.html")
    msg = str(info.value)
    assert "result.json" in msg and str(bad) in msg
    assert "\n" not in msg
    assert not (tmp_path / "report.html").exists()


def test_malformed_history_names_line(tmp_path: Path) -> None:
    d = _make_run(tmp_path, "r", method="few-shot", test_acc=0.8)
    (d / "history.jsonl").write_text('{"step": 0}\nnot json\n')
    with pytest.raises(DataError, match=r"history\.jsonl:2"):
        write_report([d], tmp_path / "report.html")
