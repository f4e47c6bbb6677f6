"""RLPrompt (Deng et al. 2022): an MLP policy on the frozen model's hidden states writes prompt tokens and learns
by REINFORCE from the paper's classification reward, z-scored. On a tiny random model and a learnable synthetic
task it must beat the prompt it starts from; its update must raise the likelihood of rewarded prompts; a
resumed run must end as an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

import promptlift
from promptlift.methods.shared import allowed_tokens, token_text, train_vocab
from promptlift.methods.blackbox.rlprompt import (PromptPolicy, adam_step, gap_reward, pack, reinforce_grads, unpack,
                                              zscore)
from fakes import learner, synth_task  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

OPTS = {"steps": 6, "tokens": 4, "samples": 8, "batch_size": 8, "lr": 0.001, "instruction": ""}


def history(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


def checkpoint(run_dir) -> dict:
    return json.loads((run_dir / "checkpoint" / "search.json").read_text())


def test_rlprompt_improves_over_its_start_from_scores_only(tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize("rlprompt", lm, task, out=tmp_path / "run", progress=False, seed=0, **OPTS)
    steps = [h for h in history(tmp_path / "run") if "best_dev" in h]
    assert run.prompt.meta["search"]["best_dev"] > steps[0]["best_dev"]  # step 0: the starting prompt on dev
    assert run.cost["backward"] == 0  # the task model is never differentiated (only the policy's MLP is)
    p = run.prompt
    pool = train_vocab(lm, task, allowed_tokens(lm), 100, task.instruction)
    assert p.ids[4:] == lm.encode(task.instruction) and set(p.ids[:4]) <= set(pool)
    assert token_text(lm, p.ids) == p.text and p.meta["reencodes"] == (lm.encode(p.text) == p.ids)
    data = checkpoint(tmp_path / "run")["data"]
    assert len(data["rewards"]) == 6 and all(len(r) == 8 for r in data["rewards"])
    assert data["policy"]["t"] == 6  # one Adam step per search step


def test_the_reward_is_the_label_probability_gap_scaled_as_the_paper():
    scores = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]]))  # (E=2, labels=3)
    r = gap_reward(scores, torch.tensor([0, 0]))
    assert torch.allclose(r, torch.tensor([200 * 0.5, 180 * -0.3]))
    z = zscore(torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(z.mean(), torch.tensor(0.0)) and torch.allclose(z.std(unbiased=False), torch.tensor(1.0))
    assert torch.equal(zscore(torch.tensor([2.0, 2.0])), torch.zeros(2))  # equal rewards: nothing to learn


def test_the_update_raises_the_likelihood_of_the_rewarded_prompt():
    lm = learner()
    pool = torch.arange(3, 23)
    policy = PromptPolicy(lm.hidden_size, 16, seed=0)
    hs = torch.randn(3, 2, lm.hidden_size, generator=torch.Generator().manual_seed(0))  # (I, k, hidden)
    acts = torch.tensor([[1, 2], [5, 6], [9, 9]])  # (I, k) pool indices
    z = zscore(torch.tensor([10.0, -5.0, -5.0]))

    def logp():
        with torch.no_grad():
            lp = policy.logits(lm, hs, pool).log_softmax(-1)  # (I, k, P)
        return lp.gather(-1, acts[..., None]).squeeze(-1).sum(-1)  # (I,)

    before = logp()
    assert torch.allclose(before, torch.full((3,), 2 * torch.log(torch.tensor(1 / 20))), atol=1e-3)  # ~uniform
    params = dict(policy.named_parameters())
    m = {k: torch.zeros_like(p) for k, p in params.items()}
    v = {k: torch.zeros_like(p) for k, p in params.items()}
    for t in range(1, 6):
        grads = reinforce_grads(policy, lm, hs, acts, z, pool)
        with torch.no_grad():
            adam_step(params, grads, m, v, t, lr=0.01)
    after = logp()
    assert after[0] > before[0] and (after[1:] < before[1:]).all()


def test_policy_state_round_trips_exactly_through_json():
    t = torch.randn(5, 7)
    assert torch.equal(unpack(json.loads(json.dumps(pack(t)))), t)


def test_rlprompt_resumed_after_a_budget_stop_ends_as_an_uninterrupted_run(tmp_path):
    opts = {**OPTS, "steps": 5}
    full = promptlift.optimize("rlprompt", learner(), synth_task(), out=tmp_path / "full", progress=False, **opts)
    cut = promptlift.optimize("rlprompt", learner(), synth_task(), out=tmp_path / "cut", progress=False,
                              budget="forward=100", **opts)
    assert cut.stopped == "budget" and cut.prompt.meta["search"]["steps"] < 5
    resumed = promptlift.optimize("rlprompt", learner(), synth_task(), out=tmp_path / "cut", progress=False,
                                  resume=True, **opts)
    assert resumed.prompt.meta["search"]["steps"] == 5
    assert resumed.prompt.ids == full.prompt.ids  # (its meta differs: the cut run paid for a step twice)
    assert checkpoint(tmp_path / "cut")["data"] == checkpoint(tmp_path / "full")["data"]  # weights bit for bit
