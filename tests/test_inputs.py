"""Inputs a user can trust: every data file and task.yaml either loads exactly as written or fails with
one line naming the file, the line and the field.

Two tables: BAD (inputs that must be refused, with what the message must name) and GOOD (valid but
unusual inputs that must load, with the examples they must give). Adding a case is one line.
In the needles, "{d}" stands for the case's directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from promptlift import Task
from promptlift.cli import main
from promptlift.datafiles import read_rows
from promptlift.errors import ConfigError, DataError, PromptliftError


def J(*rows) -> str:
    """JSONL text of `rows` (dicts are dumped; strings are taken as raw lines)."""
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


def R(text, label) -> dict:
    return {"text": text, "label": label}


TWO = J(R("a", "pos"), R("b", "neg"))
TEN = J(*[R(f"t{i}", "pos" if i % 2 else "neg") for i in range(10)])
YAML_LABELS = "type: classification\nlabels:\n  pos: positive\n  neg: negative\n"


@dataclass
class Bad:
    id: str
    files: dict  # name -> str (written as UTF-8) or bytes
    needles: tuple  # what the one-line message must contain; "{d}" is the case directory
    data: str = ""  # "" loads the directory; a file name loads that file as the test split
    split: str = "test"  # the split asked for after loading (an empty one is an error too)


BAD = [
    # --- JSONL / JSON ---
    Bad("jsonl_malformed_line_counts_blank_and_u2028_lines",
        {"test.jsonl": J(R("a\u2028b\u2029c\x85d", "pos"), "", '{"text": "x", "label": }')},
        ("{d}/test.jsonl:3:", "malformed JSON", "column")),
    Bad("jsonl_crlf_malformed_line", {"test.jsonl": TWO.replace("\n", "\r\n") + '{"text": "x"\r\n'},
        ("{d}/test.jsonl:3:", "malformed JSON")),
    Bad("jsonl_row_not_object", {"test.jsonl": J(R("a", "pos"), '"just text"')},
        ("{d}/test.jsonl:2:", "expected a JSON object, got a string")),
    Bad("jsonl_duplicate_key", {"test.jsonl": J(R("a", "pos"), '{"text": "b", "label": "pos", "label": "neg"}')},
        ("{d}/test.jsonl:2:", "'label' appears twice")),
    Bad("jsonl_json_list_in_jsonl", {"test.jsonl": '[\n  {"text": "a", "label": "pos"}\n]\n'},
        ("{d}/test.jsonl:1:", ".json file")),
    Bad("json_not_a_list", {"test.json": '{"text": "a", "label": "pos"}'}, ("{d}/test.json", "JSON list of objects")),
    Bad("json_element_not_object", {"test.json": '[\n  {"text": "a", "label": "pos"},\n\n  [1, 2]\n]'},
        ("{d}/test.json:4:", "got a list")),
    Bad("json_holding_jsonl", {"test.json": TWO}, ("{d}/test.json:2:", "malformed JSON", ".jsonl")),
    Bad("json_duplicate_key_line", {"test.json": '[{"text": "a", "label": "pos"},\n {"text": "b",\n  "text": "c"}]'},
        ("{d}/test.json:2:", "'text' appears twice")),
    # --- CSV / TSV ---
    Bad("csv_duplicate_header", {"test.csv": "text,label,text\na,pos,x\n"}, ("{d}/test.csv:1:", "'text' twice")),
    Bad("csv_header_column_without_name", {"test.csv": "text,label,\na,pos,\n"},
        ("{d}/test.csv:1:", "column 3 has no name")),
    Bad("csv_header_only", {"test.csv": "text,label\n"}, ("{d}/test.csv", "only a header line")),
    Bad("csv_extra_field_after_quoted_newline", {"test.csv": 'text,label\n"two\nlines",pos\nb,neg,x\n'},
        ("{d}/test.csv:4:", "3 fields", "header")),
    Bad("csv_too_few_fields", {"test.csv": "text,label\na,pos\nb\n"}, ("{d}/test.csv:3:", "1 field,", "header")),
    Bad("csv_unclosed_quote", {"test.csv": 'text,label\na,pos\n"b,neg\nc,pos\n'}, ("{d}/test.csv:3:", "never closed")),
    Bad("csv_text_after_closing_quote", {"test.csv": 'text,label\na,pos\n"b" c,neg\n'},
        ("{d}/test.csv:3:", "closing quote")),
    Bad("tsv_text_after_closing_quote", {"test.tsv": 'text\tlabel\n"hi" he said\tpos\n'},
        ("{d}/test.tsv:2:", "malformed TSV", "closing quote")),
    Bad("csv_empty_label", {"test.csv": "text,label\na,pos\nb,\n"}, ("{d}/test.csv:3:", "'label' is empty")),
    Bad("jsonl_empty_label", {"test.jsonl": J(R("a", "pos"), R("", " "))}, ("{d}/test.jsonl:2:", "'label' is empty")),
    Bad("jsonl_empty_output", {"test.jsonl": J({"input": "q", "output": "a"}, {"input": "", "output": ""})},
        ("{d}/test.jsonl:2:", "'output' is empty")),
    Bad("missing_text_field_beside_empty_ones", {"test.jsonl": J(R("", "pos"), {"label": "neg"})},
        ("{d}/test.jsonl:2:", "missing field 'text'")),
    # --- encodings and empty files ---
    Bad("not_utf8_names_line", {"test.csv": "text,label\na,pos\ncaf\xe9,neg\n".encode("latin-1")},
        ("{d}/test.csv:3:", "not UTF-8")),
    Bad("utf16_file", {"test.csv": "text,label\na,pos\n".encode("utf-16")}, ("{d}/test.csv", "UTF-16")),
    Bad("nul_character_late_in_file",
        {"test.jsonl": J(*[R(f"t{i}", "pos") for i in range(300)], '{"text": "x\x00", "label": "neg"}')},
        ("{d}/test.jsonl:301:", "NUL")),
    Bad("empty_file", {"test.jsonl": ""}, ("{d}/test.jsonl", "file is empty")),
    Bad("blank_lines_only", {"test.jsonl": "\n  \n\r\n"}, ("{d}/test.jsonl", "only blank lines")),
    Bad("empty_dev_file", {"train.jsonl": TEN, "dev.csv": "text,label\n", "test.jsonl": TWO},
        ("{d}/dev.csv", "split 'dev' is empty", "header")),
    Bad("unsupported_suffix", {"notes.txt": TWO}, ("{d}/notes.txt", "unsupported file type '.txt'"), data="notes.txt"),
    Bad("single_file_bad_row", {"data.csv": "text,label\na,pos\nb\n"}, ("{d}/data.csv:3:", "1 field"), data="data.csv"),
    # --- rows ---
    Bad("missing_label_field", {"test.jsonl": J(R("a", "pos"), {"text": "b", "lable": "neg"})},
        ("{d}/test.jsonl:2:", "missing field 'label'", "'lable'")),
    Bad("null_text", {"test.jsonl": J(R("a", "pos"), R(None, "neg"))}, ("{d}/test.jsonl:2:", "'text' is null")),
    Bad("text_is_object", {"test.jsonl": J(R("a", "pos"), R({"t": 1}, "neg"))},
        ("{d}/test.jsonl:2:", "'text'", "an object")),
    Bad("boolean_label", {"test.jsonl": J(R("a", "pos"), R("b", True))}, ("{d}/test.jsonl:2:", "'label'", "got true")),
    Bad("nan_text", {"test.jsonl": J(R("a", "pos"), '{"text": NaN, "label": "neg"}')},
        ("{d}/test.jsonl:2:", "'text'", "nan")),
    Bad("list_label_in_classification", {"test.jsonl": J(R("a", "pos"), R("b", ["neg"]))},
        ("{d}/test.jsonl:2:", "'label'", "one label, got a list")),
    Bad("generation_empty_reference_list",
        {"test.jsonl": J({"input": "q", "output": "a"}, {"input": "r", "output": []})},
        ("{d}/test.jsonl:2:", "'output' is an empty list")),
    Bad("no_input_field", {"test.jsonl": J({"body": "a", "label": "pos"}, {"body": "b", "label": "neg"})},
        ("{d}/test.jsonl:1:", "no input field", "'body'")),
    # --- labels ---
    Bad("dev_label_not_in_train",
        {"train.jsonl": TEN, "dev.jsonl": J(R("a", "pos"), R("b", "maybe")), "test.jsonl": TWO},
        ("{d}/dev.jsonl:2:", "'maybe'", "'neg', 'pos'", "{d}/train.jsonl")),
    Bad("test_label_not_in_task_yaml", {"task.yaml": YAML_LABELS, "test.jsonl": J(R("a", "pos"), R("b", "neutral"))},
        ("{d}/test.jsonl:2:", "'neutral'", "'pos', 'neg'", "{d}/task.yaml")),
    Bad("label_case_differs_from_task_yaml",
        {"task.yaml": "labels:\n  yes: Yes\n  no: No\n", "test.csv": "text,label\na,Yes\n"},
        ("{d}/test.csv:2:", "'Yes'", "'yes', 'no'")),
    Bad("only_one_label_in_train", {"train.jsonl": J(*[R(f"t{i}", "pos") for i in range(12)])},
        ("{d}/train.jsonl", "at least 2 labels", "'pos'")),
    # --- directory layout ---
    Bad("two_train_files", {"train.jsonl": TEN, "train.csv": "text,label\na,pos\n"},
        ("{d}", "train.jsonl and train.csv")),
    Bad("task_yaml_and_task_yml", {"task.yaml": YAML_LABELS, "task.yml": YAML_LABELS, "test.jsonl": TWO},
        ("{d}", "task.yaml and task.yml")),
    Bad("too_few_train_rows_for_dev", {"train.jsonl": J(R("a", "pos"), R("b", "neg"), R("c", "pos"), R("d", "neg"))},
        ("{d}", "split 'dev'", "{d}/train.jsonl has 4 rows", "too few", "dev.jsonl"), split="dev"),
    # --- task.yaml ---
    Bad("yaml_not_a_mapping", {"task.yaml": "- text\n- label\n", "test.jsonl": TWO}, ("{d}/task.yaml:1:", "mapping")),
    Bad("yaml_unknown_key", {"task.yaml": "type: classification\nlables:\n  pos: positive\n", "test.jsonl": TWO},
        ("{d}/task.yaml:2:", "unknown key 'lables'", "did you mean 'labels'", "known keys: name, type")),
    Bad("yaml_type_and_kind", {"task.yaml": "type: classification\nkind: generation\n", "test.jsonl": TWO},
        ("{d}/task.yaml:2:", "both 'type' and 'kind'")),
    Bad("yaml_labels_is_list", {"task.yaml": "labels: [pos, neg]\n", "test.jsonl": TWO},
        ("{d}/task.yaml:1:", "'labels' must be a mapping")),
    Bad("yaml_label_without_words", {"task.yaml": "labels:\n  pos: positive\n  neg:\n", "test.jsonl": TWO},
        ("{d}/task.yaml:3:", "'neg'", "no label words")),
    Bad("yaml_duplicate_label_words",
        {"task.yaml": "labels:\n  pos: good\n  neg: bad\n  great: good\n", "test.jsonl": TWO},
        ("{d}/task.yaml:4:", "'pos' and 'great'", "same label words")),
    Bad("yaml_duplicate_label_name", {"task.yaml": "labels:\n  pos: a\n  neg: b\n  pos: c\n", "test.jsonl": TWO},
        ("{d}/task.yaml:4:", "'pos' appears twice", "line 2")),
    Bad("yaml_single_label", {"task.yaml": "labels:\n  pos: positive\n", "test.jsonl": J(R("a", "pos"))},
        ("{d}/task.yaml:1:", "at least 2 labels", "'pos'")),
    Bad("yaml_unknown_type", {"task.yaml": "type: regression\n", "test.jsonl": TWO},
        ("{d}/task.yaml:1:", "'regression'", "classification")),
    Bad("yaml_unknown_metric",
        {"task.yaml": "type: generation\nmetric: bleu\n", "test.jsonl": J({"input": "q", "output": "a"})},
        ("{d}/task.yaml:2:", "'bleu'", "exact, contains, f1")),
    Bad("yaml_generation_metric_on_classification", {"task.yaml": YAML_LABELS + "metric: f1\n", "test.jsonl": TWO},
        ("{d}/task.yaml:5:", "'f1'", "accuracy")),
    Bad("yaml_labels_on_generation_task", {"task.yaml": "type: generation\nlabels:\n  a: b\n  c: d\n",
                                           "test.jsonl": J({"input": "q", "output": "a"})},
        ("{d}/task.yaml:2:", "generation task")),
    Bad("yaml_input_format_field_missing_in_row",
        {"task.yaml": 'input_format: "{title}: {body}"\n', "test.jsonl": J(
            {"title": "t", "body": "b", "label": "pos"}, {"title": "u", "body": "c", "label": "neg"},
            {"title": "v", "label": "pos"})},
        ("{d}/test.jsonl:3:", "missing field 'body'", "input_format", "'title', 'label'")),
    Bad("yaml_input_format_without_placeholder", {"task.yaml": "input_format: Review\n", "test.jsonl": TWO},
        ("{d}/task.yaml:1:", "no {field} placeholder")),
    Bad("yaml_input_format_unbalanced_brace", {"task.yaml": 'input_format: "Title: {text"\n', "test.jsonl": TWO},
        ("{d}/task.yaml:1:", "malformed")),
    Bad("yaml_input_format_positional", {"task.yaml": 'input_format: "Q: {}"\n', "test.jsonl": TWO},
        ("{d}/task.yaml:1:", "must name a field")),
    Bad("yaml_input_field_and_input_format",
        {"task.yaml": 'input_field: text\ninput_format: "{text}"\n', "test.jsonl": TWO},
        ("{d}/task.yaml:2:", "both 'input_field' and 'input_format'")),
    Bad("yaml_setting_not_text",
        {"task.yaml": "type: classification\ninstruction:\n  - one\n  - two\n", "test.jsonl": TWO},
        ("{d}/task.yaml:2:", "'instruction' must be text")),
    Bad("yaml_setting_without_value", {"task.yaml": "metric:\n", "test.jsonl": TWO},
        ("{d}/task.yaml:1:", "'metric' has no value")),
    Bad("yaml_label_field_missing_in_rows", {"task.yaml": "label_field: stars\n", "test.jsonl": J(
        {"text": "a", "rating": 1})}, ("{d}/test.jsonl:1:", "missing field 'stars'", "'rating'")),
    Bad("yaml_tab_indentation", {"task.yaml": "labels:\n\tpos: a\n", "test.jsonl": TWO},
        ("{d}/task.yaml:2:", "malformed YAML")),
    Bad("yaml_not_utf8",
        {"task.yaml": "type: classification\ninstruction: caf\xe9\n".encode("latin-1"), "test.jsonl": TWO},
        ("{d}/task.yaml:2:", "not UTF-8")),
]


def build(tmp_path, files: dict):
    d = tmp_path / "data"
    d.mkdir()
    for name, content in files.items():
        if isinstance(content, bytes):
            (d / name).write_bytes(content)
        else:
            (d / name).write_text(content, encoding="utf-8", newline="")
    return d


def load(d, data: str = "", split: str | None = None):
    task = Task.from_files(test=d / data) if data else Task.from_dir(d)
    if split:
        task.split(split)
    return task


def one_line(msg: str, needles, d) -> str:
    assert msg and "\n" not in msg and "\r" not in msg and "Traceback" not in msg, repr(msg)
    for n in needles:
        n = n.replace("{d}", str(d))
        assert n in msg, (n, msg)
    return msg


def run_cli(capsys, args) -> str:
    """Run the CLI; assert exit 2 and exactly one `promptlift: error:` line on stderr; return it."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert "Traceback" not in err + out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("promptlift: error: "), err
    return lines[0]


