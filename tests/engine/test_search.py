"""The shared search loop and candidate selection, with a scripted optimizer and a rule-following target.

The fakes (`ScriptedLM`, `RuleTarget`, `toy_task`) are in tests/fakes.py.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from fakes import RuleTarget, ScriptedLM, ctx, learner, sentiment_rule, synth_task, toy_task  # noqa: F401

from promptlift.artifacts import SoftPrompt, TextPrompt, load
from promptlift.engine.search import Candidate, Limits, SearchSettings, SearchState, search
from promptlift.engine.select import SelectConfig, cost_to_finish, estimate_calls, select
from promptlift.errors import ArtifactError, ConfigError
from promptlift.lm.base import LM
from promptlift.lm.budget import Budget
from promptlift.task import Task

# --- a minimal search method ---------------------------------------------------------------------


class Paraphraser:
    """A minimal search method: each step proposes `k` optimizer answers as instructions."""

    name = "paraphraser"

    def __init__(self, steps: int = 3, k: int = 2, selection: str = "full", patience: int = 0):
        self.steps, self.k, self.selection, self.patience = steps, k, selection, patience

    def search_settings(self):
        return SearchSettings(steps=self.steps, selection=self.selection, patience=self.patience)

    def initial(self, state):
        return [TextPrompt(instruction=state.task.instruction)]

    def propose(self, state):
        texts = state.ask("Rewrite: " + state.task.instruction, n=self.k, temperature=1.0)
        return [Candidate(TextPrompt(instruction=t), origin="rewrite") for t in texts]

    def update(self, state, scored):
        state.data.setdefault("seen", []).extend(r.key for r in scored)

    def estimate(self, state):
        n = len(state.dev)
        return {"target_calls": n * (1 + self.steps * self.k), "optimizer_calls": self.steps * self.k}


def numbered(text, seed, j):
    return f"variant {seed % 97} {j}"


# --- the loop -------------------------------------------------------------------------------
def test_search_improves_and_reports_cost(capsys):
    task = toy_task()
    opt = ScriptedLM(["say the sentiment", "write a poem"])
    target = RuleTarget(sentiment_rule)
    rows: list = []
    p = search(Paraphraser(steps=2), target, task, ctx(optimizer=opt, rows=rows))
    assert p.instruction == "say the sentiment"
    cost = p.meta["cost"]
    assert cost["optimizer_calls"] == 4 and len(opt.requests) == 2  # 2 requests of n=2: one call per proposal
    # initial 8 + "say the sentiment" 8 + "write a poem" 8; step 2 re-proposes both: free from the score cache
    assert cost["target_calls"] == target.answered == 24
    assert cost["cached_target_calls"] == 16
    assert cost["calls"] == 28
    assert p.meta["search"]["best_dev"] == 1.0
    err = capsys.readouterr().err
    assert "target calls" in err and "spent 28 calls" in err  # estimate before, spend after
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[-1]["best_dev"] == 1.0
    # one ledger (the target's own budget when the search runs alone) holds the whole use: the loop's calls,
    # the backends' own requests apart (24 answers + 2 proposal requests); the optimizer keeps no second count
    assert (target.budget.calls, target.budget.target_calls, target.budget.optimizer_calls) == (28, 24, 4)
    assert target.budget.requests == 26 and opt.budget.calls == 0 and opt.budget.requests == 0


def test_target_proposes_for_itself_by_default():
    target = RuleTarget(sentiment_rule, proposals=["tell the sentiment"])
    p = search(Paraphraser(steps=1, k=1), target, toy_task(), ctx())
    assert p.instruction == "tell the sentiment"
    assert p.meta["search"]["optimizer"] == "rule-target" and target.proposed == 1


@pytest.mark.parametrize("limit", ["calls", "target_calls", "optimizer_calls", "tokens"])
def test_budget_never_exceeded_and_best_is_kept(limit, capsys):
    task = toy_task()
    opt = ScriptedLM(numbered)
    target = RuleTarget(sentiment_rule)
    cap = {"calls": 30, "target_calls": 21, "optimizer_calls": 3, "tokens": 60}[limit]
    target.budget = Budget(limits={limit: cap})  # what --budget sets on the target model
    p = search(Paraphraser(steps=50), target, task, ctx(optimizer=opt))
    cost = p.meta["cost"]
    if limit == "tokens":
        assert cost["tokens"] < cap + 40  # checked before each call: at most one call past it
    else:
        assert cost[limit] <= cap
    assert cost["target_calls"] == target.answered
    assert p.meta["search"]["stopped"] == "budget"
    assert p.meta["search"]["best_dev"] is not None  # the starting prompt, scored, is kept
    assert "keeping the best prompt so far" in capsys.readouterr().err


def test_budget_too_small_for_anything_returns_the_starting_prompt():
    target = RuleTarget(sentiment_rule)
    p = search(Paraphraser(), target, toy_task(), ctx(optimizer=ScriptedLM(numbered)), limits={"target_calls": 3})
    assert p.instruction == toy_task().instruction and target.answered == 0
    assert p.meta["search"]["best_dev"] is None


def test_score_cache_makes_a_second_evaluation_free():
    task = toy_task()
    target = RuleTarget(sentiment_rule)
    state = SearchState("t", task, target, target, SearchSettings(), 0, Limits())
    p = TextPrompt(instruction="the sentiment")
    first = state.score(p, task.dev)
    assert state.spend.target_calls == 8 and target.answered == 8
    again = state.score(TextPrompt(instruction="the sentiment"), task.dev[:4] + task.dev)  # same hash, overlapping
    assert again[4:] == first
    assert state.spend.target_calls == 8 and target.answered == 8
    assert state.spend.cached_target_calls == 12
    assert state.dev_score(p.hash) == 1.0
    # another target model does not share the cache
    other = RuleTarget(sentiment_rule, model_id="other-target")
    state.target = other
    state.score(p, task.dev[:2])
    assert other.answered == 2


def test_dev_subset_is_fixed_spread_and_in_file_order():
    from promptlift.engine.search import dev_subset

    dev = toy_task(n_dev=16).dev  # sorted: 8 positive, then 8 negative
    sub = dev_subset(dev, 8)
    assert sub == dev_subset(dev, 8) and len(sub) == 8 and sub != dev[:8]
    assert [dev.index(e) for e in sub] == sorted(dev.index(e) for e in sub)
    assert {e.output for e in sub} == {"positive", "negative"}
    assert dev_subset(dev, 0) == dev == dev_subset(dev, 99)


def test_unusable_methods_options_and_limits_are_rejected():
    with pytest.raises(ConfigError):
        SearchSettings(selection="greedy")
    with pytest.raises(ConfigError):
        Limits.from_budget(Budget(), {"call": 3})
    assert Limits.from_budget(Budget(limits={"calls": 5, "forward": 9})).calls == 5


def test_seed_zero_is_honoured_and_seeds_change_proposals():
    def run(seed):
        opt = ScriptedLM(numbered)
        p = search(Paraphraser(steps=2), RuleTarget(sentiment_rule), toy_task(), ctx(seed=seed, optimizer=opt))
        return p, [c.seed for c in opt.configs]

    p0, seeds0 = run(0)
    assert seeds0[0] == random.Random(0).randrange(2**31)  # the request seed comes from Random(ctx.seed), 0 included
    assert run(0)[1] == seeds0 and run(0)[0].hash == p0.hash
    assert run(1)[1] != seeds0


def test_resume_after_kill_ends_like_an_uninterrupted_run(tmp_path):
    task = toy_task()

    def replies(text, seed, j):  # one in seven proposals reads the sentiment, late in the run
        return "judge the sentiment" if (seed + j) % 7 == 0 else f"variant {seed % 1000} {j}"

    full_opt = ScriptedLM(replies)
    full = search(Paraphraser(steps=5), RuleTarget(sentiment_rule), task, ctx(tmp_path / "a", optimizer=full_opt))

    rows: list = []
    killed = ScriptedLM(replies, fail_at=3)  # dies during step 4
    with pytest.raises(KeyboardInterrupt):
        search(Paraphraser(steps=5), RuleTarget(sentiment_rule), task, ctx(tmp_path / "b", optimizer=killed, rows=rows))
    ckpt = json.loads((tmp_path / "b" / "checkpoint" / "search.json").read_text())
    assert ckpt["step"] == 3 and ckpt["format"] == "promptlift.search/v1"

    target = RuleTarget(sentiment_rule)
    resumed = search(Paraphraser(steps=5), target, task,
                     ctx(tmp_path / "b", resume=True, optimizer=ScriptedLM(replies), rows=rows))
    assert resumed.instruction == full.instruction
    assert resumed.meta["search"]["best_dev"] == full.meta["search"]["best_dev"]
    assert resumed.meta["search"]["candidates"] == full.meta["search"]["candidates"]
    assert resumed.meta["cost"] == full.meta["cost"]  # the lost half-step was not charged: it had no scores yet
    assert target.answered <= 2 * 2 * 8  # only steps 4 and 5 (2 proposals of 8 examples each) are paid

    # a finished run resumes to the same result at no cost
    again_target = RuleTarget(sentiment_rule)
    again = search(Paraphraser(steps=5), again_target, task,
                   ctx(tmp_path / "b", resume=True, optimizer=ScriptedLM(replies)))
    assert again.instruction == full.instruction and again_target.answered == 0


def test_resume_with_other_settings_is_refused(tmp_path):
    search(Paraphraser(steps=1), RuleTarget(sentiment_rule), toy_task(), ctx(tmp_path, optimizer=ScriptedLM(numbered)))
    with pytest.raises(ConfigError, match="other settings"):
        search(Paraphraser(steps=1), RuleTarget(sentiment_rule), toy_task(),
               ctx(tmp_path, seed=1, resume=True, optimizer=ScriptedLM(numbered)))


def test_budget_stop_checkpoints_paid_scores_and_resume_continues(tmp_path):
    task = toy_task()
    opt = ScriptedLM(numbered)
    target = RuleTarget(sentiment_rule)
    target.budget = Budget(limits={"target_calls": 20})
    first = search(Paraphraser(steps=3), target, task, ctx(tmp_path, optimizer=opt))
    assert first.meta["search"]["stopped"] == "budget"
    target2 = RuleTarget(sentiment_rule)  # a larger budget: the run goes on where it stopped
    done = search(Paraphraser(steps=3), target2, task, ctx(tmp_path, resume=True, optimizer=ScriptedLM(numbered)))
    assert done.meta["search"]["stopped"] == "" and done.meta["search"]["steps"] == 3
    full = search(Paraphraser(steps=3), RuleTarget(sentiment_rule), task, ctx(optimizer=ScriptedLM(numbered)))
    assert done.meta["search"]["candidates"] == full.meta["search"]["candidates"]
    assert target.answered + target2.answered == full.meta["cost"]["target_calls"]  # nothing scored twice


def test_a_selection_the_budget_cannot_finish_is_cut_to_what_it_can_and_its_best_kept(tmp_path):
    # dev 8: the start costs 8; halving among all four proposals could cost 24 more, 16 are left: the
    # first two are selected to the end (12 at most) and the better one, scored on all of dev, is kept
    script = ["judge the sentiment", "variant a", "variant b", "variant c"]
    target = RuleTarget(sentiment_rule)
    target.budget = Budget(limits={"target_calls": 24})
    p = search(Paraphraser(steps=3, k=4, selection="halving"), target, toy_task(),
               ctx(tmp_path, optimizer=ScriptedLM(lambda text, seed, j: script[j])))
    assert p.instruction == "judge the sentiment" and p.meta["search"]["best_dev"] == 1.0
    assert p.meta["search"]["stopped"] == "budget" and target.answered <= 24
    assert cost_to_finish("halving", 2, 8) == 12 < 16 < cost_to_finish("halving", 3, 8) == 20


def test_cost_to_finish_includes_the_top_s_whole_dev_score():
    cfg = SelectConfig(min_examples=4)
    assert cost_to_finish("full", 3, 8, cfg) == 24 == estimate_calls("full", 3, 8, cfg)
    assert cost_to_finish("halving", 1, 32, cfg) == 32  # one candidate: its first round, then the rest of dev
    assert cost_to_finish("halving", 8, 32, cfg) == estimate_calls("halving", 8, 32, cfg)  # survivors see all
    assert cost_to_finish("ucb", 4, 40, cfg) == estimate_calls("ucb", 4, 40, cfg) + 40
    assert cost_to_finish("ucb", 2, 4, cfg) == 8 and cost_to_finish("full", 0, 8) == 0


def test_patience_stops_a_search_without_progress():
    p = search(Paraphraser(steps=10, patience=2), RuleTarget(sentiment_rule), toy_task(),
               ctx(optimizer=ScriptedLM(numbered)))
    assert p.meta["search"]["stopped"] == "patience" and p.meta["search"]["steps"] == 2


def test_duplicate_candidates_in_a_step_are_counted_and_scored_once():
    target = RuleTarget(sentiment_rule)
    p = search(Paraphraser(steps=1, k=3), target, toy_task(), ctx(optimizer=ScriptedLM(["same", "same", "same"])))
    assert p.meta["search"]["skipped"] == {"duplicate": 2}
    assert target.answered == 16


class SoftWalker:
    """A search over soft prompts: each step proposes `k` random perturbations of the best so far.

    `kill_at=s` raises KeyboardInterrupt in step s's proposals, as a kill would stop a run.
    """

    name = "soft-walker"

    def __init__(self, hidden: int, steps: int = 4, k: int = 2, kill_at: int | None = None):
        self.hidden, self.steps, self.k, self.kill_at = hidden, steps, k, kill_at

    def search_settings(self):
        return SearchSettings(steps=self.steps)

    def initial(self, state):
        return [SoftPrompt(instruction="Classify.", embeds=torch.zeros(3, self.hidden), model=state.target.model_id)]

    def propose(self, state):
        if state.step == self.kill_at:
            raise KeyboardInterrupt("killed")
        best = state.prompts[state.best()[0]]
        g = torch.Generator().manual_seed(state.rng.randrange(2**31))
        return [Candidate(SoftPrompt(instruction="Classify.", model=state.target.model_id,
                                     embeds=best.embeds + torch.randn(best.embeds.shape, generator=g)))
                for _ in range(self.k)]

    def update(self, state, scored):
        state.data.setdefault("tried", []).extend(r.key for r in scored)


@pytest.mark.usefixtures("one_thread")
def test_soft_prompt_candidates_are_checkpointed_and_resume_exactly(tmp_path):
    """Tensor candidates are saved beside search.json by hash; a killed run resumes to the same result."""
    from fakes import learner, synth_task

    task, lm = synth_task(), learner()
    full = search(SoftWalker(lm.hidden_size), lm, task, ctx(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        search(SoftWalker(lm.hidden_size, kill_at=3), learner(), task, ctx(tmp_path / "b"))
    ckpt = json.loads((tmp_path / "b" / "checkpoint" / "search.json").read_text())
    assert ckpt["step"] == 2 and all(c["saved"] == f"candidates/{c['key']}" for c in ckpt["candidates"])
    for c in ckpt["candidates"]:  # each an artifact of its own, with its content hash
        assert load(tmp_path / "b" / "checkpoint" / c["saved"]).hash == c["key"]

    resumed = search(SoftWalker(lm.hidden_size), learner(), task, ctx(tmp_path / "b", resume=True))
    assert isinstance(resumed, SoftPrompt) and resumed.hash == full.hash
    assert torch.equal(resumed.embeds, full.embeds)
    assert resumed.meta["search"] == full.meta["search"] and resumed.meta["cost"] == full.meta["cost"]

    # a changed candidate file is refused, not silently used
    c = ckpt["candidates"][1]
    (tmp_path / "b" / "checkpoint" / c["saved"] / "prompt.safetensors").write_bytes(
        (tmp_path / "b" / "checkpoint" / ckpt["candidates"][2]["saved"] / "prompt.safetensors").read_bytes())
    with pytest.raises(ArtifactError):
        search(SoftWalker(lm.hidden_size), learner(), task, ctx(tmp_path / "b", resume=True))


# --- selection ---------------------------------------------------------------------------------
def make_scorer(accuracies: list[float], n: int):
    """Candidate i answers example e correctly iff e < accuracies[i] * n; records every (i, e) scored."""
    asked: list[tuple[int, int]] = []

    def scorer(i, exs):
        asked.extend((i, e) for e in exs)
        return [1.0 if e < accuracies[i] * n else 0.0 for e in exs]

    return scorer, asked


def test_full_selection_scores_everything_and_ranks_ties_by_order():
    scorer, asked = make_scorer([0.5, 0.75, 0.75, 0.25], 8)
    ranked = select("full", 4, list(range(8)), scorer, random.Random(0))
    assert [s.index for s in ranked] == [1, 2, 0, 3]
    assert len(asked) == 32 == estimate_calls("full", 4, 8)


def test_successive_halving_keeps_the_best_on_every_example():
    acc = [0.3, 0.9, 0.5, 0.1, 0.6, 0.2, 0.4, 0.7]
    scorer, asked = make_scorer(acc, 32)
    cfg = SelectConfig(min_examples=4)
    ranked = select("halving", 8, list(range(32)), scorer, random.Random(0), cfg)
    assert ranked[0].index == 1 and ranked[0].n == 32
    distinct = len(set(asked))  # what a score cache would pay for
    assert distinct <= estimate_calls("halving", 8, 32, cfg) < 8 * 32
    # rounds of 4, 8, 16 then all 32 examples for the last survivor: 8*4 + 4*4 + 2*8 + 1*16
    assert distinct == 32 + 16 + 16 + 16
    with pytest.raises(ValueError):
        select("best", 2, [1], scorer, random.Random(0))


def test_halving_keep_leaves_a_beam_on_every_example():
    scorer, _ = make_scorer([0.3, 0.9, 0.5, 0.8], 16)
    ranked = select("halving", 4, list(range(16)), scorer, random.Random(1), SelectConfig(keep=2, min_examples=2))
    assert {ranked[0].index, ranked[1].index} == {1, 3} and ranked[0].n == ranked[1].n == 16


def test_ucb_pulls_the_promising_arm_and_never_repeats_an_example():
    scorer, asked = make_scorer([0.1, 0.9, 0.2, 0.15], 40)
    cfg = SelectConfig(ucb_sample=4, ucb_pulls=4)
    ranked = select("ucb", 4, list(range(40)), scorer, random.Random(0), cfg)
    assert ranked[0].index == 1
    pulls = {i: ranked_i.n for ranked_i in ranked for i in [ranked_i.index]}
    assert pulls[1] == max(pulls.values())  # the best arm got the most examples
    new_per_arm = {}
    for i, e in asked:
        new_per_arm.setdefault(i, [])
        if e not in new_per_arm[i]:
            new_per_arm[i].append(e)
    assert sum(len(v) for v in new_per_arm.values()) == sum(s.n for s in ranked) == 4 * 4 * 4
    assert estimate_calls("ucb", 4, 40, cfg) == 64


def test_select_with_no_candidates_or_examples():
    scorer, _ = make_scorer([1.0], 1)
    assert select("halving", 0, [1, 2], scorer, random.Random(0)) == []
    assert select("ucb", 1, [], scorer, random.Random(0))[0].n == 0


# --- ties on a generation task -----------------------------------------------------------------
class AnswerEndpoint(LM):
    """A completions endpoint with log-probabilities that never answers right (exact match 0 for every
    prompt) but gives the reference answers more probability when the instruction says "opposite"."""

    api = "completions"

    def __init__(self, model_id: str = "answer-endpoint"):
        self.model_id = model_id
        self.budget = Budget()
        self.generated = 0
        self.scored = 0

    def capabilities(self):
        return {"logprobs": True}

    def generate(self, prompts, config=None):
        self.generated += len(prompts)
        return [["no idea"] for _ in prompts]

    def score_pairs(self, prompts, continuations):
        self.scored += len(prompts)
        return [-1.0 if "opposite" in p else -5.0 for p in prompts]


def antonym_task(n_dev: int = 10) -> Task:
    words = [("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("old", "new"), ("dark", "light"),
             ("wet", "dry"), ("hard", "soft"), ("high", "low"), ("rich", "poor"), ("full", "empty"), ("loud", "quiet")]
    rows = [{"input": a, "output": b} for a, b in words]
    return Task.from_rows({"train": rows[:2], "dev": rows[2 : 2 + n_dev], "test": rows[:2]}, name="ant",
                          kind="generation", instruction="Answer the input.")


class StartBelowEndpoint(AnswerEndpoint):
    """AnswerEndpoint, except that under any instruction but the task's own (the start) it gets one dev row
    right ("big" -> "small"): the candidates tie among themselves (exact match 0.1), above the start (0.0)."""

    def generate(self, prompts, config=None):
        self.generated += len(prompts)
        return [["small" if "big" in p.splitlines()[-2:][0] and "Answer the input." not in p else "no idea"]
                for p in prompts]


def test_candidates_tied_on_the_metric_are_ranked_by_the_reference_answers_log_probability():
    target = StartBelowEndpoint()
    opt = ScriptedLM(["write a poem", "give the opposite word"])
    p = search(Paraphraser(steps=1), target, antonym_task(), ctx(optimizer=opt))
    assert p.instruction == "give the opposite word" and p.meta["search"]["best_dev"] == 0.1
    assert not p.meta["search"]["kept_start"]
    # 3 candidates x 10 dev rows generated; the tie-break scores the first 8 dev rows of each tied candidate once
    assert target.generated == 30 and target.scored == 16
    assert p.meta["cost"]["target_calls"] == 46


def test_a_candidate_tied_with_the_start_on_the_metric_never_replaces_it(capsys):
    # every prompt scores exact match 0; the candidate "give the opposite word" has the higher log-probability
    target = AnswerEndpoint()
    opt = ScriptedLM(["write a poem", "give the opposite word"])
    p = search(Paraphraser(steps=1), target, antonym_task(), ctx(optimizer=opt))
    assert p.instruction == "Answer the input." and p.meta["search"]["best_dev"] == 0.0
    assert p.meta["search"]["kept_start"] and p.meta["search"]["origin"] == "initial"
    assert target.generated == 30 and target.scored == 24  # the three tied prompts' tie values, paid once
    assert "no candidate scored higher on dev than the start (0.000): the start is kept" in capsys.readouterr().err


def test_tiebreak_zero_keeps_the_earlier_candidate_and_scores_no_answer():
    class NoTies(Paraphraser):
        def search_settings(self):
            return SearchSettings(steps=self.steps, tiebreak=0)

    target = AnswerEndpoint()
    p = search(NoTies(steps=1), target, antonym_task(), ctx(optimizer=ScriptedLM(["write a poem", "give the opposite"])))
    assert p.instruction == "Answer the input." and target.scored == 0 and p.meta["cost"]["target_calls"] == 30


def test_tiebreak_is_skipped_without_calls_left_or_log_probabilities(capsys):
    target = AnswerEndpoint()  # 10 (start) + 10 + 10 (two candidates) = 30: nothing left for tie values
    p = search(Paraphraser(steps=1), target, antonym_task(), ctx(optimizer=ScriptedLM(["a", "give the opposite"])),
               limits={"target_calls": 30})
    assert p.instruction == "Answer the input." and target.scored == 0 and p.meta["cost"]["target_calls"] == 30
    # a chat endpoint cannot score a given answer: ties go to the earlier candidate, with one note
    chat = RuleTarget(lambda instruction, text: "no idea")
    p = search(Paraphraser(steps=2), chat, antonym_task(), ctx(optimizer=ScriptedLM(["a", "give the opposite"])))
    assert p.instruction == "Answer the input."
    assert capsys.readouterr().err.count("ties go to the earlier candidate") == 1


def test_a_rank_decided_by_tie_values_survives_resume(tmp_path):
    def run(resume):
        target = StartBelowEndpoint()
        p = search(Paraphraser(steps=1), target, antonym_task(),
                   ctx(tmp_path, resume=resume, optimizer=ScriptedLM(["write a poem", "give the opposite"])))
        return p, target

    first, _ = run(False)
    again, target = run(True)  # the finished search is read back: no model call, same answer
    assert again.hash == first.hash and again.instruction == "give the opposite"
    assert target.generated == target.scored == 0


def test_reasoning_candidates_tie_by_order_since_a_given_answer_would_skip_their_reasoning(capsys):
    from promptlift.artifacts import Reasoning

    class ReasoningParaphraser(Paraphraser):
        def initial(self, state):
            return [Reasoning(inner=TextPrompt(instruction=state.task.instruction))]

        def propose(self, state):
            texts = state.ask("Rewrite: " + state.task.instruction, n=self.k)
            return [Candidate(Reasoning(inner=TextPrompt(instruction=t))) for t in texts]

    target = AnswerEndpoint()
    p = search(ReasoningParaphraser(steps=1), target, antonym_task(), ctx(optimizer=ScriptedLM(["a", "give the opposite"])))
    assert p.inner.instruction == "Answer the input." and target.scored == 0
    assert "a reasoning prompt answers after its own reasoning" in capsys.readouterr().err


# --- ties on classification --------------------------------------------------------------------
class LabelEndpoint(AnswerEndpoint):
    """A completions endpoint that ranks 'negative' first for every input and prompt (accuracy 50 % on a
    balanced dev set, whatever the instruction), but gives 'positive' more probability on the positive
    inputs when the instruction mentions the sentiment."""

    def score_many(self, prompts, continuations):
        self.scored += len(prompts)
        rows = []
        for p in prompts:
            near = "sentiment" in p and "good" in p.splitlines()[-2:][0]
            rows.append([-1.0 if c.strip() == "negative" else (-1.5 if near else -3.0) for c in continuations])
        return rows


class StartWrongLabelEndpoint(LabelEndpoint):
    """LabelEndpoint, except that under the task's own instruction (the start) it also ranks 'positive' first
    on the negative inputs: the start scores 0 % and the candidates tie among themselves at 50 %."""

    def score_many(self, prompts, continuations):
        rows = super().score_many(prompts, continuations)
        start = toy_task().instruction
        return [[-0.5 if start in p and "bad" in p.splitlines()[-2:][0] and c.strip() == "positive" else v
                 for c, v in zip(continuations, r)] for p, r in zip(prompts, rows)]


def test_classification_ties_go_to_the_gold_label_probability_at_no_extra_call(tmp_path):
    target = StartWrongLabelEndpoint()
    p = search(Paraphraser(steps=1), target, toy_task(), ctx(optimizer=ScriptedLM(["write a poem", "the sentiment"])))
    assert p.instruction == "the sentiment" and p.meta["search"]["best_dev"] == 0.5
    # 3 candidates x 8 dev rows, each scored once; the tie values came with those scores
    assert target.scored == 24 and target.generated == 0 and p.meta["cost"]["target_calls"] == 24
    # tiebreak=0: the earlier candidate, as before
    class NoTies(Paraphraser):
        def search_settings(self):
            return SearchSettings(steps=self.steps, tiebreak=0)

    p = search(NoTies(steps=1), StartWrongLabelEndpoint(), toy_task(),
               ctx(optimizer=ScriptedLM(["write a poem", "the sentiment"])))
    assert p.instruction == "write a poem"
    # a resumed search ranks the same way from its checkpointed scores, with no model call
    first = search(Paraphraser(steps=1), StartWrongLabelEndpoint(), toy_task(),
                   ctx(tmp_path, optimizer=ScriptedLM(["write a poem", "the sentiment"])))
    again_target = StartWrongLabelEndpoint()
    again = search(Paraphraser(steps=1), again_target, toy_task(),
                   ctx(tmp_path, resume=True, optimizer=ScriptedLM(["write a poem", "the sentiment"])))
    assert again.hash == first.hash and again.instruction == "the sentiment" and again_target.scored == 0


def test_a_classification_candidate_tied_with_the_start_keeps_the_start_and_says_so(tmp_path):
    import promptlift
    from promptlift.registry import get_method

    # every prompt scores 50 %; "the sentiment" gives the gold label more probability than the start does
    target = LabelEndpoint()
    p = search(Paraphraser(steps=1), target, toy_task(), ctx(optimizer=ScriptedLM(["write a poem", "the sentiment"])))
    assert p.instruction == toy_task().instruction and p.meta["search"]["best_dev"] == 0.5
    assert p.meta["search"]["kept_start"] and target.scored == 24
    # the same rule through a registered method: result.json says the start was kept
    run = promptlift.optimize("ape", LabelEndpoint(), toy_task(), out=tmp_path / "run", progress=False,
                              optimizer_lm=ScriptedLM(["the sentiment", "the sentiment of the text"]),
                              eval_splits=("dev",), **get_method("ape").smoke)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["search"]["kept_start"] and result["search"]["origin"] == "initial"
    assert run.prompt.instruction == toy_task().instruction


def test_the_budget_plan_says_what_the_starts_cost_and_how_many_candidates_are_left(capsys):
    target = RuleTarget(sentiment_rule)
    target.budget = Budget(limits={"target_calls": 21})
    search(Paraphraser(steps=50), target, toy_task(), ctx(optimizer=ScriptedLM(numbered)))
    plan = next(x for x in capsys.readouterr().err.splitlines() if "budget plan" in x)
    # 1 start x 8 dev rows = 8 of 21 calls; 13 left, a candidate scored on all of dev costs 8: about 1
    assert "starting prompt(s) on the 8 dev rows costs 8 of the 21 target calls" in plan
    assert "the 13 left pay for about 1 candidate(s)" in plan


def test_best_of_chooses_by_the_loop_s_rule_and_stops_at_the_budget():
    from promptlift.engine.search import best_of

    task = toy_task()
    target = RuleTarget(sentiment_rule)  # no log-probabilities: remaining ties go to the earlier prompt
    prompts = [TextPrompt(instruction="Answer."), TextPrompt(instruction="Give the sentiment."),
               TextPrompt(instruction="Say the sentiment.")]
    choice = best_of(prompts, target, task, ctx())
    assert (choice.index, choice.scores, choice.stopped) == (1, [0.5, 1.0, 1.0], "")
    assert target.answered == 24 and target.budget.calls == 24  # each on all of dev, counted on the model
    # the same prompts as a search's starts: the search keeps the same one
    class Starts(Paraphraser):
        def initial(self, state):
            return prompts

    assert search(Starts(steps=0), RuleTarget(sentiment_rule), task, ctx()).instruction == prompts[1].instruction
    target.budget = Budget(limits={"target_calls": 12})  # pays for the first prompt only
    choice = best_of(prompts, target, task, ctx())
    assert (choice.index, choice.scores, choice.stopped) == (0, [0.5, None, None], "budget")


def test_few_shot_trials_keep_the_best_draw_on_dev_ties_by_the_gold_label_probability(tiny_lm):
    import promptlift
    from promptlift.artifacts import TextPrompt as TP
    from promptlift.engine.evaluate import evaluate, gold_label_logprob
    from promptlift.methods.base import RunContext
    from promptlift.methods.shared import balanced_sample

    task = synth_task()
    run = promptlift.optimize("few-shot", tiny_lm, task, shots=2, trials=4, progress=False, eval_splits=())
    rng = RunContext(seed=0).rng()
    draws = [TP(instruction=task.instruction, demos=balanced_sample(task, 2, rng)) for _ in range(4)]
    ranked = []
    for i, p in enumerate(draws):
        res = evaluate(tiny_lm, task, p, split="dev", progress=False)
        tie = sum(gold_label_logprob(task, r) for r in res.predictions) / len(res.predictions)
        ranked.append((-res.accuracy, -tie, i))
    best = min(ranked)[2]
    assert run.prompt.demos == draws[best].demos


def test_the_progress_bar_shows_no_best_number_before_one_is_scored():
    from promptlift.reporter import Capture

    class LateStart(Paraphraser):
        """No starting prompt, and nothing proposed at step 1: no dev score exists until step 2."""

        def initial(self, state):
            return []

        def propose(self, state):
            return [] if state.step == 1 else super().propose(state)

    c = ctx(optimizer=ScriptedLM(["say the sentiment"]))
    c.reporter = cap = Capture()
    search(LateStart(steps=2, k=1), RuleTarget(sentiment_rule), toy_task(), c)
    shown = [values for desc, values in cap.postfixes if desc == "paraphraser"]
    assert shown == [{"calls": 0}, {"best": "1.000", "calls": 9}]  # step 1: calls only, never best=0.000
