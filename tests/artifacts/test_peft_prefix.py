"""PrefixPrompt <-> PEFT PREFIX_TUNING: the adapter loads by itself and predicts exactly what promptlift predicts."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fakes import make_tiny_lm
from promptlift.engine.evaluate import evaluate
from promptlift.errors import ArtifactError
from promptlift.lm.hf import HFModel
from promptlift.peft_io import export_peft, import_peft, peft_weight_to_prefix, prefix_to_peft_weight
from promptlift.artifacts import PrefixPrompt, SoftPrompt
from promptlift.task import Example, Task
from promptlift.template import build_layout
from fakes import make_tiny_lm  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the base model is a local directory; never ask the Hub


pytestmark = pytest.mark.usefixtures("one_thread")


def task() -> Task:
    rows = [Example(f"the movie was {w}", "positive" if w in ("great", "good") else "negative")
            for w in ("great", "boring", "good", "terrible", "bad", "wonderful")]
    return Task(name="synth", kind="classification", train=rows, dev=rows, test=rows,
                labels={"negative": "cold", "positive": "hot"}, instruction="Classify.")


@pytest.fixture
def dir_lm(tmp_path):
    """A tiny GQA model (4 heads, 2 kv heads) saved as a transformers directory and loaded back by path."""
    tiny = make_tiny_lm(hidden=64, init_range=0.3)
    base = tmp_path / "base"
    tiny.model.save_pretrained(base)
    tiny.tokenizer.save_pretrained(base)
    return HFModel(str(base), device="cpu")


def prefix_prompt(lm, position, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (lm.num_layers, lm.num_kv_heads, k, lm.head_dim)
    return PrefixPrompt(instruction="Classify.", keys=torch.randn(shape, generator=g),
                        values=torch.randn(shape, generator=g), position=position, hidden_size=lm.hidden_size,
                        num_layers=lm.num_layers, model=lm.model_id, method="prefix-tuning")


def test_weight_layout_round_trips_and_matches_peft_view():
    L, H, k, D = 3, 2, 4, 5
    keys, values = torch.randn(L, H, k, D), torch.randn(L, H, k, D)
    w = prefix_to_peft_weight(keys, values)
    assert w.shape == (k, L * 2 * H * D)
    # PEFT get_prompt: view (B, k, 2L, H, D), permute [2, 0, 3, 1, 4], split into pairs per layer
    pkv = w.unsqueeze(0).view(1, k, 2 * L, H, D).permute([2, 0, 3, 1, 4]).split(2)
    for layer in range(L):
        assert torch.equal(pkv[layer][0, 0], keys[layer]) and torch.equal(pkv[layer][1, 0], values[layer])
    k2, v2 = peft_weight_to_prefix(w, L, H)
    assert torch.equal(k2, keys) and torch.equal(v2, values)


def _reference_logprobs(lm, p, text_ids):
    """Next-token log-probs after [prefix k/v] + text, straight from the tensors (no promptlift engine)."""
    from promptlift.kv import KV

    k = p.keys.shape[2]
    past = KV([x.unsqueeze(0) for x in p.keys.unbind(0)], [x.unsqueeze(0) for x in p.values.unbind(0)],
              torch.ones(1, k, dtype=torch.long))
    with torch.no_grad():
        h, _ = lm.forward(ids=torch.tensor([text_ids]), past=past)
        return lm.logits(h[0, -1]).log_softmax(-1)


@pytest.mark.parametrize("position", ["prepend", "after_header"])
def test_prefix_export_loads_by_itself_and_gives_same_logprobs(position, dir_lm, tmp_path):
    from peft import AutoPeftModelForCausalLM

    lm, t = dir_lm, task()
    p = prefix_prompt(lm, position)
    out = export_peft(p, lm, tmp_path / "adapter")
    cfg = json.loads((out / "adapter_config.json").read_text())
    meta = json.loads((out / "promptlift_export.json").read_text())
    assert cfg["peft_type"] == "PREFIX_TUNING" and cfg["prefix_projection"] is False
    assert cfg["num_attention_heads"] == lm.num_kv_heads == 2  # GQA: PEFT counts key/value heads
    assert cfg["base_model_name_or_path"] == str((tmp_path / "base").resolve()) and meta["base_model_loadable"]
    layout = build_layout(lm, "Classify.", [], t.labels)
    assert cfg["num_virtual_tokens"] == 3 + (len(layout.header) if position == "after_header" else 0)

    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()  # base model found from the adapter alone
    ours = evaluate(lm, t, p, split="test", progress=False).predictions
    cands = [layout.answer(w) for w in t.labels.values()]
    for rec in ours:
        text = lm.tokenizer.decode(layout.header + layout.body + layout.example(rec["input"]))
        if meta["strip_prefix"]:
            assert text.startswith(meta["strip_prefix"])
            text = text[len(meta["strip_prefix"]):]
        ids = lm.encode(text)
        with torch.no_grad():
            theirs = peft_model(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
        # the whole next-token distribution equals promptlift's (prepend: computed straight from the tensors)
        if position == "prepend":
            assert torch.allclose(theirs, _reference_logprobs(lm, p, ids), atol=1e-4)
        scores = []
        for c in cands:
            with torch.no_grad():
                lp = peft_model(input_ids=torch.tensor([ids + c])).logits[0].float().log_softmax(-1)
            start = lp.shape[0] - len(c)
            scores.append(float(sum(lp[start - 1 + i, tok] for i, tok in enumerate(c))))
        assert scores == pytest.approx(list(rec["scores"].values()), abs=1e-4)

    back = import_peft(out, lm, instruction="Classify.")
    assert isinstance(back, PrefixPrompt) and back.position == position
    assert torch.allclose(back.keys, p.keys, atol=1e-6) and torch.allclose(back.values, p.values, atol=1e-6)


def test_peft_import_of_a_foreign_prefix_adapter_is_prepend(dir_lm, tmp_path):
    lm = dir_lm
    p = prefix_prompt(lm, "prepend", k=2)
    out = export_peft(p, lm, tmp_path / "adapter")
    (out / "promptlift_export.json").unlink()  # as if PEFT had trained it
    back = import_peft(out, lm)
    assert back.position == "prepend" and torch.equal(back.keys, p.keys)


def test_prefix_export_refuses_other_shapes(dir_lm, tmp_path):
    lm = dir_lm
    bad = PrefixPrompt(instruction="", keys=torch.zeros(lm.num_layers, 4, 2, lm.head_dim),
                       values=torch.zeros(lm.num_layers, 4, 2, lm.head_dim), position="prepend",
                       hidden_size=lm.hidden_size, num_layers=lm.num_layers)
    with pytest.raises(ArtifactError, match="kv_heads=2"):
        export_peft(bad, lm, tmp_path / "a")
    other = make_tiny_lm(hidden=32)
    with pytest.raises(ArtifactError, match="tiny-llama"):
        export_peft(prefix_prompt(lm, "prepend"), other, tmp_path / "b")
    anonymous = prefix_prompt(lm, "prepend")
    anonymous.model = None
    with pytest.raises(ArtifactError, match="hidden size"):
        export_peft(anonymous, other, tmp_path / "c")


def test_soft_export_records_a_loadable_base_model(dir_lm, tmp_path):
    from peft import AutoPeftModelForCausalLM

    lm = dir_lm
    p = SoftPrompt(instruction="Classify.", embeds=torch.randn(3, lm.hidden_size) * 0.3, hidden_size=lm.hidden_size,
                   num_layers=lm.num_layers, position="prepend", model=lm.model_id)
    out = export_peft(p, lm, tmp_path / "adapter")
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    ids = lm.encode("the movie was great")
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
        x = torch.cat([p.embeds, lm.embed(torch.tensor(ids))]).unsqueeze(0)
        ref = lm.model(inputs_embeds=x).logits[0, -1].log_softmax(-1)
    assert torch.allclose(theirs, ref, atol=1e-4)
