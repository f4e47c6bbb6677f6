"""Bad options, artifacts, checkpoints and endpoints: each a one-line error and its exit code, before the
model loads where it can be; never a traceback, never code run from a file."""

from __future__ import annotations

import json
import pickle

import pytest

from promptlift.artifacts import TextPrompt
from promptlift.cli import main

DATA = "demo:demo_topics"


class _Boom:
    """Unpickling this would run a shell command: a checkpoint or artifact must never do that."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/promptlift-pwned",))


def _prompt_dir(tmp_path, mutate=None):
    path = TextPrompt(instruction="Classify.").save(tmp_path / "p")
    if mutate is not None:
        d = json.loads(path.read_text())
        mutate(d)
        path.write_text(json.dumps(d))
    return path


def _cases(tmp_path):
    p_ok = _prompt_dir(tmp_path / "ok")
    p_tampered = _prompt_dir(tmp_path / "t", lambda d: d.update(instruction="Say sports."))
    p_unknown_field = _prompt_dir(tmp_path / "u", lambda d: d.update(sha256=None, extra=1))
    pickled = tmp_path / "pickled.json"
    pickled.write_bytes(pickle.dumps(_Boom()))
    soft_dir = tmp_path / "soft"
    soft_dir.mkdir()
    (soft_dir / "prompt.json").write_text(json.dumps({"format": "promptlift.prompt/v1", "type": "soft",
                                                      "tensors": "../../etc/passwd", "sha256": "x"}))
    run_ckpt = tmp_path / "run-ckpt"
    (run_ckpt / "checkpoint").mkdir(parents=True)
    (run_ckpt / "checkpoint" / "state.pt").write_bytes(pickle.dumps(_Boom()))
    opt = ["optimize", "--data", DATA, "--out", tmp_path / "run"]
    ev = ["eval", "--data", DATA]
    return {
        # options (refused before any model loads)
        "limit_zero": (ev + ["--limit", 0], 2, "--limit"),
        "limit_negative": (ev + ["--limit", -3], 2, "--limit"),
        "batch_size_zero": (ev + ["--batch-size", 0], 2, "--batch-size"),
        "shots_negative": (ev + ["--shots", -1], 2, "--shots"),
        "seed_negative": (ev + ["--seed", -1], 2, "--seed"),
        "chunk_size_zero": (ev + ["--chunk-size", 0], 2, "--chunk-size"),
        "api_unknown": (ev + ["--api", "grpc"], 2, "--api"),
        "limit_not_a_number": (ev + ["--limit", "ten"], 2, "limit"),
        "resume_without_predictions": (ev + ["--resume"], 2, "--predictions"),
        "prompt_and_shots": (ev + ["--prompt", p_ok, "--shots", 2], 2, "--prompt"),
        "unknown_method": (opt + ["--method", "nope"], 2, "unknown method"),
        "unknown_method_option": (opt + ["--method", "prompt-tuning", "--tokenz", 3], 2, "--tokenz"),
        "method_option_bad_type": (opt + ["--method", "prompt-tuning", "--tokens", "many"], 2, "tokens"),
        "method_option_out_of_range": (opt + ["--method", "prompt-tuning", "--tokens", 0], 2, "tokens"),
        "lr_zero": (opt + ["--method", "prompt-tuning", "--lr", 0], 2, "lr"),
        "tiebreak_negative": (opt + ["--method", "ape", "--tiebreak", -1], 2, "tiebreak"),
        "epochs_zero": (opt + ["--method", "p-tuning", "--epochs", 0], 2, "epochs"),
        "bad_choice": (opt + ["--method", "p-tuning", "--encoder", "gru"], 2, "encoder"),
        "few_shot_bad_selection": (opt + ["--method", "few-shot", "--selection", "best"], 2, "selection"),
        "option_without_value": (opt + ["--method", "few-shot", "--shots"], 2, "--shots"),
        "stray_argument": (opt + ["--method", "few-shot", "stray"], 2, "stray"),
        "budget_malformed": (opt + ["--method", "zero-shot", "--budget", "calls"], 2, "--budget"),
        "budget_unknown_counter": (opt + ["--method", "zero-shot", "--budget", "dollars=3"], 2, "dollars"),
        "budget_not_number": (opt + ["--method", "zero-shot", "--budget", "calls=many"], 2, "calls"),
        "budget_time_not_duration": (opt + ["--method", "zero-shot", "--budget", "time=abc"], 2, "time"),
        "budget_time_zero": (opt + ["--method", "zero-shot", "--budget", "time=0"], 2, "time"),
        "optimize_seed_negative": (opt + ["--method", "zero-shot", "--seed", -2], 2, "--seed"),
        "generate_max_tokens_zero": (["generate", "hi", "--max-tokens", 0], 2, "--max-tokens"),
        "generate_temperature": (["generate", "hi", "--temperature", -1], 2, "--temperature"),
        # artifacts and checkpoints (refused before the model loads; nothing is unpickled)
        "artifact_missing": (ev + ["--prompt", tmp_path / "none"], 2, "not found"),
        "artifact_tampered": (ev + ["--prompt", p_tampered], 2, "hash"),
        "artifact_unknown_field": (ev + ["--prompt", p_unknown_field], 2, "prompt.json"),
        "artifact_is_a_pickle": (ev + ["--prompt", pickled], 2, "not a promptlift artifact"),
        "artifact_tensor_path_escape": (ev + ["--prompt", soft_dir], 2, "tensors"),
        "generate_bad_artifact": (["generate", "hi", "--prompt", p_tampered], 2, "hash"),
        "export_bad_format": (["export", p_ok, "--out", tmp_path / "x", "--format", "onnx"], 2, "format"),
        "resume_into_non_run_dir": (["optimize", "--method", "zero-shot", "--data", DATA, "--out", tmp_path,
                                     "--overwrite"], 2, "not a promptlift run directory"),
        # endpoints (a dead endpoint: retries, then exit 4 within a bounded time)
        "dead_endpoint": (ev + ["--model", "openai:x", "--base-url", "http://127.0.0.1:9/v1", "--limit", 1], 4,
                          "connection"),
    }


CASES = sorted([
    "limit_zero", "limit_negative", "batch_size_zero", "shots_negative", "seed_negative", "chunk_size_zero",
    "api_unknown", "limit_not_a_number", "resume_without_predictions", "prompt_and_shots", "unknown_method",
    "unknown_method_option", "method_option_bad_type", "method_option_out_of_range", "lr_zero", "tiebreak_negative",
    "epochs_zero",
    "bad_choice", "few_shot_bad_selection", "option_without_value", "stray_argument", "budget_malformed",
    "budget_unknown_counter", "budget_not_number", "budget_time_not_duration", "budget_time_zero",
    "optimize_seed_negative", "generate_max_tokens_zero",
    "generate_temperature", "artifact_missing", "artifact_tampered", "artifact_unknown_field",
    "artifact_is_a_pickle", "artifact_tensor_path_escape", "generate_bad_artifact", "export_bad_format",
    "resume_into_non_run_dir", "dead_endpoint"])


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a local model is loaded: these errors must come first."""
    import promptlift.lm.hf as hf

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(hf.HFModel, "__init__", refuse)


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_with_its_exit_code(name, tmp_path, capsys, no_model_load, monkeypatch):
    monkeypatch.setenv("PROMPTLIFT_NO_CACHE", "1")
    (tmp_path / "user-file.txt").write_text("mine")  # a directory that is not a run
    args, code, needle = _cases(tmp_path)[name]
    capsys.readouterr()
    got = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert got == code, (got, out, err)
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("promptlift: error: "), err
    assert needle.lower() in lines[0].lower(), lines[0]
    assert (tmp_path / "user-file.txt").read_text() == "mine"
    import os

    assert not os.path.exists("/tmp/promptlift-pwned")


def test_json_errors_are_json(capsys, no_model_load):
    got = main(["eval", "--data", DATA, "--limit", "0", "--json"])
    err = capsys.readouterr().err
    assert got == 2 and json.loads(err) == {"error": "--limit must be N >= 1, got 0", "type": "ConfigError",
                                            "exit_code": 2}
