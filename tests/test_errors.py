"""Every bad input is a PromptliftError with a one-line message naming the file (and row / field),
and on the command line exit code 2 with one "promptlift: error:" line and no traceback."""

from __future__ import annotations

import json

import pytest
import torch

from fakes import make_tokenizer
from promptlift import Task, TextPrompt, evaluate, optimize
from promptlift.cli import main
from promptlift.errors import ConfigError, DataError, ModelError, PromptliftError
from promptlift.registry import get_method
from fakes import make_tokenizer  # noqa: F401


def one_line(msg: str) -> str:
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
    assert "Traceback" not in msg
    return msg


def check_error(excinfo, cls, *needles):
    e = excinfo.value
    assert isinstance(e, PromptliftError) and isinstance(e, cls), type(e)
    msg = one_line(str(e))
    for n in needles:
        assert str(n) in msg, (n, msg)
    return msg


def run_cli(capsys, args, *needles) -> str:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    if "--json" in args:  # with --json the error is one JSON object
        got = json.loads(lines[0])
        assert got["exit_code"] == 2 and got["type"].endswith("Error"), got
        line = got["error"]
    else:
        assert lines[0].startswith("promptlift: error: "), err
        line = lines[0]
    for n in needles:
        assert str(n) in line, (n, line)
    return line


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = [{"text": f"text {i}", "label": "yes" if i % 2 else "no"} for i in range(4)]


# --- data errors: each case builds a bad input and says what the message must name ---------------------
def case_missing_dir(tmp):
    d = tmp / "no_such_dir"
    return d, lambda: Task.from_dir(d), [d, "not found"]


def case_missing_file(tmp):
    f = tmp / "missing.jsonl"
    return f, lambda: Task.from_files(test=f), [f, "file not found"]


def case_missing_split_file(tmp):
    write_jsonl(tmp / "train.jsonl", GOOD)  # no test.jsonl: only `--split test` fails
    return tmp, lambda: Task.from_dir(tmp).split("test"), [tmp, "'test'", "test.jsonl"]


def case_malformed_json_line(tmp):
    f = tmp / "test.jsonl"
    f.write_text(json.dumps(GOOD[0]) + "\n" + json.dumps(GOOD[1]) + "\n\n" + '{"text": "x", "label": \n',
                 encoding="utf-8")
    return tmp, lambda: Task.from_dir(tmp), [f"{f}:4:", "malformed JSON"]


def case_malformed_json_file(tmp):
    f = tmp / "test.json"
    f.write_text('[\n  {"text": "a", "label": "x"},\n  {"text": "b" "label": "y"}\n]\n', encoding="utf-8")
    return tmp, lambda: Task.from_dir(tmp), [f"{f}:3:", "malformed JSON"]


def case_not_an_object(tmp):
    f = tmp / "test.jsonl"
    f.write_text(json.dumps(GOOD[0]) + "\n[1, 2]\n", encoding="utf-8")
    return tmp, lambda: Task.from_dir(tmp), [f"{f}:2:", "JSON object"]


def case_binary(tmp):
    f = tmp / "data.jsonl"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    return f, lambda: Task.from_files(test=f), [f, "binary"]


def case_not_utf8(tmp):
    f = tmp / "test.csv"
    f.write_bytes("text,label\ncaf\xe9 au lait,yes\nthe,no\n".encode("latin-1"))
    return f, lambda: Task.from_files(test=f), [f, "UTF-8"]


def case_row_missing_field(tmp):
    f = tmp / "test.jsonl"
    write_jsonl(f, [GOOD[0], GOOD[1], {"text": "no label here"}])
    return tmp, lambda: Task.from_dir(tmp), [f"{f}:3:", "'label'"]


def case_row_missing_input_field(tmp):
    f = tmp / "test.jsonl"
    write_jsonl(f, [GOOD[0], {"txt": "typo", "label": "no"}])
    return tmp, lambda: Task.from_dir(tmp), [f"{f}:2:", "'text'"]


