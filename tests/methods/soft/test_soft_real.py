"""End-to-end soft prompts on the real bundled model (slow)."""

from __future__ import annotations

import pytest
import torch

import promptlift
from promptlift.task import Task

from fakes import DATA
from fakes import DATA  # noqa: F401

pytestmark = pytest.mark.slow


def test_prompt_tuning_improves_generation_on_antonyms(real_lm):
    """Prompt tuning on a generation task beats zero-shot exact match on the full test split (100)."""
    task = Task.from_dir(DATA / "antonyms")  # 64 train, 24 dev rows
    zero = promptlift.evaluate(real_lm, task, split="test", progress=False, max_new_tokens=8)
    run = promptlift.optimize("prompt-tuning", real_lm, task, seed=0, progress=False, epochs=4, tokens=8,
                              init="text", eval_splits=("test",))
    assert run.test.n == 100
    assert run.test.accuracy > zero.accuracy + 0.05, (zero.accuracy, run.test.accuracy)


def test_soft_prompt_generate_through_cli(real_lm, tmp_path, capsys):
    """A soft prompt applies in `promptlift generate` (not only in classification)."""
    from promptlift.cli import main
    from promptlift.artifacts import SoftPrompt

    torch.manual_seed(0)
    p = SoftPrompt(instruction="Answer briefly.", embeds=real_lm.embed(torch.tensor([100, 200, 300])).detach(),
                   hidden_size=real_lm.hidden_size, num_layers=real_lm.num_layers, model="smollm2-135m")
    p.save(tmp_path / "p")
    assert main(["generate", "What is the capital of France?", "--prompt", str(tmp_path / "p"),
                 "--max-tokens", "8", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)["output"]
    assert isinstance(out, str) and out
