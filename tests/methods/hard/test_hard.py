"""Token prompts (exact ids on their model, text elsewhere) and the methods that search them: PEZ, AutoPrompt,
soft-to-hard projection, and BBT (soft prompts from scores only). On a tiny random model and a learnable
synthetic task, each method must beat the prompt it starts from."""

from __future__ import annotations

import dataclasses

import json
import math
import random

import pytest
import torch

import promptlift
from promptlift.artifacts import SoftPrompt, TextPrompt, TokenPrompt, load
from promptlift.cli import main
from promptlift.engine.apply import TokenApplier, applier_for
from promptlift.engine.backends import backend_for
from promptlift.engine.evaluate import classify_scores, label_candidates
from promptlift.lm.scoring import score_candidates
from promptlift.errors import ArtifactError, ConfigError
from promptlift.task import Task
from promptlift.methods.hard.common import vocab_embeddings
from promptlift.methods.shared import allowed_tokens, start_ids, token_prompt
from promptlift.methods.hard.pez import PEZModule
from promptlift.methods.hard.project import fluent_tokens

from fakes import learner, synth_task  # noqa: E402
from fakes import ctx, learner, make_tiny_lm, synth_task  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")




def dev_accuracy(lm, task, prompt) -> float:
    return promptlift.evaluate(lm, task, prompt, split="dev", progress=False).accuracy


