"""`distill` (`promptlift optimize --method distill --teacher RUN`, alias `promptlift distill RUN`): a prefix
prompt (which vLLM cannot take) becomes an input-level soft prompt that answers like it, trained by the one
trainer on unlabelled inputs; on a tiny model built in the test."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

import promptlift
from promptlift.artifacts import PrefixPrompt, SoftPrompt, load
from promptlift.errors import ConfigError
from promptlift.task import Example, Task
from fakes import make_tiny_lm  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def write_task(d) -> Task:
    """A learnable sentiment task with one-token label words, as files (a run records where its data is)."""
    rng = random.Random(0)
    words = {"good": ["great", "wonderful", "good", "hot", "big"], "bad": ["terrible", "boring", "bad", "cold"]}
    rows = []
    for i in range(64):
        lab = "good" if i % 2 else "bad"
        rows.append({"text": f"the movie was {rng.choice(words[lab])} {rng.choice(['news', 'sports', 'film'])}",
                     "label": lab})
    d.mkdir()
    for split, part in (("train", rows[:32]), ("dev", rows[32:56]), ("test", rows[56:])):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return Task.from_dir(d, instruction="Classify the input.")


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm(seed=0, init_range=0.5)  # a peaked model: a prefix moves its label distribution a lot


def test_distilled_soft_prompt_agrees_with_its_prefix_teacher(tmp_path, lm, monkeypatch, capsys):
    from promptlift import cli
    from promptlift.serve.apply import check_http

    task = write_task(tmp_path / "data")
    teacher_run = tmp_path / "teacher"
    promptlift.optimize("p-tuning-v2", lm, task, out=teacher_run, progress=False, seed=0, epochs=15, tokens=4,
                        lr=0.03, eval_splits=("dev",))
    teacher = load(teacher_run)
    assert isinstance(teacher, PrefixPrompt)
    monkeypatch.setattr(cli, "load_lm", lambda *a, **k: lm)  # the tiny model stands for the recorded one
    out = tmp_path / "student"
    assert cli.main(["distill", str(teacher_run), "--out", str(out), "--tokens", "4", "-o", "epochs=10",
                     "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    result = json.loads((out / "result.json").read_text())
    assert shown == result
    student = load(out)
    assert isinstance(student, SoftPrompt) and student.embeds.shape == (4, lm.hidden_size)
    assert result["student"]["sha256"] == student.hash and result["teacher"]["sha256"] == teacher.hash
    assert student.method == "distill" and student.instruction == teacher.instruction
    t_dev, s_dev = result["teacher"]["dev"], result["student"]["dev"]
    assert {"accuracy", "n", "ci95"} <= set(t_dev) and {"accuracy", "n", "ci95"} <= set(s_dev)
    assert result["kept"] == pytest.approx(s_dev["accuracy"] / t_dev["accuracy"])
    # most dev inputs get the teacher's answer, far above chance: the teacher's answers are mixed
    t_preds = [p["pred"] for p in promptlift.evaluate(lm, task, teacher, split="dev", progress=False).predictions]
    s_preds = [p["pred"] for p in promptlift.evaluate(lm, task, student, split="dev", progress=False).predictions]
    assert min(Counter(t_preds).values()) >= 0.3 * len(t_preds) and len(set(t_preds)) == 2
    agreement = sum(a == b for a, b in zip(t_preds, s_preds)) / len(t_preds)
    assert agreement == result["agreement_dev"] >= 0.8
    assert [json.loads(x)["pred"] for x in (out / "predictions_dev.jsonl").read_text().splitlines()] == s_preds
    assert (out / "config.json").exists() and (out / "history.jsonl").read_text().count("dev_score") == 10
    # what it is for: vLLM takes the student as prompt_embeds, not the teacher
    check_http(student, prompt_embeds=True, where="route")
    with pytest.raises(ConfigError, match="promptlift distill"):
        check_http(teacher, prompt_embeds=True, where="route")
    # an existing run is not replaced silently; unknown options fail before any work
    assert cli.main(["distill", str(teacher_run), "--out", str(out), "--tokens", "4"]) == 2
    assert cli.main(["distill", str(teacher_run), "--out", str(tmp_path / "x"), "--bogus", "1"]) == 2
    assert "no option --bogus" in capsys.readouterr().err


def test_no_gold_label_is_read(tmp_path, lm):
    """Scrambling the train and dev labels changes nothing in the student: it learns from the teacher only."""
    task = write_task(tmp_path / "data")
    teacher = promptlift.optimize("p-tuning-v2", lm, task, progress=False, seed=0, epochs=4, tokens=4, lr=0.03,
                                  eval_splits=()).prompt
    flip = {"good": "bad", "bad": "good"}
    scrambled = Task(name=task.name, kind=task.kind, labels=task.labels, instruction=task.instruction,
                     train=[Example(e.input, flip[e.output]) for e in task.train],
                     dev=[Example(e.input, flip[e.output]) for e in task.dev])
    a = promptlift.optimize("distill", lm, task, teacher=teacher, progress=False, tokens=3, epochs=2)
    b = promptlift.optimize("distill", lm, scrambled, teacher=teacher, progress=False, tokens=3, epochs=2)
    assert torch.equal(a.prompt.embeds, b.prompt.embeds) and a.details["agreement_dev"] == b.details["agreement_dev"]
    teacher_dev = lambda r: r.details["teacher"]["dev"]["accuracy"]  # noqa: E731
    assert teacher_dev(a) == pytest.approx(1 - teacher_dev(b))  # gold is only for the report


def test_generation_teacher_is_matched_along_its_own_answers(tmp_path, lm):
    exs = [Example(x, y) for x, y in [("hot", "cold"), ("up", "down"), ("big", "small"), ("good", "bad")] * 2]
    task = Task(name="g", kind="generation", train=exs[:6], dev=exs[6:], instruction="Give the antonym.")
    g = torch.Generator().manual_seed(0)
    shape = (lm.num_layers, lm.num_kv_heads, 3, lm.head_dim)
    teacher = PrefixPrompt(instruction="Give the antonym.", keys=torch.randn(*shape, generator=g),
                           values=torch.randn(*shape, generator=g), hidden_size=lm.hidden_size,
                           num_layers=lm.num_layers, model=lm.model_id)
    r = promptlift.optimize("distill", lm, task, teacher=teacher, out=tmp_path / "run", progress=False, tokens=3,
                            epochs=6, lr=0.1, answer_tokens=4)
    assert isinstance(r.prompt, SoftPrompt) and r.details["student"]["dev"] is not None
    assert r.details["agreement_dev"] is None
    epochs = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()
              if "dev_score" in x]
    assert len(epochs) == 6 and epochs[-1]["loss"] < epochs[0]["loss"]  # the KL to the teacher goes down


def test_optimize_method_distill_is_the_run_the_alias_makes(tmp_path, lm, monkeypatch, capsys):
    """`optimize --method distill --teacher RUN` and `distill RUN` make the same student; it resumes like any run."""
    from promptlift import cli

    task = write_task(tmp_path / "data")
    teacher_run = tmp_path / "teacher"
    promptlift.optimize("p-tuning-v2", lm, task, out=teacher_run, progress=False, seed=0, epochs=3, tokens=4,
                        lr=0.03, eval_splits=())
    monkeypatch.setattr(cli, "load_lm", lambda *a, **k: lm)
    opts = ["--tokens", "3", "--epochs", "2"]
    assert cli.main(["optimize", "--method", "distill", "--teacher", str(teacher_run), "--data", str(tmp_path / "data"),
                     "--out", str(tmp_path / "a"), *opts, "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert cli.main(["distill", str(teacher_run), "--out", str(tmp_path / "b"), *opts, "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert load(tmp_path / "a").hash == load(tmp_path / "b").hash == a["student"]["sha256"] == b["student"]["sha256"]
    assert a["teacher"]["sha256"] == b["teacher"]["sha256"] and a["teacher"]["path"] == str(teacher_run)
    assert a["teacher"]["dev"]["accuracy"] == b["teacher"]["dev"]["accuracy"]
    assert a["kept"] == b["kept"] and a["agreement_dev"] == b["agreement_dev"] is not None
    assert a["method"] == "distill" and a["test"] is not None and a["dev"] == a["student"]["dev"]
    assert (tmp_path / "a" / "spend.json").exists() and (tmp_path / "a" / "checkpoint").is_dir()
    assert cli.main(["optimize", "--method", "distill", "--teacher", str(teacher_run), "--data", str(tmp_path / "data"),
                     "--out", str(tmp_path / "a"), *opts, "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["student"]["sha256"] == a["student"]["sha256"]
    assert cli.main(["methods", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert "teacher" in [o["name"] for o in listed["distill"]["options"]]


def test_a_missing_or_malformed_teacher_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from promptlift import cli

    monkeypatch.setattr(cli, "load_lm", lambda *a, **k: pytest.fail("the model must not load"))
    for teacher, says in ((str(tmp_path / "nowhere"), "no such run directory"), ("shots:x", "shots:N"), (None, "required")):
        args = ["optimize", "--method", "distill", "--data", "demo:demo_topics", "--out", str(tmp_path / "r")]
        assert cli.main(args + (["--teacher", teacher] if teacher else [])) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1


def _consistent(d: dict) -> None:
    """The compression report: kept share of gain, prompt tokens and the cheap text alternative agree."""
    zero, t, s = d["zero_shot"], d["teacher"], d["student"]
    for split in ("dev", "test"):
        gain = t[split]["accuracy"] - zero[split]
        want = None if gain <= 0 else pytest.approx((s[split]["accuracy"] - zero[split]) / gain, abs=1e-4)
        assert d["kept_gain"][split] == want
        assert s[split]["prompt_tokens"] == s["prompt_tokens"] and t[split]["prompt_tokens"] == t["prompt_tokens"]
    assert d["prompt_tokens_ratio"] == pytest.approx(t["prompt_tokens"] / s["prompt_tokens"], abs=0.01)
    cheap = d["cheap_text"]
    assert cheap["demos"] >= 1 and cheap["fits"] == (cheap["prompt_tokens"] <= s["prompt_tokens"])
    assert set(cheap["kept_gain"]) == {"dev", "test"} and 0 <= cheap["dev"] <= 1


def test_a_long_text_teacher_is_compressed_and_the_report_says_how_much_it_kept(tmp_path, lm):
    """shots:8 -> 3 vectors: the student's prompt tokens are 3 plus its instruction's, far fewer than the teacher's."""
    from promptlift.artifacts import TextPrompt

    task = write_task(tmp_path / "data")
    r = promptlift.optimize("distill", lm, task, teacher="shots:8", out=tmp_path / "run", progress=False, tokens=3,
                            epochs=2)
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    _consistent(d)
    instr = promptlift.evaluate(lm, task, TextPrompt(instruction=task.instruction), split="dev",
                                progress=False).prompt_tokens
    assert d["student"]["prompt_tokens"] == 3 + instr == d["zero_shot"]["prompt_tokens"] + 3
    assert d["teacher"]["prompt_tokens"] > 4 * d["student"]["prompt_tokens"]
    assert d["cheap_text"]["demos"] < 8 and r.details["kept_gain"] == d["kept_gain"]


@pytest.mark.parametrize("kind", ["calibrated", "mixture"])
def test_any_one_stage_artifact_can_teach(tmp_path, lm, kind):
    from promptlift.artifacts import Calibrated, MixturePrompt, TextPrompt

    task = write_task(tmp_path / "data")
    if kind == "calibrated":
        teacher = Calibrated(inner=TextPrompt(instruction=task.instruction, demos=task.train[:4]),
                             content_free=["N/A", "[MASK]"])
    else:
        h = lm.hidden_size
        members = [SoftPrompt(embeds=torch.randn(2, h, generator=torch.Generator().manual_seed(i)), hidden_size=h,
                              instruction=task.instruction, model=lm.model_id) for i in range(2)]
        teacher = MixturePrompt(members=members, weights=torch.zeros(2), model=lm.model_id)
    r = promptlift.optimize("distill", lm, task, teacher=teacher, progress=False, tokens=2, epochs=1)
    assert r.details["teacher"]["type"] == teacher.type
    _consistent(json.loads(json.dumps(r.details | {"dev": r.dev.to_dict()})))
