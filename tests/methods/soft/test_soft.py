"""Soft prompts on a tiny random model: every method learns, artifacts round-trip, resume, NaN, PEFT interop."""

from __future__ import annotations

import json
import random

import pytest
import torch

import promptlift
from promptlift.artifacts import load
from promptlift.engine.evaluate import evaluate, generate_with_prompt
from promptlift.engine.train import SoftModule, TrainConfig, train
from promptlift.errors import ArtifactError, ConfigError
from promptlift.methods.base import RunContext
from promptlift.artifacts import PrefixPrompt, SoftPrompt
from promptlift.engine.soft import soft_prefix_kv
from promptlift.task import Example, Task
from promptlift.template import build_layout

from fakes import make_tiny_lm


from fakes import learner, synth_task  # noqa: E402
from fakes import ctx, learner, make_tiny_lm, synth_task  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")




METHOD_LR = {"prompt-tuning": 0.1, "p-tuning": 0.05, "prefix-tuning": 0.01, "p-tuning-v2": 0.1}


@pytest.mark.parametrize("method", list(METHOD_LR))
def test_method_learns_synthetic_task(method, tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize(method, lm, task, out=tmp_path / "run", progress=False, epochs=6, tokens=4,
                              lr=METHOD_LR[method])
    hist = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    epochs = [h for h in hist if "dev_score" in h]
    assert len(epochs) == 6
    assert epochs[-1]["loss"] < 0.5 * epochs[0]["loss"], "loss must go down"
    assert run.test.accuracy >= 0.8, f"{method} should learn the task well above chance (0.5)"
    assert run.prompt.meta["best_dev"] == max(h["dev_score"] for h in epochs)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["cost"]["backward"] == 6 * 6  # 48 examples / batch 8 * 6 epochs


@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning-v2"])
def test_artifact_round_trips_bit_exactly(method, tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize(method, lm, task, out=tmp_path / "run", progress=False, epochs=1, tokens=3)
    loaded = load(tmp_path / "run")
    assert type(loaded) is type(run.prompt)
    assert loaded.tensors().keys() == run.prompt.tensors().keys()
    for name, t in loaded.tensors().items():
        assert torch.equal(t, run.prompt.tensors()[name])
    assert loaded.to_dict() == run.prompt.to_dict()
    a = evaluate(lm, task, run.prompt, split="test", progress=False).predictions
    b = evaluate(lm, task, loaded, split="test", progress=False).predictions
    assert [x["scores"] for x in a] == [x["scores"] for x in b]
    # a changed tensor file is refused
    st = tmp_path / "run" / "prompt.safetensors"
    from safetensors.torch import load_file, save_file

    t = load_file(str(st))
    first = next(iter(t))
    t[first] = t[first] + 1e-3
    save_file(t, str(st))
    with pytest.raises(ArtifactError, match="hash"):
        load(tmp_path / "run")


def test_soft_prompt_refuses_other_model(tmp_path):
    lm = learner()
    p = SoftPrompt(embeds=torch.randn(2, 64), hidden_size=64, num_layers=2, model="tiny-llama")
    other = make_tiny_lm(hidden=32)
    with pytest.raises(ArtifactError, match="hidden size"):
        evaluate(other, synth_task(), p, progress=False)
    p.model = "another-model"
    with pytest.raises(ArtifactError, match="another-model"):
        evaluate(lm, synth_task(), p, progress=False)


class _Kill(Exception):
    pass


def _ctx(tmp_path, resume=False, kill_at=None, seed=0):
    def log(row):
        if kill_at is not None and row.get("step") == kill_at and "dev_score" not in row:
            raise _Kill()

    return RunContext(seed=seed, run_dir=tmp_path, resume=resume, progress=False, log=log)


def _pt_module(lm, layout):
    from promptlift.methods.soft.p_tuning import PTuningModule

    torch.manual_seed(0)
    return PTuningModule(lm, [5, 6, 7], "after_header", "Classify.", "lstm", 32, -1)


def test_resume_after_kill_ends_where_uninterrupted_run_ends(tmp_path):
    """The P-tuning encoder (an LSTM) is in the checkpoint: a resumed run equals an uninterrupted one."""
    lm, task = learner(), synth_task()
    layout = build_layout(lm, "Classify.", [], task.labels)
    cfg = TrainConfig(epochs=4, batch_size=8, lr=0.05)
    full = train(_pt_module(lm, layout), lm, task, layout, cfg, _ctx(tmp_path / "a"))

    with pytest.raises(_Kill):  # killed in the middle of epoch 2 (step 15 of 24)
        train(_pt_module(lm, layout), lm, task, layout, cfg, _ctx(tmp_path / "b", kill_at=15))
    assert (tmp_path / "b" / "checkpoint" / "state.pt").exists()
    fresh = _pt_module(lm, layout)  # a new process: fresh encoder weights, restored from the checkpoint
    resumed = train(fresh, lm, task, layout, cfg, _ctx(tmp_path / "b", resume=True))
    assert torch.allclose(resumed.prompt.embeds, full.prompt.embeds, atol=1e-6)
    assert [h["dev_score"] for h in resumed.history] == [h["dev_score"] for h in full.history]


class _NaNAfter(SoftModule):
    def __init__(self, lm, steps):
        super().__init__()
        self.v = torch.nn.Parameter(lm.embed(torch.tensor([5, 6])).detach().clone())
        self.calls, self.steps = 0, steps
        self.shell = SoftPrompt(hidden_size=lm.hidden_size, num_layers=lm.num_layers)

    def prefix(self, lm, layout, header):
        self.calls += 1
        v = self.v * float("nan") if self.calls > self.steps else self.v
        return soft_prefix_kv(lm, layout, v, header=header)

    def to_prompt(self):
        return SoftPrompt(embeds=self.v.detach().clone(), hidden_size=self.shell.hidden_size,
                          num_layers=self.shell.num_layers)


def test_nan_stops_with_message_and_keeps_last_good_prompt(tmp_path, capsys):
    lm, task = learner(), synth_task()
    layout = build_layout(lm, "", [], task.labels)
    res = train(_NaNAfter(lm, steps=8), lm, task, layout, TrainConfig(epochs=3, lr=0.01), _ctx(tmp_path))
    assert res.stopped == "nan"
    assert torch.isfinite(res.prompt.embeds).all()
    assert "NaN" in capsys.readouterr().err
    assert res.best_epoch == 0  # the epoch finished before the NaN


def test_budget_stops_training_and_keeps_best(tmp_path):
    lm, task = learner(), synth_task()
    run = promptlift.optimize("prompt-tuning", lm, task, progress=False, epochs=5, tokens=2, lr=0.1,
                              budget="backward=8")
    assert run.prompt.meta["stopped"] == "budget"
    assert run.cost["backward"] == 9  # the step that crossed the limit is counted, then training stops
    assert torch.isfinite(run.prompt.embeds).all()


def test_generation_with_soft_and_prefix_prompts_matches_full_forward():
    lm = learner()
    layout = build_layout(lm, "Say it.", [], None)
    soft = SoftPrompt(instruction="Say it.", embeds=torch.randn(3, 64) * 0.3, hidden_size=64, num_layers=2)
    out = generate_with_prompt(lm, soft, ["the movie"], max_tokens=6)[0]
    # reference: greedy decoding by full forward passes over explicit embeddings
    seq = torch.cat([lm.embed(torch.tensor(layout.header)), soft.embeds, lm.embed(torch.tensor(layout.body)),
                     lm.embed(torch.tensor(layout.example("the movie")))])
    toks = []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(lm.model(inputs_embeds=seq.unsqueeze(0)).logits[0, -1].argmax())
            if nxt in lm.eos_ids:
                break
            toks.append(nxt)
            seq = torch.cat([seq, lm.embed(torch.tensor([nxt]))])
    assert out == lm.tokenizer.decode(toks, skip_special_tokens=True).strip()
    k = torch.randn(2, 2, 2, 16)
    pre = PrefixPrompt(instruction="Say it.", keys=k, values=torch.randn(2, 2, 2, 16), hidden_size=64, num_layers=2)
    a = generate_with_prompt(lm, pre, ["the movie", "boring"], max_tokens=5)
    assert a == generate_with_prompt(lm, pre, ["the movie", "boring"], max_tokens=5) and len(a) == 2


def test_generation_task_trains():
    lm = learner()

    def rows(seed):
        rng = random.Random(seed)
        return [Example(w, {"good": "bad", "bad": "good", "hot": "cold", "cold": "hot"}[w])
                for w in rng.choices(["good", "bad", "hot", "cold"], k=24)]

    task = Task(name="gen", kind="generation", train=rows(0), dev=rows(1)[:8], test=rows(2)[:8], metric="exact")
    ctx = RunContext(progress=False)
    layout = build_layout(lm, task.instruction, [], None)
    from promptlift.methods.soft.prompt_tuning import PromptTuningModule

    res = train(PromptTuningModule(lm, layout, [5, 6, 7, 8], "after_header", task.instruction), lm, task, layout,
                TrainConfig(epochs=6, lr=0.1), ctx)
    assert res.history[-1]["loss"] < 0.6 * res.history[0]["loss"]


def test_unknown_soft_option_is_an_error():
    with pytest.raises(ConfigError, match="encoder"):
        promptlift.get_method("p-tuning")(encoder="gru")
    with pytest.raises(ConfigError, match="nosuch"):
        promptlift.get_method("prompt-tuning")(nosuch=1)


def test_existing_run_dir_is_not_silently_overwritten(tmp_path):
    lm, task = learner(), synth_task()
    promptlift.optimize("zero-shot", lm, task, out=tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        promptlift.optimize("zero-shot", lm, task, out=tmp_path / "r", progress=False)
    promptlift.optimize("zero-shot", lm, task, out=tmp_path / "r", progress=False, overwrite=True)


@pytest.mark.parametrize("position", ["after_header", "prepend"])
def test_peft_export_gives_same_scores_and_imports_back(position, tmp_path):
    from peft import PeftModel

    from promptlift.peft_io import export_peft, import_peft

    lm, task = learner(), synth_task()
    p = SoftPrompt(instruction="Classify.", embeds=torch.randn(3, 64) * 0.3, hidden_size=64, num_layers=2,
                   position=position, model=lm.model_id)
    out = export_peft(p, lm, tmp_path / "adapter")
    meta = json.loads((out / "promptlift_export.json").read_text())
    ours = evaluate(lm, task, p, split="test", limit=6, progress=False).predictions

    peft_model = PeftModel.from_pretrained(make_tiny_lm(hidden=64, init_range=0.3).model, str(out)).eval()
    layout = build_layout(lm, "Classify.", [], task.labels)
    cands = [layout.answer(w) for w in task.labels.values()]
    for rec in ours:
        text = lm.tokenizer.decode(layout.header + layout.body + layout.example(rec["input"]))
        if meta["strip_prefix"]:
            assert text.startswith(meta["strip_prefix"])
            text = text[len(meta["strip_prefix"]):]
        ids = lm.encode(text)
        scores = []
        for c in cands:
            with torch.no_grad():
                logits = peft_model(input_ids=torch.tensor([ids + c])).logits[0].log_softmax(-1)
            # PEFT prepends its virtual tokens to the logits; score positions of the candidate
            start = logits.shape[0] - len(c)
            scores.append(float(sum(logits[start - 1 + i, t] for i, t in enumerate(c))))
        assert scores == pytest.approx(list(rec["scores"].values()), abs=1e-3)
    back = import_peft(out, lm, instruction="Classify.")
    assert back.position == position
    assert torch.allclose(back.embeds, p.embeds, atol=1e-6)
    # the shared model is left untouched by the export
    assert not hasattr(lm.model, "peft_config") and not any(q.requires_grad for q in lm.model.parameters())


# --- demonstrations after the instruction (BBT / BBTv2 start from a few-shot prompt) ------------------
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_soft_prompt_with_demos_scores_as_a_full_forward_over_its_layout(chat, tmp_path):
    """[header][soft][instruction][demos' turns][input][answer]: engine scores == one full forward each."""
    import dataclasses

    import torch.nn.functional as F

    from promptlift.engine.evaluate import classify_scores

    lm, task = make_tiny_lm(chat=chat), synth_task()
    demos = task.train[:2]
    gen = torch.Generator().manual_seed(0)
    p = SoftPrompt(instruction=task.instruction, demos=demos, embeds=torch.randn(3, lm.hidden_size, generator=gen) * 0.3,
                   hidden_size=lm.hidden_size, num_layers=lm.num_layers)
    p.save(tmp_path / "p")
    back = load(tmp_path / "p")
    assert back.demos == demos and back.hash == p.hash and torch.equal(back.embeds, p.embeds)
    layout = build_layout(lm, task.instruction, demos, task.labels)
    exs = task.dev[:3]
    scores = classify_scores(lm, task, p, exs)  # (3, labels)

    def emb(ids):
        return lm.embed(torch.tensor(ids, dtype=torch.long))

    with torch.no_grad():
        for i, e in enumerate(exs):
            ctx = torch.cat([emb(layout.header), p.embeds, emb(layout.body), emb(layout.example(e.input))])
            for j, words in enumerate(task.labels.values()):
                cand = layout.answer(words)
                lp = F.log_softmax(lm.model(inputs_embeds=torch.cat([ctx, emb(cand)]).unsqueeze(0)).logits[0].float(), -1)
                want = sum(float(lp[len(ctx) - 1 + k, t]) for k, t in enumerate(cand))
                assert float(scores[i, j]) == pytest.approx(want, abs=1e-4)
    assert not torch.allclose(scores, classify_scores(lm, task, dataclasses.replace(p, demos=[]), exs))
    pre = PrefixPrompt(instruction=task.instruction, demos=demos, keys=torch.randn(2, 2, 2, 8, generator=gen),
                       values=torch.randn(2, 2, 2, 8, generator=gen), hidden_size=lm.hidden_size, num_layers=2)
    assert not torch.allclose(classify_scores(lm, task, pre, exs),
                              classify_scores(lm, task, dataclasses.replace(pre, demos=[]), exs))


def test_peft_export_refuses_a_soft_prompt_with_demos(tmp_path):
    from promptlift.peft_io import export_peft

    lm, task = learner(), synth_task()
    p = SoftPrompt(instruction="x", demos=task.train[:1], embeds=torch.zeros(2, lm.hidden_size),
                   hidden_size=lm.hidden_size, num_layers=lm.num_layers)
    with pytest.raises(ConfigError, match="demonstrations"):
        export_peft(p, lm, tmp_path / "out")
    assert not (tmp_path / "out").exists()