def test_corpus_is_large_and_ids_unique():
    assert len(BAD) >= 25 and len({c.id for c in BAD}) == len(BAD)
    assert len(GOOD) >= 10 and len({c.id for c in GOOD}) == len(GOOD)


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_input_python(case, tmp_path):
    d = build(tmp_path, case.files)
    with pytest.raises(PromptliftError) as ei:
        load(d, case.data, case.split)
    assert type(ei.value) is DataError, type(ei.value)
    one_line(str(ei.value), case.needles, d)


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_input_cli(case, tmp_path, capsys):
    # `eval` loads the data and asks for the split before it loads a model: no model is loaded here
    d = build(tmp_path, case.files)
    line = run_cli(capsys, ["eval", "--data", d / case.data if case.data else d, "--split", case.split,
                            "--model", "nosuch-model"])
    one_line(line, case.needles, d)


# --- valid but unusual inputs that must load --------------------------------------------------------
@dataclass
class Good:
    id: str
    files: dict
    test: list  # the (input, output) pairs the test split must hold
    labels: dict = field(default_factory=dict)  # expected task.labels when given
    kind: str = "classification"


ODD_TEXT = "a\x0bb\x0cc\u2028d\u2029e\x85f\rg"
GOOD = [
    Good("csv_quoted_newline_and_comma", {"test.csv": 'text,label\n"line one\nline two",pos\n"a, ""b""",neg\n'},
         [("line one\nline two", "pos"), ('a, "b"', "neg")]),
    Good("csv_bom", {"test.csv": "\ufefftext,label\na,pos\nb,neg\n"}, [("a", "pos"), ("b", "neg")]),
    Good("jsonl_bom", {"test.jsonl": "\ufeff" + TWO}, [("a", "pos"), ("b", "neg")]),
    Good("task_yaml_bom", {"task.yaml": "\ufeff" + YAML_LABELS, "test.jsonl": TWO}, [("a", "pos"), ("b", "neg")],
         {"pos": "positive", "neg": "negative"}),
    Good("jsonl_line_separators_inside_strings",
         {"test.jsonl": '{"text": "' + ODD_TEXT.replace("\r", "\\r") + '", "label": "pos"}\n' + TWO},
         [(ODD_TEXT, "pos"), ("a", "pos"), ("b", "neg")]),
    Good("jsonl_crlf", {"test.jsonl": TWO.replace("\n", "\r\n")}, [("a", "pos"), ("b", "neg")]),
    Good("csv_crlf", {"test.csv": "text,label\r\na,pos\r\nb,neg\r\n"}, [("a", "pos"), ("b", "neg")]),
    Good("tsv_with_quotes", {"test.tsv": 'text\tlabel\nsay "hi" now\tpos\n"tab\there ""quoted"""\tneg\n'},
         [('say "hi" now', "pos"), ('tab\there "quoted"', "neg")]),
    Good("yaml_yes_no_labels",
         {"task.yaml": "labels:\n  yes: yes\n  no: no\n", "test.csv": "text,label\na,yes\nb,no\n"},
         [("a", "yes"), ("b", "no")], {"yes": "yes", "no": "no"}),
    Good("yaml_on_off_octal_sexagesimal_labels",
         {"task.yaml": "labels:\n  on: switched on\n  off: 'off'\n  010: ten\n  1:30: half past\n",
          "test.jsonl": J(R("a", "on"), R("b", "off"), R("c", "010"), R("d", "1:30"))},
         [("a", "on"), ("b", "off"), ("c", "010"), ("d", "1:30")],
         {"on": "switched on", "off": "off", "010": "ten", "1:30": "half past"}),
    Good("json_list_bom_crlf",
         {"test.json": '\ufeff[\r\n  {"text": "a", "label": "pos"},\r\n  {"text": "b", "label": "neg"}\r\n]\r\n'},
         [("a", "pos"), ("b", "neg")]),
    Good("unicode_labels", {"task.yaml": "labels:\n  正面: 正面的\n  négatif: négatif\n  😀: smile\n",
                            "test.jsonl": J(R("好", "正面"), R("mauvais", "négatif"), R("yay", "😀"))},
         [("好", "正面"), ("mauvais", "négatif"), ("yay", "😀")],
         {"正面": "正面的", "négatif": "négatif", "😀": "smile"}),
    Good("trailing_blank_lines", {"test.jsonl": TWO + "\n\n   \n\r\n", "dev.csv": "text,label\na,pos\nb,neg\n\n,\n\n"},
         [("a", "pos"), ("b", "neg")]),
    Good("numbers_as_text_and_labels", {"task.yaml": "labels:\n  0: zero\n  1: one\n",
                                        "test.jsonl": J(R(42, 1), R(2.5, 0))}, [("42", "1"), ("2.5", "0")],
         {"0": "zero", "1": "one"}),
    Good("label_whitespace_stripped", {"test.csv": "text,label\n a ,pos \nb, neg\n"}, [(" a ", "pos"), ("b", "neg")]),
    Good("generation_list_references",
         {"test.jsonl": J({"input": "q", "output": ["a1", "a2"]}, {"input": 7, "output": 8})},
         [("q", "a1"), ("7", "8")], kind="generation"),
    Good("input_format_with_numbers", {"task.yaml": 'input_format: "{title} ({stars} stars)"\nlabel_field: label\n'
                                                    "labels:\n  pos: good\n  neg: bad\n",
                                       "test.jsonl": J({"title": "t", "stars": 5, "label": "pos"})},
         [("t (5 stars)", "pos")], {"pos": "good", "neg": "bad"}),
    Good("quoted_yaml_label_names",
         {"task.yaml": "labels:\n  'yes': 'Yes'\n  \"no\": \"No\"\n", "test.jsonl": J(R("a", "no"))},
         [("a", "no")], {"yes": "Yes", "no": "No"}),
    Good("empty_task_yaml", {"task.yaml": "# nothing set\n", "test.jsonl": TWO}, [("a", "pos"), ("b", "neg")]),
    # an empty input is an example (public files hold empty reviews); only empty labels/outputs are refused
    Good("csv_empty_text", {"test.csv": "text,label\na,pos\n  ,neg\n,pos\n"}, [("a", "pos"), ("  ", "neg"), ("", "pos")]),
    Good("jsonl_empty_text", {"test.jsonl": J(R("", "pos"), R("b", "neg"))}, [("", "pos"), ("b", "neg")]),
    Good("generation_empty_input", {"test.jsonl": J({"input": "", "output": "nothing"}, {"input": "q", "output": "a"})},
         [("", "nothing"), ("q", "a")], kind="generation"),
]


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_unusual_input_loads(case, tmp_path, capsys):
    d = build(tmp_path, case.files)
    task = Task.from_dir(d)
    assert task.kind == case.kind
    assert [(ex.input, ex.output) for ex in task.test] == case.test
    if case.labels:
        assert task.labels == case.labels and task.label_names == list(case.labels)
    # on the command line too: the data loads, and only the missing train split is reported
    line = run_cli(capsys, ["eval", "--data", d, "--split", "train", "--model", "nosuch-model"])
    assert "split 'train' is empty or missing" in line, line


