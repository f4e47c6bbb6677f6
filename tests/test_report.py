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


def _learned_run(root: Path) -> Path:
    """A run as optimize writes it: a text prompt with demonstrations, a gain, a budget stop, per-step
    and per-epoch training rows and search rows."""
    from promptlift.artifacts import TextPrompt
    from promptlift.task import Example

    d = _make_run(root, "learned", method="opro", test_acc=0.867)
    TextPrompt(instruction="Decide if the <review> is positive.",
               demos=[Example("a joy to watch", "positive")]).save(d)
    result = json.loads((d / "result.json").read_text())
    result.update(stopped="budget", gain={"baseline": "zero-shot", "gain": 0.1, "ci95": [-0.02, 0.22],
                                          "p_value": 0.07, "n": 30, "test": "mcnemar-exact", "significant": False},
                  cost={f"counter_{i}": i for i in range(19)})
    (d / "result.json").write_text(json.dumps(result))
    rows = [{"step": s, "epoch": s // 4, "loss": 2.0 - s / 10} for s in range(1, 9)]
    rows.insert(4, {"epoch": 0, "step": 4, "loss": 1.8, "dev_score": 0.6})
    rows.append({"epoch": 1, "step": 8, "loss": 1.4, "dev_score": 0.7})
    rows += [{"step": k, "candidates": 2, "best_dev": 0.5 + k / 10, "calls": 10 * k} for k in range(3)]
    (d / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_report_shows_the_learned_prompt_the_gain_and_the_budget_stop(tmp_path: Path) -> None:
    from promptlift.report import _rows_epoch, _rows_step, _series, load_run

    d = _learned_run(tmp_path)
    page = write_report([d], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Decide if the &lt;review&gt; is positive." in page and "a joy to watch" in page
    assert "+0.100 [-0.020, +0.220] p=0.07, not significant" in page
    assert "stopped at budget" in page
    assert '<details class="cost"><summary>Cost details (19 counters)' in page  # behind a toggle
    assert page.count("data:image/png;base64,") == 4  # dev score, search over candidates and calls, loss
    run = load_run(d)
    _, steps, _ = _series(run, ("loss",), _rows_step)
    _, epochs, _ = _series(run, ("loss",), _rows_epoch)
    assert steps == list(range(1, 9)) and epochs == [4, 8]  # two series: no line joins a step to an epoch mean


@pytest.mark.skipif(not __import__("shutil").which("chromium"), reason="headless Chromium not installed")
def test_report_fits_a_1280_px_window_in_chromium(tmp_path: Path) -> None:
    import re
    import subprocess

    d = _learned_run(tmp_path)
    page = write_report([d, _make_run(tmp_path, "a-run-with-a-rather-long-directory-name", method="few-shot",
                                      test_acc=0.8)], tmp_path / "r.html").read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"  # the page plus a script that writes its scroll width into the DOM
    probe.write_text(page.replace("</body>", "<script>document.body.setAttribute('data-w', "
                                             "document.documentElement.scrollWidth)</script></body>"))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    width = int(re.search(r'data-w="(\d+)"', dom).group(1))
    assert width <= 1280, width  # no horizontal scrolling


def test_report_shows_score_against_prompt_tokens(tmp_path: Path) -> None:
    runs = []
    for name, acc, tokens in (("long-text", 0.85, 612.0), ("soft", 0.84, 19.0), ("zero", 0.7, 11.0)):
        d = _make_run(tmp_path / "runs", name, method="few-shot", test_acc=acc)
        result = json.loads((d / "result.json").read_text())
        result["test"]["prompt_tokens"] = tokens
        (d / "result.json").write_text(json.dumps(result))
        runs.append(d)
    page = write_report(runs, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Score against prompt tokens" in page and "612.0" in page and "19.0" in page
    assert page.count("data:image/png;base64,") == 3  # the score-vs-tokens scatter beside score and loss
    one = write_report(runs[:1], tmp_path / "one.html").read_text(encoding="utf-8")
    assert "Score against prompt tokens" not in one and "612.0" in one  # one run: the number, no scatter


def test_a_soft_prompt_s_nearest_tokens_are_stored_at_the_end_of_optimize_and_shown(tmp_path: Path, tiny_lm) -> None:
    import html

    import torch.nn.functional as F

    import promptlift
    from fakes import synth_task

    run = promptlift.optimize("prompt-tuning", tiny_lm, synth_task(), out=tmp_path / "soft", progress=False,
                              tokens=2, epochs=1, batch_size=8, eval_splits=("dev",))
    nearest = json.loads((tmp_path / "soft" / "result.json").read_text())["prompt_view"]["nearest_tokens"]
    assert len(nearest) == 2 and all(len(v) == 3 for v in nearest)
    table = F.normalize(tiny_lm.embedding_matrix().detach().float(), dim=-1)
    for vec, near in zip(run.prompt.embeds, nearest):
        sims = table @ F.normalize(vec.float(), dim=-1)
        best = int(sims.argmax())
        assert near[0]["token"] == tiny_lm.tokenizer.decode([best])
        assert abs(near[0]["cosine"] - float(sims[best])) < 1e-3
        assert near[0]["cosine"] >= near[1]["cosine"] >= near[2]["cosine"]
    page = write_report([tmp_path / "soft"], tmp_path / "r.html").read_text()
    assert "nearest vocabulary tokens" in page and html.escape(repr(nearest[0][0]["token"])) in page
    # a text prompt has none
    promptlift.optimize("zero-shot", tiny_lm, synth_task(), out=tmp_path / "text", progress=False, eval_splits=("dev",))
    assert "prompt_view" not in json.loads((tmp_path / "text" / "result.json").read_text())
