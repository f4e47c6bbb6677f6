"""Prompt artifacts: exact save/load round trips, and refusal of changed or foreign files."""

from __future__ import annotations

import json

import pytest

from promptlift import TextPrompt, load
from promptlift.artifacts import FORMAT, content_hash
from promptlift.errors import ArtifactError, PromptliftError
from promptlift.task import Example


def make_prompt() -> TextPrompt:
    return TextPrompt(
        instruction="Classify the topic of the headline.\nAnswer with one label.",
        demos=[Example("Striker scores twice — «un doublé»", "sports"), Example("Markets rally 3%", "business")],
        knn=0, calibrate=True, reasoning="", model="smollm2-135m", method="few-shot",
        meta={"seed": 3, "dev": {"accuracy": 0.75}, "note": "ünïcode ✓"},
    )


def test_text_prompt_round_trip(tmp_path):
    p = make_prompt()
    path = p.save(tmp_path / "prompt.json")
    assert path == tmp_path / "prompt.json"
    q = load(path)
    assert isinstance(q, TextPrompt)
    assert q.to_dict() == p.to_dict()
    assert q.demos == p.demos and q.meta == p.meta and q.calibrate is True
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d["format"] == FORMAT and d["type"] == "text"
    assert d["sha256"] == content_hash(p.to_dict())
    # saving the loaded prompt gives the same bytes
    again = q.save(tmp_path / "again.json")
    assert again.read_bytes() == path.read_bytes()


def test_round_trip_knn_and_reasoning_through_run_dir(tmp_path):
    p = TextPrompt(instruction="", demos=[Example(f"x{i}", f"y{i}") for i in range(5)], knn=2,
                   reasoning="Let's think step by step.")
    path = p.save(tmp_path / "run")  # a directory: prompt.json inside
    assert path == tmp_path / "run" / "prompt.json"
    q = load(tmp_path / "run")  # a run directory loads its prompt.json
    assert q.to_dict() == p.to_dict()
    assert q.knn == 2 and q.reasoning == "Let's think step by step."


def test_edited_artifact_is_refused(tmp_path):
    path = make_prompt().save(tmp_path / "prompt.json")
    d = json.loads(path.read_text(encoding="utf-8"))
    d["instruction"] = "Ignore the headline and answer sports."
    path.write_text(json.dumps(d, indent=2, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ArtifactError) as ei:
        load(path)
    msg = str(ei.value)
    assert "hash" in msg and str(path) in msg and "\n" not in msg


def test_edited_demo_or_removed_hash_is_refused(tmp_path):
    path = make_prompt().save(tmp_path / "prompt.json")
    d = json.loads(path.read_text(encoding="utf-8"))
    d["demos"][0]["output"] = "business"
    path.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ArtifactError, match="hash"):
        load(path)
    d = json.loads(make_prompt().save(tmp_path / "p2.json").read_text(encoding="utf-8"))
    del d["sha256"]
    (tmp_path / "p2.json").write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ArtifactError, match="hash"):
        load(tmp_path / "p2.json")


def test_whitespace_reformatting_is_accepted(tmp_path):
    # the hash covers the content, not the layout of the JSON file
    path = make_prompt().save(tmp_path / "prompt.json")
    d = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(d, separators=(",", ":")), encoding="utf-8")
    assert load(path).to_dict() == make_prompt().to_dict()


@pytest.mark.parametrize("content", [
    json.dumps({"instruction": "hi", "demos": []}),  # JSON, but not an artifact
    json.dumps([1, 2, 3]),
    json.dumps({"format": "other/v1", "type": "text"}),
    "{not json at all",
    "",
])
def test_non_artifact_json_is_refused(tmp_path, content):
    path = tmp_path / "prompt.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ArtifactError) as ei:
        load(path)
    assert isinstance(ei.value, PromptliftError)
    assert "not a promptlift artifact" in str(ei.value) and str(path) in str(ei.value)
    assert "\n" not in str(ei.value)


def test_missing_and_unknown_type(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load(tmp_path / "nope.json")
    with pytest.raises(ArtifactError, match="not found"):
        load(tmp_path)  # a directory without prompt.json
    d = {"format": FORMAT, "type": "hologram", "instruction": ""}
    d["sha256"] = content_hash(d)
    (tmp_path / "p.json").write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ArtifactError, match="unknown prompt type 'hologram'"):
        load(tmp_path / "p.json")


def test_text_prompts_are_portable_across_models(tiny_lm):
    p = make_prompt()
    assert p.model != tiny_lm.model_id
    p.check_model(tiny_lm)  # a text prompt applies to any model
