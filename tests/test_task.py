"""Loading tasks (directories, task.yaml, CSV/TSV, Hugging Face datasets) and the metrics."""

from __future__ import annotations

import json
import math

import pytest

from fakes import DATA
from promptlift import Task
from promptlift.errors import ConfigError, DataError
from promptlift.metrics import contains, exact_match, get_metric, normalize, summarize, token_f1, wilson_ci95
from promptlift.task import Example
from fakes import DATA  # noqa: F401


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- directories -------------------------------------------------------------------------------------
def test_sst2():
    t = Task.from_dir(DATA / "sst2")
    assert t.kind == "classification" and t.is_classification
    assert t.name == "sst2"
    assert t.labels == {"negative": "negative", "positive": "positive"}
    assert (len(t.train), len(t.dev), len(t.test)) == (32, 32, 200)  # every row of each file (tests/data)
    assert t.metric == "accuracy"
    assert all(ex.output in t.labels for ex in t.train + t.dev + t.test)
    assert "negative" in t.instruction and "positive" in t.instruction  # default instruction names the labels
    assert t.split("test") is t.test
    assert t.test[0].fields["text"] == t.test[0].input


def test_instruction_induction_antonyms_dev_carved_from_train(tmp_path):
    d = tmp_path / "antonyms"  # train and test files only: the dev split is carved from train
    d.mkdir()
    for split in ("train", "test"):
        (d / f"{split}.jsonl").write_bytes((DATA / "antonyms" / f"{split}.jsonl").read_bytes())
    n_train = sum(1 for line in (d / "train.jsonl").read_text().splitlines() if line.strip())
    t = Task.from_dir(d)
    assert t.kind == "generation" and not t.is_classification
    assert t.labels == {} and t.metric == "exact"
    assert len(t.test) == 100
    assert len(t.dev) == min(100, int(n_train * 0.2)) > 0
    assert len(t.train) + len(t.dev) == n_train  # dev is taken out of train, not copied
    assert not set(t.dev) & set(t.train)
    assert not {ex.input for ex in t.dev} & {ex.input for ex in t.train}
    assert "dev" not in t.files and t.files["train"].endswith("train.jsonl")
    # the carve is seeded: the same dev split every time
    assert Task.from_dir(d).dev == t.dev


def test_task_yaml_labels_words_and_input_format(tmp_path):
    (tmp_path / "task.yaml").write_text(
        "name: reviews\n"
        "type: classification\n"
        "input_format: \"Title: {title}\\nBody: {body}\"\n"
        "label_field: stars\n"
        "labels:\n  1: very bad\n  5: very good\n"
        "instruction: Rate the review.\n", encoding="utf-8")
    rows = [{"title": f"t{i}", "body": f"b{i}", "stars": 1 if i % 2 else 5} for i in range(12)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows[:3])
    t = Task.from_dir(tmp_path)
    assert t.name == "reviews" and t.kind == "classification"
    assert t.labels == {"1": "very bad", "5": "very good"}  # label names are strings, words as given
    assert t.label_names == ["1", "5"]
    assert t.instruction == "Rate the review."
    assert t.test[0] == Example("Title: t0\nBody: b0", "5")
    assert t.test[1].output == "1"
    assert len(t.dev) == 2 and len(t.train) == 10  # 20% of 12 carved for dev
    # arguments override the file
    t2 = Task.from_dir(tmp_path, instruction="Other.", name="x")
    assert t2.instruction == "Other." and t2.name == "x"


def test_generation_task_yaml_metric_and_list_references(tmp_path):
    (tmp_path / "task.yaml").write_text("type: generation\ninput_field: question\noutput_field: answers\n"
                                        "metric: f1\n", encoding="utf-8")
    write_jsonl(tmp_path / "test.jsonl", [{"question": "q1", "answers": ["a one", "a1"]},
                                          {"question": "q2", "answers": ["two"]}])
    t = Task.from_dir(tmp_path)
    assert t.kind == "generation" and t.metric == "f1"
    assert [ex.output for ex in t.test] == ["a one", "two"]  # the first reference is the target
    assert t.instruction  # a default instruction