def history(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


def start_prompt(lm, task, tokens: int, seed: int, init: str = "random") -> TokenPrompt:
    """The prompt PEZ / AutoPrompt start from with these options (task instruction after the tokens)."""
    found = start_ids(lm, task, init, tokens, random.Random(seed), task.instruction, allowed_tokens(lm))
    return token_prompt(lm, found, lm.encode(task.instruction))


def assert_token_prompt_is_honest(lm, p: TokenPrompt) -> None:
    """Valid ids of the model, decoding to `text`; `reencodes` says whether the text gives the ids back."""
    assert isinstance(p, TokenPrompt) and p.ids and max(p.ids) < len(lm.tokenizer)
    assert not set(p.ids) & set(lm.tokenizer.all_special_ids)
    assert lm.tokenizer.decode(p.ids, clean_up_tokenization_spaces=False) == p.text
    assert p.meta["reencodes"] == (lm.encode(p.text) == p.ids)


# --- the artifact and its applier ---------------------------------------------------------
@pytest.mark.parametrize("chat", [True, False])
def test_token_prompt_on_its_model_is_exactly_its_ids(chat):
    lm, task = make_tiny_lm(chat=chat), synth_task()
    exs = task.dev[:6]
    same = TokenPrompt(ids=lm.encode("Classify."), text="Classify.", model=lm.model_id)
    assert torch.equal(classify_scores(lm, task, same, exs), classify_scores(lm, task, TextPrompt("Classify."), exs))
    # the same text as other ids (one token per character): the ids are applied, not the text
    split = TokenPrompt(ids=[i for ch in "Classify." for i in lm.encode(ch)], text="Classify.", model=lm.model_id)
    cond = applier_for(split).condition(split, backend_for(lm), task, [ex.input for ex in exs])
    assert cond.prefix_ids[-len(split.ids):] == split.ids
    assert not torch.allclose(classify_scores(lm, task, split, exs), classify_scores(lm, task, same, exs))


def test_token_prompt_on_another_model_is_its_text(capsys):
    lm, task = make_tiny_lm(), synth_task()
    p = TokenPrompt(ids=[1, 2, 3], text="Be brief.", model="model-it-was-found-on")
    assert p.text_only
    got = classify_scores(lm, task, p, task.dev[:5])
    assert torch.equal(got, classify_scores(lm, task, TextPrompt("Be brief."), task.dev[:5]))
    r = promptlift.evaluate(lm, task, p, split="dev", progress=False)
    assert 0 <= r.accuracy <= 1
    assert "found on model 'model-it-was-found-on'" in capsys.readouterr().err


def test_proxy_sends_a_token_prompt_as_text():
    from promptlift.serve.apply import chat_messages

    p = TokenPrompt(ids=[7, 8], text="Be kind.", model="tiny-source")
    assert chat_messages(p, [{"role": "user", "content": "hi"}]) == [{"role": "user", "content": "Be kind.\n\nhi"}]


def test_cli_evaluates_a_token_prompt_on_another_model_and_refuses_a_soft_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("promptlift.cli.load_lm", lambda *a, **k: make_tiny_lm())
    TokenPrompt(ids=[5, 6], text="Pick the topic.", model="tiny-source").save(tmp_path / "token")
    SoftPrompt(embeds=torch.zeros(2, 32), hidden_size=32, num_layers=2, model="tiny-source").save(tmp_path / "soft")
    args = ["eval", "--model", "other", "--data", "demo:demo_topics", "--limit", "3", "--json", "--prompt"]
    assert main(args + [str(tmp_path / "token")]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["n"] == 3 and "found on model 'tiny-source'" in out.err
    assert main(args + [str(tmp_path / "soft")]) == 2
    assert "made for model 'tiny-source'" in capsys.readouterr().err


def test_reencodes_says_when_the_text_gives_other_ids():
    lm = make_tiny_lm()
    merged = lm.encode("Classify.")
    assert token_prompt(lm, merged, []).meta["reencodes"]
    chars = [i for ch in "Classify." for i in lm.encode(ch)]
    assert chars != merged and not token_prompt(lm, chars, []).meta["reencodes"]


# --- PEZ ------------------------------------------------------------------------------------
def test_pez_forward_reads_the_projected_tokens_and_its_gradient_reaches_the_vectors():
    lm, task = learner(), synth_task()
    body = lm.encode(task.instruction)
    allowed = allowed_tokens(lm)
    init = start_ids(lm, task, "random", 3, random.Random(0), task.instruction, allowed)
    module = PEZModule(lm, init, body, "cosine", allowed)
    with torch.no_grad():
        module.embeds += 1e-3 * torch.randn_like(module.embeds)  # off the tokens, still nearest to them
    assert module.project().tolist() == init
    layout = TokenApplier.layout(lm, task.labels, body)
    exs = task.dev[:4]
    scores = score_candidates(lm, module.prefix(lm, layout, None), [layout.example(e.input) for e in exs],
                              [label_candidates(layout, task)] * len(exs))  # (4, labels)
    assert torch.allclose(scores.detach(), classify_scores(lm, task, module.to_prompt(), exs), atol=1e-5)
    scores.sum().backward()
    assert module.embeds.grad is not None and module.embeds.grad.abs().sum() > 0


def test_pez_improves_over_its_start(tmp_path):
    lm, task = learner(), synth_task()
    before = dev_accuracy(lm, task, start_prompt(lm, task, 4, seed=0))
    run = promptlift.optimize("pez", lm, task, out=tmp_path / "run", progress=False, seed=0, tokens=4, epochs=10,
                              lr=0.3, instruction="")
    assert run.prompt.meta["best_dev"] > before
    assert run.dev.accuracy == run.prompt.meta["best_dev"]  # the trainer selected on the shipped token prompt
    assert_token_prompt_is_honest(lm, run.prompt)
    assert run.prompt.ids[4:] == lm.encode(task.instruction)
    assert run.cost["backward"] == 10 * 6  # 48 examples / batch 8, 10 epochs
    assert load(tmp_path / "run").hash == run.prompt.hash


# --- instruction=auto: the better start on dev keeps its instruction ------------------------
AUTO = {"pez": ({"epochs": 2, "batch_size": 8}, "random"),
        "autoprompt": ({"steps": 3, "candidates": 4, "batch_size": 8}, "text"),
        "bdpl": ({"steps": 3, "samples": 4, "batch_size": 8}, "text"),
        "rlprompt": ({"steps": 3, "samples": 4, "batch_size": 8}, "text")}


@pytest.mark.parametrize("name", sorted(AUTO))
def test_instruction_auto_keeps_whichever_start_scores_better_on_dev(name, tmp_path):
    lm, task = learner(), synth_task()
    opts, init = AUTO[name]
    start = start_prompt(lm, task, 4, seed=0, init=init)
    body = lm.encode(task.instruction)
    with_, without = dev_accuracy(lm, task, start), dev_accuracy(lm, task, token_prompt(lm, start.ids[:4], []))
    assert with_ != without  # the choice matters on this task (the tiny model reads better without it)
    run = promptlift.optimize(name, lm, task, out=tmp_path / "run", progress=False, seed=0, tokens=4, init=init,
                              instruction="auto", demos=0, **opts)
    assert run.prompt.ids[4:] == (body if with_ >= without else []) and run.prompt.demos == []
    if name != "pez":  # search methods: both starts are the loop's step 0, the better one is kept on resume too
        first = [h for h in history(tmp_path / "run") if "best_dev" in h][0]
        assert first["best_dev"] == max(with_, without)
        ckpt = json.loads((tmp_path / "run" / "checkpoint" / "search.json").read_text())
        assert ckpt["data"]["fixed"] == (0 if with_ >= without else 1)
    forced = promptlift.optimize(name, lm, task, progress=False, seed=0, tokens=4, init=init, instruction="",
                                 eval_splits=(), **opts)
    assert forced.prompt.ids[4:] == body


def test_instruction_auto_ties_and_no_dev_keep_the_task_s_instruction(monkeypatch):
    import types

    import promptlift.engine.search.state as st
    from promptlift.methods.hard.common import best_body
    from promptlift.methods.shared import Fixed, instruction_choices

    lm, task = make_tiny_lm(), synth_task()
    assert instruction_choices("auto", task) == [Fixed(task.instruction), Fixed("")]
    assert instruction_choices("none", task) == [Fixed("")] and instruction_choices("Say.", task) == [Fixed("Say.")]
    auto = instruction_choices("auto", task, demos=3, seed=1)
    assert [f.instruction for f in auto] == [task.instruction, "", task.instruction]
    assert [len(f.demos) for f in auto] == [0, 0, 3] and all(d in task.train for d in auto[2].demos)
    assert auto[2].demos == instruction_choices("demos", task, demos=3, seed=1)[0].demos  # seeded, own generator
    assert instruction_choices("demos", task, demos=3, seed=2)[0].demos != auto[2].demos
    assert instruction_choices("auto", dataclasses.replace(task, train=[]), demos=3) == auto[:2]
    rows = []
    ctx = types.SimpleNamespace(seed=0, record=lambda **r: rows.append(r))
    blank = dataclasses.replace(task, dev=[])  # no dev set: nothing to choose on, the first is kept
    body = lm.encode(task.instruction)
    assert best_body(lm, blank, [5, 6], auto, ctx) == (body, [])
    # a tie, labels decided without scores (generation): the first
    monkeypatch.setattr(st, "evaluate", lambda *a, examples, **k: types.SimpleNamespace(
        predictions=[{"pred": None, "score": 0.5} for _ in examples]))  # dev accuracy 0.5 each
    assert best_body(lm, task, [5, 6], auto, ctx) == (body, [])
    assert rows == [{"event": "instruction", "dev": {task.instruction: 0.5, "none": 0.5,
                                                     f"{task.instruction} + 3 demos": 0.5},
                     "kept": task.instruction}]


def test_instruction_auto_ties_on_classification_go_to_the_gold_label_probability_at_no_cost(monkeypatch):
    import types

    import promptlift.engine.search.state as st
    from promptlift.methods.hard.common import best_body
    from promptlift.methods.shared import instruction_choices

    lm, task = make_tiny_lm(), synth_task()
    auto = instruction_choices("auto", task, demos=2, seed=0)
    labels = task.label_names
    calls = []

    def evaluate(lm_, task_, prompt, examples, **k):  # every start predicts the first label (dev accuracy 0.5);
        calls.append(prompt)                           # "none" leans to the gold one
        margin = 0.2 if len(prompt.ids) == 2 and not prompt.demos else 3.0
        recs = [{"gold": ex.output, "pred": labels[0], "score": 0.5,
                 "scores": {n: (0.0 if n == labels[0] else -margin) for n in labels}} for ex in examples]
        return types.SimpleNamespace(predictions=recs)

    monkeypatch.setattr(st, "evaluate", evaluate)
    monkeypatch.setattr(st, "answer_scores", lambda *a: pytest.fail("classification pays no extra call"))
    body, demos = best_body(lm, task, [5, 6], auto, types.SimpleNamespace(seed=0, record=lambda **r: None))
    assert (body, demos) == (auto[1].ids(lm), []) and len(calls) == 3


def test_instruction_auto_ties_on_a_generation_task_go_to_the_reference_answers_log_probability(monkeypatch):
    import types

    import promptlift.engine.search.state as st
    from promptlift.engine.search import TIEBREAK
    from promptlift.errors import UnsupportedError
    from promptlift.methods.hard.common import best_body
    from promptlift.methods.shared import instruction_choices

    lm = make_tiny_lm()
    rows = [{"input": f"w{i}", "output": f"w{i}s"} for i in range(12)]
    task = Task.from_rows({"train": rows[:6], "dev": rows[6:], "test": rows[:2]}, name="plural", kind="generation",
                          instruction="Pluralise.")
    auto = instruction_choices("auto", task, demos=2, seed=0)
    ctx = types.SimpleNamespace(seed=0, record=lambda **r: None)
    monkeypatch.setattr(st, "evaluate", lambda *a, examples, **k: types.SimpleNamespace(
        predictions=[{"pred": "", "score": 0.0} for _ in examples]))  # 0 exact matches each
    seen = []

    def logprob(lm_, task_, prompt, exs):  # the examples' start helps most here
        seen.append(len(exs))
        return torch.full((len(exs),), -1.0 if prompt.demos else -5.0)

    monkeypatch.setattr(st, "answer_scores", logprob)
    body, demos = best_body(lm, task, [5, 6], auto, ctx)
    assert demos == auto[2].demos and body == lm.encode(task.instruction)
    assert seen == [min(TIEBREAK, len(task.dev))] * 3
    def cannot(*a):
        raise UnsupportedError("a chat endpoint")

    monkeypatch.setattr(st, "answer_scores", cannot)  # cannot score a given answer: the first
    assert best_body(lm, task, [5, 6], auto, ctx) == (lm.encode(task.instruction), [])


def test_no_search_may_use_a_special_added_token(real_lm):
    """SmolLM2 marks <file_sep>, <gh_stars>, ... special without naming them in all_special_ids; none is allowed."""
    tok = real_lm.tokenizer
    specials = [i for i, t in tok.added_tokens_decoder.items() if t.special]
    assert tok.convert_tokens_to_ids("<file_sep>") in specials and len(specials) > len(tok.all_special_ids)
    for vocab in ("all", "readable"):
        ok = allowed_tokens(real_lm, vocab)
        assert not ok[specials].any() and ok.sum() > 10000


# --- AutoPrompt -----------------------------------------------------------------------------
def test_autoprompt_improves_over_its_start(tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize("autoprompt", lm, task, out=tmp_path / "run", progress=False, seed=0, steps=10,
                              tokens=4, candidates=8, batch_size=16, instruction="")
    steps = [h for h in history(tmp_path / "run") if "best_dev" in h]
    start = dev_accuracy(lm, task, start_prompt(lm, task, 4, seed=0, init="text"))
    assert steps[0]["best_dev"] == start and run.prompt.meta["search"]["best_dev"] > start
    assert_token_prompt_is_honest(lm, run.prompt)
    assert run.cost["backward"] == 10  # one gradient per step
    spent = run.prompt.meta["cost"]
    assert spent["target_calls"] == steps[-1]["target_calls"] > 10 * 16


# --- projection -----------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_project_recovers_tokens_from_nearby_vectors_and_keeps_their_gain(tmp_path, metric):
    lm, task = learner(), synth_task()
    pez = promptlift.optimize("pez", lm, task, progress=False, seed=0, tokens=4, epochs=10, lr=0.3,
                              eval_splits=())
    found, body = pez.prompt.ids[:4], pez.prompt.ids[4:]
    table = vocab_embeddings(lm)
    g = torch.Generator().manual_seed(0)
    vectors = table[found] + 0.05 * table.std() * torch.randn(4, lm.hidden_size, generator=g)
    SoftPrompt(instruction=task.instruction, embeds=vectors, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
               model=lm.model_id).save(tmp_path / "soft")
    run = promptlift.optimize("project", lm, task, progress=False, source=str(tmp_path / "soft"), metric=metric,
                              eval_splits=())
    assert run.prompt.ids == found + body
    start = dev_accuracy(lm, task, start_prompt(lm, task, 4, seed=0))
    assert run.prompt.meta["dev_after"] == dev_accuracy(lm, task, pez.prompt) > start
    assert run.prompt.meta["dev_before"] == dev_accuracy(lm, task, load(tmp_path / "soft"))
    assert_token_prompt_is_honest(lm, run.prompt)


def test_project_keeps_the_instruction_only_if_dev_says_so(tmp_path):
    lm, task = learner(), synth_task()
    found = start_prompt(lm, task, 4, seed=0).ids[:4]
    body = lm.encode(task.instruction)
    SoftPrompt(instruction=task.instruction, embeds=vocab_embeddings(lm)[found], hidden_size=lm.hidden_size,
               num_layers=lm.num_layers, model=lm.model_id).save(tmp_path / "soft")
    with_ = dev_accuracy(lm, task, token_prompt(lm, found, body))
    without = dev_accuracy(lm, task, token_prompt(lm, found, []))
    assert with_ != without

    def project(keep):
        return promptlift.optimize("project", lm, task, progress=False, source=str(tmp_path / "soft"),
                                   keep_instruction=keep, eval_splits=()).prompt

    auto = project("auto")
    assert auto.ids == found + (body if with_ >= without else []) and auto.meta["dev_after"] == max(with_, without)
    assert auto.meta["instruction_kept"] == (with_ >= without)
    assert project("yes").ids == found + body and project("no").ids == found


def test_project_keeps_the_soft_prompts_demonstrations(tmp_path):
    """Vectors that are exactly token embeddings project to those tokens; with the demos kept the scores are equal."""
    lm, task = learner(), synth_task()
    found = start_prompt(lm, task, 4, seed=0).ids[:4]
    soft = SoftPrompt(instruction=task.instruction, demos=task.train[:2], embeds=vocab_embeddings(lm)[found],
                      hidden_size=lm.hidden_size, num_layers=lm.num_layers, model=lm.model_id)
    soft.save(tmp_path / "soft")
    p = promptlift.optimize("project", lm, task, progress=False, source=str(tmp_path / "soft"), keep_instruction="yes",
                            eval_splits=()).prompt
    assert p.ids == found + lm.encode(task.instruction) and p.demos == soft.demos
    exs = task.dev[:6]
    assert torch.allclose(classify_scores(lm, task, p, exs), classify_scores(lm, task, soft, exs), atol=1e-5)
    assert p.meta["dev_after"] == p.meta["dev_before"]


def test_project_trains_a_soft_prompt_when_given_none_and_reports_before_and_after(tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize("project", lm, task, out=tmp_path / "run", progress=False, epochs=2, tokens=3,
                              fluency=1.0, fluency_candidates=4)
    m = run.prompt.meta
    assert m["source"] == "prompt-tuning" and m["projection"] == "fluency" and m["tokens"] == 3
    assert 0 <= m["dev_before"] <= 1 and m["dev_after"] == run.dev.accuracy
    assert any(h.get("event") == "project" for h in history(tmp_path / "run"))
    assert_token_prompt_is_honest(lm, run.prompt)


def test_fluency_ranks_only_the_nearest_and_weight_zero_is_nearest():
    lm = learner()
    sim = torch.randn(3, lm.embedding_matrix().shape[0], generator=torch.Generator().manual_seed(0))
    assert fluent_tokens(lm, [], sim, {}, 0.0, 5) == sim.argmax(-1).tolist()
    top = sim.topk(4).indices.tolist()
    assert all(t in row for t, row in zip(fluent_tokens(lm, [], sim, {}, 50.0, 4), top))


def test_project_refuses_what_is_not_a_soft_prompt_of_this_model(tmp_path):
    lm, task = learner(), synth_task()
    TextPrompt("Classify.").save(tmp_path / "text")
    with pytest.raises(ConfigError, match="needs a soft prompt"):
        promptlift.optimize("project", lm, task, progress=False, source=str(tmp_path / "text"))
    SoftPrompt(embeds=torch.zeros(2, 64), hidden_size=64, model="another").save(tmp_path / "soft")
    with pytest.raises(ArtifactError, match="another"):
        promptlift.optimize("project", lm, task, progress=False, source=str(tmp_path / "soft"))


# --- BBT --------------------------------------------------------------------------------------
BBT = {"steps": 8, "popsize": 6, "dim": 8, "tokens": 4, "train_examples": 16}


def test_bbt_improves_with_forward_passes_only(tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize("bbt", lm, task, out=tmp_path / "run", progress=False, seed=0, **BBT)
    steps = [h for h in history(tmp_path / "run") if "best_dev" in h]
    assert run.prompt.meta["search"]["best_dev"] > steps[0]["best_dev"]
    assert run.cost["backward"] == 0 and run.cost["forward"] > 0
    assert isinstance(run.prompt, SoftPrompt) and run.prompt.embeds.shape == (4, lm.hidden_size)
    assert run.dev.accuracy == run.prompt.meta["search"]["best_dev"]  # the SoftPrompt is the candidate it stands for
    # the three starts (instruction=auto: the task's, none, the task's with demos) on dev, each candidate on its
    # 16 training examples, each generation's best on dev (its distinct examples)
    dev = len({(e.input, e.output) for e in task.dev})
    assert run.prompt.meta["cost"]["target_calls"] == 3 * dev + 8 * (6 * 16 + dev)


def test_bbt_resumed_after_a_budget_stop_ends_as_an_uninterrupted_run(tmp_path):
    opts = {**BBT, "steps": 5}
    full = promptlift.optimize("bbt", learner(), synth_task(), out=tmp_path / "full", progress=False, **opts)
    cut = promptlift.optimize("bbt", learner(), synth_task(), out=tmp_path / "cut", progress=False,
                              budget="forward=60", **opts)
    assert cut.stopped == "budget" and cut.prompt.meta["search"]["steps"] < 5
    resumed = promptlift.optimize("bbt", learner(), synth_task(), out=tmp_path / "cut", progress=False, resume=True,
                                  **opts)
    assert resumed.prompt.meta["search"]["steps"] == 5
    assert torch.equal(resumed.prompt.embeds, full.prompt.embeds)


def test_bbt_checkpoints_its_soft_prompt_candidates_as_artifacts(tmp_path):
    run = promptlift.optimize("bbt", learner(), synth_task(), out=tmp_path / "run", progress=False, **{**BBT, "steps": 2})
    ckpt = json.loads((tmp_path / "run" / "checkpoint" / "search.json").read_text())
    saved = [c for c in ckpt["candidates"] if "saved" in c]
    assert saved and len(saved) == len(ckpt["candidates"])
    for c in saved:
        p = load(tmp_path / "run" / "checkpoint" / c["saved"])
        assert isinstance(p, SoftPrompt) and p.hash == c["key"] and len(p.meta["subspace"]["z"]) == BBT["dim"]
    assert run.prompt.meta["subspace"]["dim"] == BBT["dim"]


# --- generation tasks: forward-only searches minimise minus the reference's log-probability ------
def gen_task():
    """synth_task as generation: the model must write the label word ('hot' / 'cold') itself."""
    from promptlift.task import Example, Task

    t = synth_task()

    def conv(exs):
        return [Example(e.input, t.labels[e.output]) for e in exs]

    return Task(name="synth-gen", kind="generation", train=conv(t.train), dev=conv(t.dev), test=conv(t.test),
                instruction="Answer.")


def reference_loss(lm, task, prompt, exs) -> float:
    from promptlift.engine.evaluate import example_losses

    return float(example_losses(lm, task, prompt, exs).mean())


def test_bbt_lowers_the_reference_loss_on_a_generation_task(tmp_path):
    from promptlift.engine.search import dev_subset
    from promptlift.methods.blackbox.bbt import BBTConfig, BBTSearch

    lm, task = learner(), gen_task()
    opts = {"steps": 4, "popsize": 6, "dim": 8, "tokens": 3, "train_examples": 16, "instruction": ""}
    promptlift.optimize("bbt", lm, task, out=tmp_path / "run", progress=False, seed=0, **opts)
    fitness = json.loads((tmp_path / "run" / "checkpoint" / "search.json").read_text())["data"]["fitness"]
    start = BBTSearch("bbt", BBTConfig(**opts), lm, task, 0).prompt([[0.0] * 8])  # z = 0
    fit_examples = dev_subset(task.train, 16)
    assert len(fitness) == 4 and min(min(g) for g in fitness) < reference_loss(lm, task, start, fit_examples)
    with pytest.raises(ConfigError, match="fitness=error needs a classification task"):
        promptlift.optimize("bbt", lm, task, progress=False, fitness="error", **opts)


def test_autoprompt_swaps_lower_the_reference_loss_on_a_generation_task(tmp_path):
    lm, task = learner(), gen_task()
    run = promptlift.optimize("autoprompt", lm, task, out=tmp_path / "run", progress=False, seed=0, steps=4,
                              tokens=3, candidates=6, batch_size=48, instruction="")
    found = json.loads((tmp_path / "run" / "checkpoint" / "search.json").read_text())["data"]["found"]
    start = start_prompt(lm, task, 3, seed=0, init="text")
    assert found != start.ids[:3]  # a swap was kept: on the whole train set (the batch), it lowered the loss
    assert reference_loss(lm, task, token_prompt(lm, found, []), task.train) < \
        reference_loss(lm, task, token_prompt(lm, start.ids[:3], []), task.train)
    assert_token_prompt_is_honest(lm, run.prompt)
    assert run.cost["backward"] == 4


@pytest.mark.parametrize("name", ["bdpl", "rlprompt", "bbt-v2"])
def test_policy_and_deep_searches_learn_from_the_reference_loss_on_a_generation_task(name, tmp_path):
    lm, task = learner(), gen_task()
    opts = {"bdpl": {"steps": 3, "tokens": 3, "samples": 4, "batch_size": 8, "instruction": ""},
            "rlprompt": {"steps": 3, "tokens": 3, "samples": 4, "batch_size": 8, "instruction": ""},
            "bbt-v2": {"steps": 2, "popsize": 4, "dim": 4, "tokens": 2, "train_examples": 8, "instruction": ""}}[name]
    run = promptlift.optimize(name, lm, task, out=tmp_path / "run", progress=False, seed=0, **opts)
    data = json.loads((tmp_path / "run" / "checkpoint" / "search.json").read_text())["data"]
    record = {"bdpl": "losses", "rlprompt": "rewards", "bbt-v2": "fitness"}[name]
    values = [v for step in data[record] for v in step]
    assert len(data[record]) == opts["steps"] and all(math.isfinite(v) for v in values)
    assert len(set(values)) > 1  # the samples' objectives differ: there is a signal to learn from
    if name == "bdpl":  # the distribution moved off uniform toward the lower-loss samples
        probs = torch.tensor(data["probs"])
        assert not torch.allclose(probs, torch.full_like(probs, 1 / probs.shape[1]))
    if name != "bbt-v2":  # rewards are minus the losses of the reference (rlprompt) or the losses (bdpl)
        assert all(v > 0 for v in values) if name == "bdpl" else all(v < 0 for v in values)
    assert run.cost["backward"] == 0 and run.prompt.meta["cost"]["target_calls"] > 0


# --- demonstrations after the tokens (instruction=demos, or tried by auto) ------------------
@pytest.mark.parametrize("chat", [True, False])
def test_token_prompt_with_demos_reads_as_its_layout_and_as_text_elsewhere(chat, tmp_path):
    lm, task = make_tiny_lm(chat=chat), synth_task()
    demos, body = task.train[:3], lm.encode(task.instruction)
    p = token_prompt(lm, [5, 6, 7], body, demos=demos)
    assert p.demos == demos and p.ids == [5, 6, 7] + body
    p.save(tmp_path / "p")
    assert load(tmp_path / "p") == p and load(tmp_path / "p").hash == p.hash  # round trip, demos included
    exs = task.dev[:4]
    # on its model: [header][ids][demos' turns][input][answer opening], as the methods' layout lays it out
    cond = applier_for(p).condition(p, backend_for(lm), task, [e.input for e in exs])
    layout = TokenApplier.layout(lm, task.labels, p.ids, demos)
    for row, e in zip(cond.rows, exs):
        assert cond.prefix_ids + row == layout.header + layout.body + layout.example(e.input)
    module = PEZModule(lm, [5, 6, 7], body, "cosine", allowed_tokens(lm), demos)
    layout = TokenApplier.layout(lm, task.labels, body, demos)  # the module's tokens go before `body`
    scores = score_candidates(lm, module.prefix(lm, layout, None), [layout.example(e.input) for e in exs],
                              [label_candidates(layout, task)] * len(exs))
    assert module.to_prompt().demos == demos
    assert torch.allclose(scores.detach(), classify_scores(lm, task, p, exs), atol=1e-5)
    assert not torch.allclose(classify_scores(lm, task, p, exs), classify_scores(lm, task, token_prompt(lm, p.ids, []), exs))
    # elsewhere: its text and demos, as a text prompt's
    other = dataclasses.replace(p, model="another-model")
    assert torch.equal(classify_scores(lm, task, other, exs), classify_scores(lm, task, TextPrompt(p.text, demos), exs))


@pytest.mark.parametrize("name", sorted(AUTO))
def test_instruction_auto_also_tries_demonstrations_and_keeps_the_best_on_dev(name, tmp_path):
    from promptlift.methods.shared import instruction_choices

    lm, task = learner(), synth_task()
    opts, init = AUTO[name]
    found = start_prompt(lm, task, 4, seed=0, init=init).ids[:4]
    choices = instruction_choices("auto", task, demos=2, seed=0)
    devs = [dev_accuracy(lm, task, token_prompt(lm, found, lm.encode(f.instruction) if f.instruction else [],
                                                 demos=f.demos)) for f in choices]
    best = max(range(3), key=lambda i: (devs[i], -i))
    run = promptlift.optimize(name, lm, task, out=tmp_path / "run", progress=False, seed=0, tokens=4, init=init,
                              instruction="auto", demos=2, **opts)
    kept = choices[best]
    assert run.prompt.demos == kept.demos
    assert run.prompt.ids[4:] == (lm.encode(kept.instruction) if kept.instruction else [])
    if name != "pez":
        first = [h for h in history(tmp_path / "run") if "best_dev" in h][0]
        assert first["best_dev"] == max(devs)
    forced = promptlift.optimize(name, lm, task, progress=False, seed=0, tokens=4, init=init, instruction="demos",
                                 demos=2, eval_splits=(), **opts)
    assert forced.prompt.demos == choices[2].demos and forced.prompt.ids[4:] == lm.encode(task.instruction)
    assert best == 2  # on this task the examples help the tiny model, so the kept demos are what is checked


def test_probe_refuses_demonstrations():
    from promptlift.methods.hard.probe import ProbeConfig

    for bad in ({"demos": 2}, {"instruction": "auto"}, {"instruction": "demos"}):
        with pytest.raises(ValueError, match="no demonstrations"):
            ProbeConfig(**bad)


@pytest.mark.parametrize("name", ["bbt", "bbt-v2"])
def test_bbt_instruction_auto_also_tries_demonstrations_and_keeps_the_best_on_dev(name, tmp_path):
    from promptlift.methods.blackbox.bbt import BBTConfig, BBTSearch
    from promptlift.methods.blackbox.bbt_v2 import BBTv2Config, BBTv2Search

    lm, task = learner(), synth_task()
    opts = {"steps": 2, "popsize": 3, "dim": 4, "tokens": 3, "train_examples": 8, "demos": 2}
    Search, Config = (BBTSearch, BBTConfig) if name == "bbt" else (BBTv2Search, BBTv2Config)
    s = Search(name, Config(**opts), lm, task, 0)
    assert [(f.instruction, len(f.demos)) for f in s.fixed] == [(task.instruction, 0), ("", 0), (task.instruction, 2)]
    devs = []
    for f in s.fixed:  # each start at z = 0
        s.start = f
        devs.append(dev_accuracy(lm, task, s.prompt(s.current(type("S", (), {"data": {}})()))))
    best = max(range(3), key=lambda i: (devs[i], -i))
    run = promptlift.optimize(name, lm, task, out=tmp_path / "run", progress=False, seed=0, **opts)
    kept = s.fixed[best]
    assert run.prompt.instruction == kept.instruction and run.prompt.demos == kept.demos
    first = [h for h in history(tmp_path / "run") if "best_dev" in h][0]
    assert first["best_dev"] == max(devs)
    forced = promptlift.optimize(name, lm, task, progress=False, seed=0, instruction="demos", eval_splits=(), **opts)
    assert forced.prompt.demos == s.fixed[2].demos and forced.prompt.instruction == task.instruction
    none = promptlift.optimize(name, lm, task, progress=False, seed=0, eval_splits=(), **{**opts, "demos": 0})
    assert none.prompt.demos == []
    if name == "bbt":
        assert best == 2  # on this task the examples help the tiny model, so the kept demos are what is checked