def case_csv_extra_field(tmp):
    f = tmp / "test.csv"
    f.write_text("text,label\na,yes\nb,no,extra\n", encoding="utf-8")
    return f, lambda: Task.from_files(test=f), [f"{f}:3:", "header"]


def case_empty_split_file(tmp):
    write_jsonl(tmp / "train.jsonl", GOOD)
    (tmp / "dev.jsonl").write_text("", encoding="utf-8")
    write_jsonl(tmp / "test.jsonl", GOOD)
    return tmp, lambda: Task.from_dir(tmp), [tmp / "dev.jsonl", "empty"]


def case_all_files_empty(tmp):
    (tmp / "test.jsonl").write_text("\n\n", encoding="utf-8")
    return tmp, lambda: Task.from_dir(tmp), [tmp / "test.jsonl", "empty"]


def case_empty_single_file(tmp):
    f = tmp / "test.csv"
    f.write_text("text,label\n", encoding="utf-8")  # a header and no rows
    return f, lambda: Task.from_files(test=f), [f, "empty"]


def case_no_split_files(tmp):
    (tmp / "notes.txt").write_text("hello", encoding="utf-8")
    return tmp, lambda: Task.from_dir(tmp), [tmp, "test.jsonl"]


def case_label_not_in_task_yaml(tmp):
    (tmp / "task.yaml").write_text("type: classification\nlabels:\n  good: positive\n  bad: negative\n",
                                   encoding="utf-8")
    write_jsonl(tmp / "train.jsonl", [{"text": "a", "label": "good"}, {"text": "b", "label": "bad"}])
    f = write_jsonl(tmp / "test.jsonl", [{"text": "a", "label": "good"}, {"text": "b", "label": "neutral"}])
    return tmp, lambda: Task.from_dir(tmp), [f"{f}:2:", "'label'", "'neutral'", "label set"]


def case_malformed_task_yaml(tmp):
    (tmp / "task.yaml").write_text("type: classification\nlabels: [a, b\n  x: y\n", encoding="utf-8")
    write_jsonl(tmp / "test.jsonl", GOOD)
    return tmp, lambda: Task.from_dir(tmp), [tmp / "task.yaml", "YAML"]


DATA_CASES = [case_missing_dir, case_missing_file, case_missing_split_file, case_malformed_json_line,
              case_malformed_json_file, case_not_an_object, case_binary, case_not_utf8, case_row_missing_field,
              case_row_missing_input_field, case_csv_extra_field, case_empty_split_file, case_all_files_empty,
              case_empty_single_file,
              case_no_split_files, case_label_not_in_task_yaml, case_malformed_task_yaml]


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.__name__[5:])
def test_data_error_python(case, tmp_path):
    _, load, needles = case(tmp_path)
    with pytest.raises(PromptliftError) as ei:
        load()
    check_error(ei, DataError, *needles)


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.__name__[5:])
def test_data_error_cli(case, tmp_path, capsys):
    # `eval` reads the data before it loads a model, so these never load one
    data, _, needles = case(tmp_path)
    run_cli(capsys, ["eval", "--data", data, "--model", "nosuch-model", "--json"], *needles)


# --- names and options ---------------------------------------------------------------------------------
def test_unknown_model(capsys):
    from promptlift.lm.hf import HFModel

    with pytest.raises(PromptliftError) as ei:
        HFModel("nosuch-model")
    check_error(ei, ConfigError, "nosuch-model", "smollm2-135m")
    run_cli(capsys, ["eval", "--data", "demo:demo_topics", "--model", "nosuch-model"], "nosuch-model")


def test_model_directory_without_config(tmp_path, capsys):
    from promptlift.lm.hf import HFModel

    with pytest.raises(PromptliftError) as ei:
        HFModel(str(tmp_path))
    check_error(ei, ModelError, tmp_path, "config.json")
    run_cli(capsys, ["eval", "--data", "demo:demo_topics", "--model", tmp_path], tmp_path)


