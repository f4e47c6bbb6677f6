"""Prompt artifacts: exact save/load round trips, and refusal of changed or foreign files."""

from __future__ import annotations

import json

import pytest

import torch

from promptlift import TextPrompt, load
from promptlift.artifacts import (FORMAT, Calibrated, KnnPrompt, LatePrompt, MixturePrompt, PrefixPrompt, Reasoning,
                                  SelectorPrompt, SoftPrompt, TokenPrompt, artifact_types, content_hash)
from promptlift.errors import ArtifactError, PromptliftError
from promptlift.task import Example
from fakes import ctx  # noqa: F401


def make_prompt() -> TextPrompt:
    return TextPrompt(
        instruction="Classify the topic of the headline.\nAnswer with one label.",
        demos=[Example("Striker scores twice — «un doublé»", "sports"), Example("Markets rally 3%", "business")],
        model="smollm2-135m", method="few-shot", task="topics",
        meta={"seed": 3, "dev": {"accuracy": 0.75}, "note": "ünïcode ✓", "lr": 0.1 + 0.2},
    )


def _every_type() -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    soft = SoftPrompt(instruction="Classify.", embeds=torch.randn(3, 8, generator=g), split=1, hidden_size=8,
                      num_layers=2, model="tiny")
    prefix = PrefixPrompt(instruction="", keys=torch.randn(2, 2, 3, 4, generator=g).to(torch.bfloat16),
                          values=torch.randn(2, 2, 3, 4, generator=g), position="prepend", model="tiny")
    knn = KnnPrompt(instruction="Pick.", pool=[Example(f"x{i}", f"y{i}") for i in range(5)], k=2, embedder="tfidf")
    token = TokenPrompt(ids=[17, 3, 250, 3], text=" great «x»\n", model="tiny", meta={"reencodes": False})
    late = LatePrompt(instruction="Say.", embeds=torch.randn(2, 8, generator=g).to(torch.bfloat16), layer=1,
                      ids=[5, 9], hidden_size=8, num_layers=2, model="tiny")
    return {"text": make_prompt(), "knn": knn, "token": token, "soft": soft, "prefix": prefix, "late": late,
            "calibrated": Calibrated(inner=soft, content_free=["N/A"]),
            "reasoning": Reasoning(inner=Calibrated(inner=knn), trigger="Think."),
            "mixture": MixturePrompt(members=[soft, make_prompt(), Calibrated(inner=soft)],
                                     weights=torch.randn(3, generator=g), gate=torch.randn(3, 8, generator=g)),
            "selector": SelectorPrompt(members=[soft, make_prompt()], features="tfidf", dim=3, vocab=["a", "b", "ü"],
                                       idf=torch.randn(3, generator=g), w1=torch.randn(4, 3, generator=g),
                                       b1=torch.randn(4, generator=g), w2=torch.randn(2, 4, generator=g),
                                       b2=torch.randn(2, generator=g))}


def test_every_registered_type_is_covered():
    assert set(_every_type()) == set(artifact_types())


@pytest.mark.parametrize("name", sorted(_every_type()))
def test_round_trip_is_bit_exact(tmp_path, name):
    p = _every_type()[name]
    path = p.save(tmp_path / "run")  # a directory: prompt.json inside
    assert path == tmp_path / "run" / "prompt.json"
    q = load(tmp_path / "run")  # a run directory loads its prompt.json
    assert type(q) is type(p) and q.to_dict() == p.to_dict() and q.hash == p.hash
    for k, t in p.tensors().items():
        got = q.tensors()[k]
        assert got.dtype == t.dtype and torch.equal(got, t)
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d["format"] == FORMAT and d["type"] == p.type and d["sha256"] == p.hash
    again = q.save(tmp_path / "again")  # saving the loaded prompt gives the same bytes
    assert again.read_bytes() == path.read_bytes()
    if p.tensors():
        assert again.with_suffix(".safetensors").read_bytes() == path.with_suffix(".safetensors").read_bytes()