def test_classification_without_task_yaml_sorts_labels(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "zeta"}, {"text": "b", "label": "alpha"}])
    write_jsonl(tmp_path / "test.jsonl", [{"text": "c", "label": "alpha"}])
    t = Task.from_dir(tmp_path)
    assert t.labels == {"alpha": "alpha", "zeta": "zeta"}
    assert t.dev == []  # fewer than 10 train rows: no dev carved
    with pytest.raises(DataError, match="split 'dev' is empty or missing: .*train.jsonl has 2 rows, too few"):
        t.split("dev")


def test_demo_tasks():
    t = Task.demo("demo_topics")
    assert t.kind == "classification" and len(t.labels) == 4
    assert any(len(w.split()) > 1 for w in t.labels.values())
    assert t.train and t.dev and t.test
    a = Task.demo("demo_antonyms")
    assert a.kind == "generation" and a.test
    with pytest.raises(ConfigError, match="unknown demo task"):
        Task.demo("nosuch")


# --- single files --------------------------------------------------------------------------------------
def test_from_files_csv_and_tsv(tmp_path):
    csv_text = 'text,label\n"hello, world",pos\n"say ""hi""",neg\nplain,pos\n'
    (tmp_path / "train.csv").write_text(csv_text, encoding="utf-8")
    (tmp_path / "test.tsv").write_text("text\tlabel\nhello, world\tpos\nbye\tneg\n", encoding="utf-8")
    t = Task.from_files(train=tmp_path / "train.csv", test=tmp_path / "test.tsv")
    assert t.kind == "classification"
    assert t.name == "train"
    assert [ex.input for ex in t.train] == ["hello, world", 'say "hi"', "plain"]
    assert [ex.output for ex in t.train] == ["pos", "neg", "pos"]
    assert t.test == [Example("hello, world", "pos"), Example("bye", "neg")]
    assert t.labels == {"neg": "neg", "pos": "pos"}
    assert t.files == {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.tsv")}


def test_from_files_field_mapping(tmp_path):
    (tmp_path / "qa.csv").write_text("q,a\nwhat is 1+1,2\ncapital of France,Paris\n", encoding="utf-8")
    t = Task.from_files(test=tmp_path / "qa.csv", input_field="q", output_field="a", name="qa")
    assert t.kind == "generation" and t.name == "qa"
    assert t.test == [Example("what is 1+1", "2"), Example("capital of France", "Paris")]
    with pytest.raises(ConfigError):
        Task.from_files()


def test_from_dir_json_list_file(tmp_path):
    (tmp_path / "test.json").write_text(json.dumps([{"input": "x", "output": "y"}]), encoding="utf-8")
    t = Task.from_dir(tmp_path)
    assert t.kind == "generation" and t.test == [Example("x", "y")]


# --- Hugging Face datasets -------------------------------------------------------------------------------
def test_from_hf_dataset_and_dataset_dict():
    datasets = pytest.importorskip("datasets")
    rows = [{"sentence": f"s{i}", "label": i % 2} for i in range(20)]
    ds = datasets.Dataset.from_list(rows)
    t = Task.from_hf(ds, name="d", labels={0: "bad", 1: "good"})
    assert t.kind == "classification" and t.labels == {"0": "bad", "1": "good"}
    assert len(t.train) + len(t.dev) == 20 and len(t.dev) == 4  # a Dataset is the train split; dev carved
    assert t.train[0].input.startswith("s") and t.train[0].output in ("0", "1")

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"input": "a", "output": "b"}] * 3),
        "validation": datasets.Dataset.from_list([{"input": "c", "output": "d"}]),
        "test": datasets.Dataset.from_list([{"input": "e", "output": "f"}, {"input": "g", "output": "h"}]),
    })
    t2 = Task.from_hf(dd, name="gen")
    assert t2.kind == "generation" and t2.name == "gen"
    assert (len(t2.train), len(t2.dev), len(t2.test)) == (3, 1, 2)
    assert t2.dev == [Example("c", "d")]
    assert t2.source == "<datasets:gen>"


