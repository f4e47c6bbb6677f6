"""Late prompt tuning on tiny models: the prompt enters at its layer, gradients stop there, the artifact is exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import promptlift
from promptlift.artifacts import LatePrompt, load
from promptlift.cli import main
from promptlift.engine.evaluate import label_candidates
from promptlift.engine.soft import header_kv, late_prefix_kv, soft_prefix_kv
from promptlift.errors import ConfigError
from promptlift.lm.scoring import score_candidates
from promptlift.methods.soft.late_prompt_tuning import LatePromptModule
from promptlift.template import build_layout

from fakes import learner, make_tiny_lm, synth_task

pytestmark = pytest.mark.usefixtures("one_thread")


def _kv_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.keys + a.values, b.keys + b.values))


@pytest.mark.parametrize("position", ["after_header", "prepend"])
def test_layer_zero_is_prompt_tuning_exactly(position):
    lm = make_tiny_lm(layers=3)
    layout = build_layout(lm, "Classify the input.", [], None)
    embeds = torch.randn(4, lm.hidden_size)
    ids = lm.encode("Classify the input.")[:4]
    assert _kv_equal(late_prefix_kv(lm, layout, embeds, 0, ids, position), soft_prefix_kv(lm, layout, embeds, position))


def test_a_late_prompt_starts_as_its_placeholder_text_and_only_changes_the_layers_from_its_own():
    lm = make_tiny_lm(layers=4)
    layout = build_layout(lm, "Classify the input.", [], None)
    ids = lm.encode("Classify the input.")[:3]
    module = LatePromptModule(lm, layout, ids, 2, "after_header", "Classify the input.")
    as_text = soft_prefix_kv(lm, layout, lm.embed(torch.tensor(ids)))
    assert _kv_equal(module.prefix(lm, layout, None), as_text)
    moved = late_prefix_kv(lm, layout, module.embeds.detach() + 1.0, 2, ids)
    assert _kv_equal(type(moved)(moved.keys[:2], moved.values[:2], moved.mask),
                     type(as_text)(as_text.keys[:2], as_text.values[:2], as_text.mask))
    assert not torch.equal(moved.keys[2], as_text.keys[2])


def test_gradients_stop_at_its_layer_and_the_loss_goes_down():
    lm, task = make_tiny_lm(hidden=64, init_range=0.3, layers=4), synth_task()
    layout = build_layout(lm, task.instruction, [], task.labels)
    module = LatePromptModule(lm, layout, lm.encode(task.instruction)[:4], 2, "after_header", task.instruction)
    header = header_kv(lm, layout)
    rows = [layout.example(ex.input) for ex in task.train[:16]]
    gold = torch.tensor([task.label_names.index(ex.output) for ex in task.train[:16]])
    cands = label_candidates(layout, task)

    grads: dict[int, int] = {}

    def watch(i):
        def hook(mod, args, out):
            h = out[0] if isinstance(out, tuple) else out
            if h.requires_grad:
                h.register_hook(lambda g: grads.__setitem__(i, grads.get(i, 0) + 1))
        return hook

    handles = [layer.register_forward_hook(watch(i)) for i, layer in enumerate(lm.decoder_layers())]
    opt = torch.optim.AdamW(module.parameters(), lr=0.2)
    losses = []
    try:
        for _ in range(30):
            prefix = module.prefix(lm, layout, header)
            assert [k.requires_grad for k in prefix.keys] == [False, False, True, True]
            loss = F.cross_entropy(score_candidates(lm, prefix, rows, [cands] * len(rows)), gold)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        for h in handles:
            h.remove()
    assert sorted(grads) == [2, 3], "no gradient may reach the layers below the prompt's layer"
    assert all(p.grad is None for p in lm.model.parameters())
    assert losses[-1] < 0.5 * losses[0], losses


def test_default_layer_is_the_middle_and_a_layer_past_the_model_is_refused(tmp_path):
    lm, task = make_tiny_lm(layers=4), synth_task()
    run = promptlift.optimize("late-prompt-tuning", lm, task, out=tmp_path / "run", progress=False, epochs=1, tokens=3)
    assert isinstance(run.prompt, LatePrompt) and run.prompt.layer == 2 and len(run.prompt.ids) == 3
    with pytest.raises(ConfigError, match="layer 4 does not exist"):
        promptlift.optimize("late-prompt-tuning", lm, task, out=tmp_path / "r2", progress=False, epochs=1, layer=4)


def test_saved_bit_exactly_and_refused_on_another_model(tmp_path, tiny_dir, capsys):
    lm, task = learner(), synth_task()
    run = promptlift.optimize("late-prompt-tuning", lm, task, out=tmp_path / "run", progress=False, epochs=1,
                              tokens=3, layer=1)
    loaded = load(tmp_path / "run")
    assert loaded.hash == run.prompt.hash and loaded.to_dict() == run.prompt.to_dict()
    assert torch.equal(loaded.embeds, run.prompt.embeds) and loaded.embeds.dtype == torch.float32
    assert promptlift.evaluate(lm, task, loaded, progress=False).accuracy == run.test.accuracy
    # hidden size 64 against the tiny model folder's 32: one line, exit 2, before anything is evaluated
    LatePrompt(embeds=loaded.embeds, ids=loaded.ids, layer=1, hidden_size=64, num_layers=2).save(tmp_path / "anymodel")
    code = main(["eval", "--data", "demo:demo_topics", "--model", str(tiny_dir), "--prompt", str(tmp_path / "anymodel")])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (above it: transformers' own loading bar)
    assert code == 2 and last == "promptlift: error: soft prompt has hidden size 64, the model 32"


def test_a_bad_late_artifact_is_refused():
    with pytest.raises(ValueError, match="placeholder ids"):
        LatePrompt(embeds=torch.zeros(3, 8), ids=[1, 2], layer=1)
    with pytest.raises(ValueError, match="layer must be >= 0"):
        LatePrompt(embeds=torch.zeros(2, 8), ids=[1, 2], layer=-1)