def test_artifacts_hold_data_only():
    # no artifact type carries inference behaviour: the engine's appliers do
    for cls in artifact_types().values():
        for name in ("prefix", "rows", "layout", "check_model", "forward"):
            assert not hasattr(cls, name), (cls.__name__, name)


def test_text_only_tells_text_from_vectors():
    every = _every_type()
    assert every["text"].text_only and every["knn"].text_only and every["reasoning"].text_only
    assert not every["soft"].text_only and not every["calibrated"].text_only


def test_tampered_tensor_file_is_refused(tmp_path):
    path = _every_type()["soft"].save(tmp_path / "p")
    from safetensors.torch import load_file, save_file

    t = load_file(str(path.with_suffix(".safetensors")))
    t["embeds"][0, 0] += 1e-3
    save_file(t, str(path.with_suffix(".safetensors")))
    with pytest.raises(ArtifactError, match="hash"):
        load(path)


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
    from promptlift.engine.evaluate import check_model

    p = make_prompt()
    assert p.model != tiny_lm.model_id
    check_model(p, tiny_lm)  # a text prompt applies to any model


def test_use_on_another_task_or_model_notes_or_refuses(tiny_lm, capsys):
    from promptlift import Task, evaluate

    task = Task(name="here", kind="classification", train=[Example("a", "x"), Example("b", "y")],
                test=[Example("a", "x")], labels={"x": "the", "y": "up"})
    evaluate(tiny_lm, task, TextPrompt(model="other-model", task="elsewhere"), progress=False)
    err = capsys.readouterr().err
    assert "found on model 'other-model'" in err and "made for task 'elsewhere', not 'here'" in err
    soft = SoftPrompt(embeds=torch.zeros(2, tiny_lm.hidden_size), model="other-model")
    with pytest.raises(ArtifactError, match="other-model"):
        evaluate(tiny_lm, task, soft, progress=False)


@pytest.mark.parametrize("name", sorted(_every_type()))
def test_the_hash_is_cached_per_version_and_follows_every_change(name):
    import copy
    import dataclasses

    p = _every_type()[name]
    first = p.hash
    assert p.__dict__["_hash_cache"][1] == first  # read once, kept on the artifact
    assert p.hash == first == dataclasses.replace(p).hash  # a fresh computation agrees
    p.meta = {**p.meta, "note": "changed"}  # a field assigned: a new version
    assert p.hash != first
    twin = copy.deepcopy(p)
    assert "_hash_cache" not in twin.__dict__  # copies start without it
    twin.meta["more"] = 1
    assert twin.hash != p.hash
    tensors = p.tensors()
    if tensors:  # a tensor changed in place, even inside a wrapped artifact: a new version
        before = p.hash
        with torch.no_grad():
            next(iter(tensors.values())).add_(1)
        assert p.hash != before and p.hash == dataclasses.replace(p).hash


def test_optimize_does_not_change_the_artifact_fit_returned(tiny_lm, monkeypatch):
    import dataclasses

    import promptlift
    from promptlift.methods.baseline.zero_shot import ZeroShot

    returned = []
    fit = ZeroShot.fit

    def spy(self, lm, task, ctx):
        p = fit(self, lm, task, ctx)
        returned.append((p, dataclasses.replace(p), p.hash))
        return p

    monkeypatch.setattr(ZeroShot, "fit", spy)
    task = promptlift.Task.from_rows({"train": [{"input": "a", "output": "x"}], "dev": [{"input": "b", "output": "y"}]},
                                     name="t", kind="generation", instruction="Say.")
    run = promptlift.optimize("zero-shot", tiny_lm, task, progress=False, eval_splits=())
    (p, snapshot, h), = returned
    assert p == snapshot and p.hash == h  # the method's artifact is left as it was
    assert run.prompt.method == "zero-shot" and run.prompt.task == "t" and p.method == ""