def test_dev_lines_are_file_lines_after_quoted_newlines(tmp_path):
    d = build(tmp_path, {"train.jsonl": TEN, "dev.csv": 'text,label\n"a\nb\nc",pos\n"d",neg\ne,maybe\n'})
    with pytest.raises(DataError, match=r"dev\.csv:6: field 'label': label 'maybe'"):
        Task.from_dir(d)


def test_dev_carved_from_ten_train_rows_without_dev_file(tmp_path):
    t = Task.from_dir(build(tmp_path, {"train.jsonl": TEN}))
    assert (len(t.train), len(t.dev)) == (8, 2) and t.empty_reasons == {}


def test_arguments_override_task_yaml(tmp_path):
    d = build(tmp_path, {"task.yaml": 'type: generation\ninput_format: "Q: {question}"\nmetric: f1\n',
                         "test.jsonl": J({"question": "q", "text": "t", "output": "a"})})
    t = Task.from_dir(d, input_field="text", metric="contains", name="n")
    assert t.test[0].input == "t" and t.metric == "contains" and t.name == "n"


def test_report_reader_keeps_empty_history(tmp_path):
    (tmp_path / "history.jsonl").write_text("", encoding="utf-8")
    assert read_rows(tmp_path / "history.jsonl") == []
    (tmp_path / "history.jsonl").write_text('{"step": 1, "score": 0.5}\n', encoding="utf-8")
    assert read_rows(tmp_path / "history.jsonl") == [{"step": 1, "score": 0.5}]


