"""BBTv2 (deep prompts per layer, one CMA-ES per layer, forward passes only) on a tiny random model and a
learnable synthetic task: it beats its start, resumes exactly after a stop, and its artifact round-trips."""

from __future__ import annotations

import json

import pytest
import torch

import promptlift
from promptlift.artifacts import PrefixPrompt, load
from promptlift.engine.evaluate import classify_scores
from fakes import learner, synth_task  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

V2 = {"steps": 12, "popsize": 6, "dim": 8, "tokens": 4, "train_examples": 16}


def history(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


def test_bbt_v2_improves_over_its_start_with_forward_passes_only(tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize("bbt-v2", lm, task, out=tmp_path / "run", progress=False, seed=1, **V2)
    steps = [h for h in history(tmp_path / "run") if "best_dev" in h]
    assert run.prompt.meta["search"]["best_dev"] > steps[0]["best_dev"]
    assert run.cost["backward"] == 0 and run.cost["forward"] > 0
    p = run.prompt
    assert isinstance(p, PrefixPrompt) and p.keys.shape == (lm.num_layers, lm.num_kv_heads, 4, lm.hidden_size // 4)
    assert run.dev.accuracy == p.meta["search"]["best_dev"]  # the artifact is the candidate the loop selected
    # one CMA-ES per layer, generations in turn: each layer's z has moved or stayed at zero, never another size
    z = p.meta["subspace"]["z"]
    assert len(z) == lm.num_layers and all(len(zl) == V2["dim"] for zl in z)
    ckpt = json.loads((tmp_path / "run" / "checkpoint" / "search.json").read_text())
    assert len(ckpt["data"]["fitness"]) == V2["steps"] and all(len(f) == V2["popsize"] for f in ckpt["data"]["fitness"])
    # cost: the starts on dev, the start's training loss, each generation on train, the picks on dev (cached repeats free)
    dev = len({(e.input, e.output) for e in task.dev})
    spent = p.meta["cost"]["target_calls"]
    assert 3 * dev + 16 + V2["steps"] * 6 * 16 <= spent <= 3 * dev + 16 + V2["steps"] * (6 * 16 + dev)


def test_bbt_v2_only_one_layer_changes_per_generation():
    from promptlift.methods.blackbox.bbt_v2 import BBTv2Config, BBTv2Search

    lm, task = learner(), synth_task()
    s = BBTv2Search("bbt-v2", BBTv2Config(**V2), lm, task, seed=0)
    zs = [[0.0] * 8 for _ in range(lm.num_layers)]
    moved = [list(z) for z in zs]
    moved[1] = [1.0] * 8
    a, b = s.prompt(zs), s.prompt(moved)
    assert torch.equal(a.keys[0], b.keys[0]) and torch.equal(a.values[0], b.values[0])
    assert not torch.equal(a.keys[1], b.keys[1]) and not torch.equal(a.values[1], b.values[1])
    # at z = 0 the prefix is the keys/values of the starting tokens (as p-tuning v2 starts)
    from promptlift.methods.shared import init_kv

    k0, v0 = init_kv(lm, s.init_ids)
    assert torch.equal(a.keys, k0) and torch.equal(a.values, v0)


def test_bbt_v2_resumed_after_a_budget_stop_ends_as_an_uninterrupted_run(tmp_path):
    opts = {**V2, "steps": 6}
    full = promptlift.optimize("bbt-v2", learner(), synth_task(), out=tmp_path / "full", progress=False, **opts)
    cut = promptlift.optimize("bbt-v2", learner(), synth_task(), out=tmp_path / "cut", progress=False,
                              budget="forward=70", **opts)
    assert cut.stopped == "budget" and cut.prompt.meta["search"]["steps"] < 6
    resumed = promptlift.optimize("bbt-v2", learner(), synth_task(), out=tmp_path / "cut", progress=False,
                                  resume=True, **opts)
    assert resumed.prompt.meta["search"]["steps"] == 6
    assert torch.equal(resumed.prompt.keys, full.prompt.keys) and torch.equal(resumed.prompt.values, full.prompt.values)
    assert resumed.prompt.meta["subspace"] == full.prompt.meta["subspace"]
    assert resumed.prompt.meta["search"]["best_dev"] == full.prompt.meta["search"]["best_dev"]


def test_bbt_v2_artifact_round_trips_and_evaluates(tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize("bbt-v2", lm, task, out=tmp_path / "run", progress=False, seed=0, **{**V2, "steps": 2})
    p = load(tmp_path / "run")
    assert isinstance(p, PrefixPrompt) and p.hash == run.prompt.hash
    assert torch.equal(p.keys, run.prompt.keys) and torch.equal(p.values, run.prompt.values)
    exs = task.dev[:8]
    assert torch.equal(classify_scores(lm, task, p, exs), classify_scores(lm, task, run.prompt, exs))
    r = promptlift.evaluate(lm, task, p, split="dev", progress=False)
    assert r.accuracy == run.dev.accuracy
