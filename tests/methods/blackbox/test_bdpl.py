"""BDPL (Diao et al. 2023): a categorical distribution per prompt position, trained by the variance-reduced
policy-gradient estimator from scores only. On a tiny random model and a learnable synthetic task it must beat
the prompt it starts from; its update must move probability toward lower loss; a resumed run must end as an
uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

import promptlift
from promptlift.methods.blackbox.bdpl import pg_gradient, pg_step, project_simplex
from promptlift.methods.shared import allowed_tokens, token_text, train_vocab
from fakes import learner, synth_task  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

OPTS = {"steps": 10, "tokens": 4, "samples": 8, "batch_size": 8, "lr": 0.002, "instruction": ""}


def history(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


def checkpoint(run_dir) -> dict:
    return json.loads((run_dir / "checkpoint" / "search.json").read_text())


def test_bdpl_improves_over_its_start_from_scores_only(tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize("bdpl", lm, task, out=tmp_path / "run", progress=False, seed=0, **OPTS)
    steps = [h for h in history(tmp_path / "run") if "best_dev" in h]
    assert run.prompt.meta["search"]["best_dev"] > steps[0]["best_dev"]  # step 0: the starting prompt on dev
    assert run.cost["backward"] == 0 and run.cost["forward"] > 0
    p = run.prompt
    pool = train_vocab(lm, task, allowed_tokens(lm), 100, task.instruction)
    assert p.ids[4:] == lm.encode(task.instruction) and set(p.ids[:4]) <= set(pool)
    # the artifact's ids decode to its text; `reencodes` says whether the text gives the ids back
    assert token_text(lm, p.ids) == p.text and p.meta["reencodes"] == (lm.encode(p.text) == p.ids)
    assert p.meta["pool"] == len(pool)
    # each step scores its 8 samples on 8 training examples, then its proposals on dev (cache hits free)
    assert run.prompt.meta["cost"]["target_calls"] >= 10 * 8 * 8
    probs = torch.tensor(checkpoint(tmp_path / "run")["data"]["probs"])
    assert probs.shape == (4, len(pool)) and torch.allclose(probs.sum(-1), torch.ones(4, dtype=probs.dtype))


def test_the_pool_is_the_task_s_frequent_tokens():
    lm, task = learner(), synth_task()
    pool = train_vocab(lm, task, allowed_tokens(lm), 5, "")
    words = " ".join(ex.input for ex in task.train)
    assert len(pool) == 5 and all(token_text(lm, [i]) in words for i in pool)
    assert lm.encode("the")[0] in pool  # in every input


def test_the_update_moves_probability_toward_lower_loss():
    probs = torch.full((2, 4), 0.25, dtype=torch.float64)
    samples = torch.tensor([[0, 3], [1, 3], [2, 3], [0, 3]])  # position 2 always picks token 3
    losses = torch.tensor([0.1, 1.0, 1.0, 0.2], dtype=torch.float64)
    g = pg_gradient(probs, samples, losses)
    # baseline of each sample: the mean of the other three losses
    adv = losses - (losses.sum() - losses) / 3
    assert torch.allclose(g[0], torch.tensor([adv[0] + adv[3], adv[1], adv[2], 0.0], dtype=torch.float64) * 4 / 4)
    assert torch.allclose(g[1, 3], adv.sum() * 4 / 4) and abs(float(g[1, 3])) < 1e-12  # advantages sum to zero
    new = pg_step(probs, samples, losses, lr=0.01)
    assert torch.allclose(new.sum(-1), torch.ones(2, dtype=torch.float64)) and (new >= 0).all()
    assert new[0, 0] > 0.25 > new[0, 1] and new[0, 1] == new[0, 2]  # the low-loss token gains
    assert torch.allclose(new[1], probs[1])  # no contrast at position 2: nothing learnt
    for _ in range(200):
        new = pg_step(new, samples, losses, lr=0.01)
    assert new[0, 0] == new[0].max() and new[0, 0] > 0.9


def test_projection_onto_the_simplex():
    v = torch.tensor([[0.5, 0.5, 0.5], [2.0, 0.0, -1.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    p = project_simplex(v)
    assert torch.allclose(p, torch.tensor([[1 / 3] * 3, [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64))


def test_bdpl_resumed_after_a_budget_stop_ends_as_an_uninterrupted_run(tmp_path):
    opts = {**OPTS, "steps": 5}
    full = promptlift.optimize("bdpl", learner(), synth_task(), out=tmp_path / "full", progress=False, **opts)
    cut = promptlift.optimize("bdpl", learner(), synth_task(), out=tmp_path / "cut", progress=False,
                              budget="forward=80", **opts)
    assert cut.stopped == "budget" and cut.prompt.meta["search"]["steps"] < 5
    resumed = promptlift.optimize("bdpl", learner(), synth_task(), out=tmp_path / "cut", progress=False,
                                  resume=True, **opts)
    assert resumed.prompt.meta["search"]["steps"] == 5
    assert resumed.prompt.ids == full.prompt.ids  # (its meta differs: the cut run paid for a step twice)
    assert resumed.prompt.meta["search"]["best_dev"] == full.prompt.meta["search"]["best_dev"]
    assert checkpoint(tmp_path / "cut")["data"] == checkpoint(tmp_path / "full")["data"]


def test_seed_changes_the_search():
    opts = {**OPTS, "steps": 3}
    a = promptlift.optimize("bdpl", learner(), synth_task(), progress=False, seed=0, eval_splits=(), **opts)
    b = promptlift.optimize("bdpl", learner(), synth_task(), progress=False, seed=1, eval_splits=(), **opts)
    c = promptlift.optimize("bdpl", learner(), synth_task(), progress=False, seed=0, eval_splits=(), **opts)
    assert a.prompt.hash == c.prompt.hash != b.prompt.hash