# --- settings given as arguments are ConfigErrors that name the setting ---------------------------------
ROWS = {"test": [R("a", "pos"), R("b", "neg")]}
GEN = {"test": [{"input": "q", "output": "a"}]}
ARG_CASES = [
    ("unknown_split", lambda: Task.from_rows({"validation": ROWS["test"]}, name="x"),
     ("'validation'", "train, dev, test")),
    ("kind_case", lambda: Task.from_rows(ROWS, name="x", kind="Classification"), ("'Classification'",)),
    ("labels_same_words", lambda: Task.from_rows(ROWS, name="x", labels={"pos": "good", "neg": "good"}),
     ("'pos' and 'neg'", "same label words")),
    ("labels_not_mapping", lambda: Task.from_rows(ROWS, name="x", labels=["pos", "neg"]), ("mapping",)),
    ("labels_bool_name", lambda: Task.from_rows(ROWS, name="x", labels={True: "yes", False: "no"}),
     ("label True", "got true")),
    ("metric_unknown", lambda: Task.from_rows(GEN, name="x", metric="bleu"), ("'bleu'", "exact")),
    ("metric_accuracy_on_generation", lambda: Task.from_rows(GEN, name="x", metric="accuracy"), ("classification",)),
    ("labels_on_generation", lambda: Task.from_rows(GEN, name="x", kind="generation", labels={"a": "b", "c": "d"}),
     ("generation",)),
    ("input_field_and_format", lambda: Task.from_rows(ROWS, name="x", input_field="text", input_format="{text}"),
     ("not both",)),
    ("task_metric_for_kind", lambda: Task(name="x", kind="classification", labels={"a": "a", "b": "b"}, metric="f1"),
     ("accuracy",)),
]