# --- Task construction ----------------------------------------------------------------------------------
def test_task_validation():
    with pytest.raises(ConfigError, match="task type"):
        Task(name="x", kind="regression")
    with pytest.raises(DataError, match="at least 2 labels"):
        Task(name="x", kind="classification", labels={"a": "a"})
    with pytest.raises(ConfigError, match="unknown split"):
        Task.demo("demo_topics").split("validation")
    assert Task(name="g", kind="generation").metric == "exact"  # each kind has its own default metric
    assert Task(name="c", kind="classification", labels={"a": "a", "b": "b"}).metric == "accuracy"
    with pytest.raises(ConfigError, match="scored by accuracy"):
        Task(name="c", kind="classification", labels={"a": "a", "b": "b"}, metric="f1")
    with pytest.raises(ConfigError, match="unknown metric 'bleu'"):
        Task(name="g", kind="generation", metric="bleu")


# --- metrics --------------------------------------------------------------------------------------------
def test_normalize_and_generation_metrics():
    assert normalize("  The Cat,  sat!! ") == "cat sat"
    assert normalize("An apple a day") == "apple day"
    assert exact_match("The cat.", "cat") == 1.0
    assert exact_match("cats", "cat") == 0.0
    assert contains("I think it is a big Cat!", "the cat") == 1.0
    assert contains("dog", "cat") == 0.0
    assert contains("anything", "") == 0.0  # an empty reference is never contained
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert token_f1("Cat sat.", "the cat sat") == 1.0
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "cat") == 0.0
    assert get_metric("f1") is token_f1
    fn = lambda p, g: 0.5  # noqa: E731
    assert get_metric(fn) is fn
    with pytest.raises(ConfigError, match="unknown metric"):
        get_metric("bleu")


def test_wilson_interval():
    assert wilson_ci95(0, 0) == (0.0, 0.0)
    lo, hi = wilson_ci95(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    for k, n in [(0, 10), (3, 10), (10, 10), (81, 100), (1, 1)]:
        lo, hi = wilson_ci95(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
        # symmetric: the interval of failures mirrors the interval of successes
        lo2, hi2 = wilson_ci95(n - k, n)
        assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    assert wilson_ci95(0, 10)[0] == 0.0 and wilson_ci95(0, 10)[1] > 0.0  # not degenerate at 0
    assert wilson_ci95(10, 10)[1] == 1.0 and wilson_ci95(10, 10)[0] < 1.0
    # more data, narrower interval
    w = lambda k, n: wilson_ci95(k, n)[1] - wilson_ci95(k, n)[0]  # noqa: E731
    assert w(50, 100) < w(5, 10) < w(1, 2)


def test_summarize():
    s = summarize([1.0, 0.0, 1.0, 1.0], golds=["a", "b", "a", "b"], preds=["a", "a", "a", "b"])
    assert s["accuracy"] == 0.75 and s["n"] == 4
    assert s["ci95"] == pytest.approx(list(wilson_ci95(3, 4)))
    assert s["per_class"]["a"] == {"support": 2, "recall": 1.0, "precision": pytest.approx(2 / 3), "predicted": 3}
    assert s["per_class"]["b"] == {"support": 2, "recall": 0.5, "precision": 1.0, "predicted": 1}
    g = summarize([0.5, 1.0, 0.0])  # graded scores: a normal interval around the mean
    assert g["accuracy"] == pytest.approx(0.5) and "per_class" not in g
    lo, hi = g["ci95"]
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(0.5 - lo)
    assert not math.isnan(summarize([])["accuracy"])