def test_unknown_method(tiny_lm, tmp_path, capsys):
    with pytest.raises(PromptliftError) as ei:
        get_method("nosuch")
    check_error(ei, ConfigError, "nosuch", "few-shot")
    with pytest.raises(PromptliftError) as ei:
        optimize("nosuch", tiny_lm, Task.demo("demo_topics"), progress=False)
    check_error(ei, ConfigError, "nosuch")
    run_cli(capsys, ["optimize", "--method", "nosuch", "--data", "demo:demo_topics", "--out", tmp_path / "r"],
            "unknown method 'nosuch'")
    assert not (tmp_path / "r").exists()


def test_unknown_split(tiny_lm, capsys):
    task = Task.demo("demo_topics")
    with pytest.raises(PromptliftError) as ei:
        task.split("validation")
    check_error(ei, ConfigError, "'validation'", "train, dev, test")
    with pytest.raises(PromptliftError) as ei:
        evaluate(tiny_lm, task, split="validation", progress=False)
    check_error(ei, ConfigError, "'validation'")
    run_cli(capsys, ["eval", "--data", "demo:demo_topics", "--split", "validation"], "'validation'")


def test_unknown_method_option(tiny_lm, tmp_path, capsys):
    with pytest.raises(PromptliftError) as ei:
        optimize("few-shot", tiny_lm, Task.demo("demo_topics"), progress=False, nosuch=1)
    check_error(ei, ConfigError, "few-shot", "nosuch", "shots")
    # the CLI checks options before it loads the model (or an unknown model would be reported instead)
    run_cli(capsys, ["optimize", "--method", "few-shot", "--data", "demo:demo_topics", "--out", tmp_path / "r",
                     "--model", "nosuch-model", "-o", "nosuch=1"], "nosuch", "shots")
    run_cli(capsys, ["optimize", "--method", "few-shot", "--data", "demo:demo_topics", "--out", tmp_path / "r",
                     "--model", "nosuch-model", "-o", "shots=many"], "shots", "int", "'many'")
    run_cli(capsys, ["optimize", "--method", "few-shot", "--data", "demo:demo_topics", "--out", tmp_path / "r",
                     "--model", "nosuch-model", "-o", "shots"], "KEY=VALUE")
    run_cli(capsys, ["optimize", "--method", "few-shot", "--data", "demo:demo_topics", "--out", tmp_path / "r",
                     "--model", "nosuch-model", "-o", "shots=0"], "shots must be >= 1")


def test_cli_usage_error_is_one_line(capsys):
    capsys.readouterr()
    code = main(["eval"])
    _, err = capsys.readouterr()
    assert code == 2 and err.strip().startswith("promptlift: error:") and len(err.strip().splitlines()) == 1


# --- a prompt longer than the model's context --------------------------------------------------------
def short_context_lm(max_len: int = 48):
    from transformers import LlamaConfig, LlamaForCausalLM

    from promptlift.lm.hf import HFModel

    tok = make_tokenizer(chat=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_len,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return HFModel("tiny-short", model=LlamaForCausalLM(cfg).eval(), tokenizer=tok)


def test_prompt_longer_than_context():
    lm = short_context_lm(48)
    assert lm.max_length == 48
    task = Task.demo("demo_topics")
    long = task.test[0].__class__("sports results today " * 30, "sports")
    with pytest.raises(PromptliftError) as ei:
        evaluate(lm, task, TextPrompt(instruction=task.instruction), examples=[long], progress=False)
    check_error(ei, ModelError, "longer than the model's context", "48")
    with pytest.raises(PromptliftError) as ei:
        lm.score("word " * 100, [" a"])
    check_error(ei, ModelError, "48")
    with pytest.raises(PromptliftError) as ei:  # generation: a short prompt that decoding pushes past the end
        from promptlift.lm.decode import decode
        from promptlift.lm.base import GenerationConfig

        lm.eos_ids = set()  # never stop early
        decode(lm, None, [lm.encode("sports results today")], GenerationConfig(max_tokens=100))
    check_error(ei, ModelError, "48")