@pytest.mark.parametrize("case", ARG_CASES, ids=lambda c: c[0])
def test_bad_argument(case):
    _, build_task, needles = case
    with pytest.raises(ConfigError) as ei:
        build_task()
    msg = str(ei.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_in_memory_rows_name_split_and_row():
    with pytest.raises(DataError) as ei:
        Task.from_rows({"train": [R("a", "pos"), R("b", True)]}, name="x", source="<datasets:d>")
    assert str(ei.value).startswith("<datasets:d>[train]:2: field 'label'")
    t = Task(name="g", kind="generation")
    assert t.metric == "exact"  # a generation task's default metric


def test_an_empty_review_loads_is_counted_and_evaluates(tmp_path, capsys):
    """The LM-BFF CR split holds one empty review in train and one in test: it loads, the count is reported
    (Task.empty_inputs, a note from the CLI, `empty_inputs` in eval's JSON) and eval scores it."""
    from fakes import make_tiny_lm

    def rows(n, empty_at=None):
        out = [R(f"the movie was {'good' if i % 2 else 'bad'}", "positive" if i % 2 else "negative") for i in range(n)]
        if empty_at is not None:
            out[empty_at] = R("", "negative")
        return out

    d = build(tmp_path, {"train.jsonl": J(*rows(12, empty_at=3)), "dev.jsonl": J(*rows(4)),
                         "test.csv": "text,label\nthe movie was good,positive\n,negative\nthe movie was bad,negative\n"})
    task = Task.from_dir(d)
    assert task.empty_inputs == {"train": 1, "test": 1}
    assert task.test[1].input == "" and task.test[1].output == "negative"
    assert task.load_note() == f"{d}: 2 rows with an empty input (train 1, test 1), kept as examples"

    lm = make_tiny_lm()
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    capsys.readouterr()
    assert main(["eval", "--data", str(d), "--model", str(model_dir), "--json"]) == 0
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert got["n"] == 3 and got["empty_inputs"] == 1
    assert f"promptlift: note: {d}: 2 rows with an empty input (train 1, test 1)" in err
    assert main(["optimize", "--method", "few-shot", "--data", str(d), "--model", str(model_dir), "--shots", "2",
                 "--trials", "2", "--out", str(tmp_path / "run"), "--json"]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["test"]["n"] == 3 and result["dev"]["n"] == 4
