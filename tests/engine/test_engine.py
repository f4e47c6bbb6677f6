"""The evaluation engine is exact: cached-prefix scoring, batching and decoding equal plain full forward passes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fakes import make_tiny_lm
from promptlift import Task, TextPrompt
from promptlift.artifacts import Calibrated, KnnPrompt
from promptlift.lm.decode import decode
from promptlift.engine.evaluate import answer_scores, calibrate, classify_scores, evaluate, example_losses
from promptlift.engine.neighbors import nearest_demos
from promptlift.lm.scoring import score_candidates
from promptlift.kv import KV
from promptlift.lm.base import GenerationConfig
from promptlift.task import Example
from promptlift.render import render
from promptlift.template import build_layout, to_text
from fakes import ctx, make_tiny_lm  # noqa: F401

ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


# --- reference: one plain full forward pass per (row, candidate) --------------------------------
@torch.no_grad()
def plain_logprob(lm, context: list[int], cand: list[int]) -> float:
    """sum_k log p(cand[k] | context + cand[:k]) from `lm.model(full_ids).logits`."""
    full = torch.tensor([list(context) + list(cand)], device=lm.device)
    lp = F.log_softmax(lm.model(full).logits[0].float(), dim=-1)
    start = len(context)
    return float(sum(lp[start - 1 + k, t] for k, t in enumerate(cand)))


@torch.no_grad()
def greedy_reference(lm, ids: list[int], max_tokens: int) -> list[int]:
    """Greedy decoding by repeated full forward passes, argmax token by token."""
    ids = list(ids)
    out: list[int] = []
    for _ in range(max_tokens):
        tok = int(lm.model(torch.tensor([ids])).logits[0, -1].argmax())
        if tok in lm.eos_ids:
            break
        out.append(tok)
        ids.append(tok)
    return out


def _prefix_rows_cands(lm):
    prefix = lm.encode("Classify the input. Answer with one of: positive, negative.", bos=True)
    rows = [
        lm.encode("the movie was great"),
        lm.encode("a terrible boring film and then sports results today, very bad"),  # longest: padding for others
        lm.encode("x"),  # a single token row
    ]
    single = lm.encode("the")
    assert len(single) == 1
    multi_a = lm.encode(" positive")
    multi_b = lm.encode("science and technology news")
    assert len(multi_a) > 1 and len(multi_b) > len(multi_a)
    cands = [single, multi_a, multi_b]
    return prefix, rows, cands


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_score_candidates_equals_plain_forward(chat):
    lm = make_tiny_lm(chat=chat)
    prefix_ids, rows, cands = _prefix_rows_cands(lm)
    assert len({len(r) for r in rows}) == len(rows)  # rows of different lengths in one batch
    ref = torch.tensor([[plain_logprob(lm, prefix_ids + r, c) for c in cands] for r in rows])
    with torch.no_grad():
        _, kv = lm.forward(ids=torch.tensor([prefix_ids]))
        cached = score_candidates(lm, kv, rows, [cands] * len(rows))
        uncached = score_candidates(lm, None, [prefix_ids + r for r in rows], [cands] * len(rows))
        # one row at a time (no padding at all) gives the same numbers
        single = torch.cat([score_candidates(lm, kv, [r], [cands]) for r in rows])
    assert cached.shape == (3, 3)
    torch.testing.assert_close(cached, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(uncached, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(single, ref, atol=ATOL, rtol=0)
    assert torch.isfinite(cached).all() and (cached < 0).all()


def test_score_candidates_ragged_candidates_and_batch_prefix(tiny_lm):
    lm = tiny_lm
    prefix_ids, rows, cands = _prefix_rows_cands(lm)
    per_row = [cands, cands[:1], cands[1:]]  # different numbers of candidates per row
    with torch.no_grad():
        _, kv = lm.forward(ids=torch.tensor([prefix_ids]))
        s = score_candidates(lm, kv.expand(3), rows, per_row)  # a batch-B prefix works like a shared one
    assert s.shape == (3, 3)
    for b, (r, cs) in enumerate(zip(rows, per_row)):
        for j in range(3):
            if j < len(cs):
                assert abs(float(s[b, j]) - plain_logprob(lm, prefix_ids + r, cs[j])) < ATOL
            else:
                assert s[b, j] == float("-inf")


def test_score_candidates_chunks_multi_token_passes(tiny_lm):
    lm = tiny_lm
    prefix_ids, rows, cands = _prefix_rows_cands(lm)
    with torch.no_grad():
        _, kv = lm.forward(ids=torch.tensor([prefix_ids]))
        a = score_candidates(lm, kv, rows, [cands] * 3)
        b = score_candidates(lm, kv, rows, [cands] * 3, max_rows_per_pass=1)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_hfmodel_score_matches_plain_forward(tiny_plain_lm):
    lm = tiny_plain_lm
    got = lm.score("Input: the movie was great\nOutput:", [" positive", " negative"])
    ctx = lm.encode("Input: the movie was great\nOutput:", bos=True)
    want = [plain_logprob(lm, ctx, lm.encode(c)) for c in (" positive", " negative")]
    assert got == pytest.approx(want, abs=ATOL)


# --- evaluate(): per-example label scores ---------------------------------------------------------
def _tiny_task() -> Task:
    train = [Example("the movie was great and wonderful", "pos"), Example("a terrible boring film", "neg"),
             Example("very good", "pos"), Example("very bad", "neg")]
    # token lengths 2, 21, 5, 9, 16: longest-first batches of 2 are [1, 4], [3, 2], [0], so results must be
    # scattered back to their examples (batch [3, 2] is out of index order)
    test = [Example("good", "pos"), Example("boring and terrible, a very bad movie overall", "neg"),
            Example("great film", "pos"), Example("the movie was wonderful", "pos"),
            Example("bad and boring, a terrible film", "neg")]
    return Task(name="tiny", kind="classification", train=train, dev=test, test=test,
                labels={"pos": "positive", "neg": "very negative"}, instruction="Classify the input.")


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_evaluate_scores_equal_plain_forward(chat):
    lm = make_tiny_lm(chat=chat)
    task = _tiny_task()
    prompt = TextPrompt(instruction=task.instruction, demos=task.train[:2])
    r = evaluate(lm, task, prompt, batch_size=2, progress=False)
    layout = build_layout(lm, prompt.instruction, prompt.demos, task.labels)
    # the token segments are the rendered prompt text
    ex0 = task.test[0].input
    text = to_text(lm, render(prompt.instruction, prompt.demos, ex0, task.labels))
    assert lm.tokenizer.decode(layout.header + layout.body + layout.example(ex0)) == text
    assert r.n == len(task.test)
    for ex, p in zip(task.test, r.predictions):
        assert p["input"] == ex.input and p["gold"] == ex.output
        ctx = layout.header + layout.body + layout.example(ex.input)
        want = {lab: plain_logprob(lm, ctx, layout.answer(words)) for lab, words in task.labels.items()}
        assert set(p["scores"]) == set(task.labels)
        for lab in task.labels:
            assert p["scores"][lab] == pytest.approx(want[lab], abs=ATOL + 5e-5)  # stored rounded to 4 places
        assert p["pred"] == max(want, key=want.get)
        assert p["score"] == float(p["pred"] == ex.output)
    assert r.accuracy == pytest.approx(sum(p["score"] for p in r.predictions) / r.n)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_reference_answer_scores_equal_plain_forward(chat):
    """The generation objective of forward-only searches: log p(reference + end of answer | prompt, input)."""
    lm = make_tiny_lm(chat=chat)
    task = Task.demo("demo_antonyms")
    exs = task.test[:5]
    prompt = TextPrompt(instruction=task.instruction, demos=task.train[:1])
    got = answer_scores(lm, task, prompt, exs, batch_size=2)
    layout = build_layout(lm, prompt.instruction, prompt.demos)
    want = [plain_logprob(lm, layout.header + layout.body + layout.example(ex.input),
                          layout.answer(ex.output, close=True)) for ex in exs]
    assert got.shape == (5,) and torch.allclose(got, torch.tensor(want), atol=ATOL)
    assert torch.allclose(example_losses(lm, task, prompt, exs), -got, atol=ATOL)


def test_example_losses_of_a_classification_task_are_the_label_cross_entropy():
    lm, task = make_tiny_lm(), _tiny_task()
    prompt = TextPrompt(instruction=task.instruction)
    scores = classify_scores(lm, task, prompt, task.test)
    gold = torch.tensor([task.label_names.index(ex.output) for ex in task.test])
    assert torch.allclose(example_losses(lm, task, prompt, task.test), F.cross_entropy(scores, gold, reduction="none"))


def test_length_sorted_batching_keeps_order(tiny_lm):
    task = _tiny_task()
    prompt = TextPrompt(instruction=task.instruction, demos=task.train[:2])
    lens = [len(tiny_lm.encode(ex.input)) for ex in task.test]
    assert lens == [2, 21, 5, 9, 16]  # the engine reorders internally (see _tiny_task)
    batched = evaluate(tiny_lm, task, prompt, batch_size=2, progress=False)
    one_by_one = evaluate(tiny_lm, task, prompt, batch_size=1, progress=False)
    assert [p["input"] for p in batched.predictions] == [ex.input for ex in task.test]
    for a, b in zip(batched.predictions, one_by_one.predictions):
        assert a["input"] == b["input"]
        for lab in task.labels:
            assert a["scores"][lab] == pytest.approx(b["scores"][lab], abs=2e-4)


def test_evaluate_generation_keeps_order(tiny_lm):
    task = Task.demo("demo_antonyms")
    exs = task.test[:5]
    r = evaluate(tiny_lm, task, TextPrompt(instruction=task.instruction), examples=exs, batch_size=2,
                 max_new_tokens=4, progress=False)
    assert r.n == 5
    assert [p["input"] for p in r.predictions] == [ex.input for ex in exs]
    assert [p["gold"] for p in r.predictions] == [ex.output for ex in exs]


def test_evaluate_knn_demos(tiny_lm):
    lm = tiny_lm
    task = Task.demo("demo_topics")
    exs = task.test[:6]
    prompt = KnnPrompt(instruction=task.instruction, pool=task.train, k=2)
    r = evaluate(lm, task, prompt, examples=exs, batch_size=4, progress=False)
    assert r.n == len(exs)
    assert [p["input"] for p in r.predictions] == [ex.input for ex in exs]
    # each example is scored exactly as a fixed-demo prompt holding its own 2 nearest neighbours
    chosen = nearest_demos(lm, task.train, [ex.input for ex in exs], 2)
    assert all(len(c) == 2 for c in chosen)
    for i in (0, 3):
        fixed = evaluate(lm, task, TextPrompt(instruction=task.instruction, demos=chosen[i]),
                         examples=[exs[i]], progress=False)
        assert fixed.predictions[0]["scores"] == pytest.approx(r.predictions[i]["scores"], abs=2e-4)


def test_nearest_demos_finds_identical_input(tiny_lm):
    pool = [Example(t, "x") for t in ("sports results today", "science and technology news",
                                      "world politics summit", "business and finance report")]
    got = nearest_demos(tiny_lm, pool, ["world politics summit", "sports results today"], 2)
    assert got[0][-1].input == "world politics summit"  # nearest last (next to the query)
    assert got[1][-1].input == "sports results today"


# --- KV --------------------------------------------------------------------------------------------
def _rand_kv(batch=1, seq=5, layers=2, heads=2, dim=4):
    g = torch.Generator().manual_seed(0)
    keys = [torch.randn(batch, heads, seq, dim, generator=g) for _ in range(layers)]
    values = [torch.randn(batch, heads, seq, dim, generator=g) for _ in range(layers)]
    return KV(keys, values, torch.ones(batch, seq, dtype=torch.long))


def test_kv_hf_round_trip():
    kv = _rand_kv(batch=2)
    kv.mask[1, 3:] = 0
    back = KV.from_hf(kv.to_hf(), kv.mask)
    assert back.num_layers == 2
    for a, b in zip(kv.keys + kv.values, back.keys + back.values):
        assert torch.equal(a, b)
    assert torch.equal(back.real_lengths(), torch.tensor([5, 3]))


def test_kv_round_trip_through_model(tiny_lm):
    ids = torch.tensor([tiny_lm.encode("the movie was great")])
    with torch.no_grad():
        _, kv = tiny_lm.forward(ids=ids)
        again = KV.from_hf(kv.to_hf(), kv.mask)
        h1, _ = tiny_lm.forward(ids=torch.tensor([[5]]), past=kv)
        h2, _ = tiny_lm.forward(ids=torch.tensor([[5]]), past=again)
    assert kv.num_layers == tiny_lm.num_layers
    assert kv.keys[0].shape == (1, tiny_lm.num_kv_heads, ids.shape[1], tiny_lm.head_dim)
    assert torch.equal(h1, h2)
    # to_hf gives a fresh cache: running the model on it does not grow the original KV
    assert kv.seq_len == ids.shape[1] and kv.keys[0].shape[2] == ids.shape[1]


def test_kv_expand_select_cat_shapes():
    kv = _rand_kv(batch=1, seq=5)
    e = kv.expand(3)
    assert e.batch_size == 3 and e.seq_len == 5 and e.keys[0].shape == (3, 2, 5, 4)
    assert torch.equal(e.keys[1][2], kv.keys[1][0])
    with pytest.raises(AssertionError):
        e.expand(4)
    two = _rand_kv(batch=2, seq=5)
    two.keys[0][1] += 100
    s = two.select(torch.tensor([1, 1, 0]))
    assert s.batch_size == 3 and s.keys[0].shape == (3, 2, 5, 4)
    assert torch.equal(s.keys[0][0], two.keys[0][1]) and torch.equal(s.keys[0][2], two.keys[0][0])
    other = _rand_kv(batch=3, seq=2)
    other.mask[0, 1] = 0
    c = kv.cat(other)  # batch-1 self broadcasts to other's batch
    assert c.batch_size == 3 and c.seq_len == 7
    assert c.keys[0].shape == (3, 2, 7, 4) and c.values[1].shape == (3, 2, 7, 4)
    assert torch.equal(c.keys[0][:, :, :5], kv.keys[0].expand(3, -1, -1, -1))
    assert torch.equal(c.values[1][:, :, 5:], other.values[1])
    assert c.real_lengths().tolist() == [6, 7, 7]


# --- decoding --------------------------------------------------------------------------------------
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_greedy_decode_equals_full_forward_argmax(chat):
    lm = make_tiny_lm(chat=chat, seed=1)
    prefix_ids = lm.encode("Classify the input. Answer with one of: positive, negative.", bos=True)
    rows = [lm.encode("the movie was great"), lm.encode("a terrible boring film and sports results"),
            lm.encode("x")]
    with torch.no_grad():
        _, kv = lm.forward(ids=torch.tensor([prefix_ids]))
    cfg = GenerationConfig(max_tokens=10)
    got = decode(lm, kv, rows, cfg)
    got_noprefix = decode(lm, None, [prefix_ids + r for r in rows], cfg)
    want = [lm.tokenizer.decode(greedy_reference(lm, prefix_ids + r, 10), skip_special_tokens=True).strip()
            for r in rows]
    assert [g[0] for g in got] == want
    assert [g[0] for g in got_noprefix] == want
    assert any(want)  # something was generated


def test_decode_stop_string_cuts_text(tiny_plain_lm):
    lm = tiny_plain_lm
    row = lm.encode("Input: very good\nOutput:", bos=True)
    full = decode(lm, None, [row], GenerationConfig(max_tokens=12))[0][0]
    assert len(full) >= 6, full
    stop = full[3:5]
    cut = full[: full.index(stop)].strip()
    used_before = lm.budget.completion_tokens
    got = decode(lm, None, [row], GenerationConfig(max_tokens=12, stop=[stop]))[0][0]
    assert got == cut
    assert stop not in got
    assert lm.budget.completion_tokens - used_before < 12  # decoding stopped early


def test_sampling_is_seeded(tiny_lm):
    lm = tiny_lm
    rows = [lm.encode("the movie was great"), lm.encode("sports")]

    def run(seed):
        return decode(lm, None, rows, GenerationConfig(n=3, temperature=1.5, max_tokens=8, seed=seed))

    a, b = run(0), run(0)
    assert len(a) == 2 and all(len(x) == 3 for x in a)
    assert a == b  # reproducible
    assert run(1) != a  # seed 0 is a seed, not "no seed"
    assert len(set(a[0])) > 1  # the n samples of one row differ
    assert run(7) == run(7)


# --- calibration -----------------------------------------------------------------------------------
def test_calibrate_flips_biased_prediction():
    # the model prefers label 0 for x (0.6 vs 0.4), but it prefers label 0 even with no content (0.8 vs 0.2)
    scores = torch.log(torch.tensor([[0.6, 0.4], [0.9, 0.1]]))
    cf = torch.log(torch.tensor([[0.7, 0.3], [0.9, 0.1]]))  # mean p_cf = [0.8, 0.2]
    out = calibrate(scores, cf)
    assert scores.argmax(-1).tolist() == [0, 0]
    assert out.argmax(-1).tolist() == [1, 0]  # 0.6/0.8 < 0.4/0.2 flips; 0.9/0.8 > 0.1/0.2 stays
    q = torch.softmax(out, -1)  # Zhao et al.: q = softmax(W p), W = diag(p_cf)^-1
    w = torch.tensor([[0.6 / 0.8, 0.4 / 0.2], [0.9 / 0.8, 0.1 / 0.2]])
    torch.testing.assert_close(q, w / w.sum(-1, keepdim=True))
    # the result is log p(l|x) - log p_cf(l), p renormalised over the labels first: label words' total
    # log-probs need not sum to 1 over the labels
    torch.testing.assert_close(out, torch.log(w))
    torch.testing.assert_close(calibrate(scores - 3.0, cf), out)
    torch.testing.assert_close(calibrate(scores, cf + 1.0), out)


def test_calibrated_evaluate_uses_content_free_scores(tiny_lm):
    task = _tiny_task()
    raw = classify_scores(tiny_lm, task, TextPrompt(instruction=task.instruction), task.test)
    cal_prompt = Calibrated(inner=TextPrompt(instruction=task.instruction))
    cal = classify_scores(tiny_lm, task, cal_prompt, task.test)
    layout = build_layout(tiny_lm, task.instruction, [], task.labels)
    cands = [layout.answer(w) for w in task.labels.values()]
    cf = torch.tensor([[plain_logprob(tiny_lm, layout.header + layout.body + layout.example(x), c) for c in cands]
                       for x in ("N/A", "", "[MASK]")])
    torch.testing.assert_close(cal, calibrate(raw, cf), atol=ATOL, rtol=0)


# --- the real model --------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_model_scores_equal_plain_forward(real_lm):
    task = Task.demo("demo_topics")
    assert any(len(real_lm.encode(w)) > 1 for w in task.labels.values())
    exs = task.test[:3]
    prompt = TextPrompt(instruction=task.instruction, demos=task.train[:2])
    r = evaluate(real_lm, task, prompt, examples=exs, batch_size=3, progress=False)
    layout = build_layout(real_lm, prompt.instruction, prompt.demos, task.labels)
    for ex, p in zip(exs, r.predictions):
        assert p["input"] == ex.input
        ctx = layout.header + layout.body + layout.example(ex.input)
        for lab, words in task.labels.items():
            assert p["scores"][lab] == pytest.approx(plain_logprob(real_lm, ctx, layout.answer(words)), abs=1e-3)
