"""The trainer's loss curve on the tiny model, pinned (as torchtune's recipe tests pin theirs).

A change to the one gradient loop (batching, seeds, schedule, loss, the key/value prefix) that moves a
loss value shows here, even when the loss still goes down. The values were recorded once on CPU, one
thread, fp32 (torch 2.13.0); a deliberate change to the trainer records them again, and says why."""

from __future__ import annotations

import pytest
import torch

import promptlift
from fakes import learner, synth_task
from promptlift.runs import read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

# the per-step training loss of prompt tuning (4 tokens, 2 epochs of 6 steps, batch 8, lr 0.03, seed 0)
PINNED = [
    1.9691483974456787, 1.5460611581802368, 0.9976622462272644, 0.7067809104919434,
    0.9537484049797058, 1.5614339113235474, 2.204272985458374, 0.9242820143699646,
    0.6349292397499084, 0.8431366086006165, 1.3469069004058838, 0.7473770976066589,
]


def test_prompt_tuning_loss_curve_on_the_tiny_model_is_pinned(tmp_path):
    torch.manual_seed(0)
    promptlift.optimize("prompt-tuning", learner(), synth_task(), out=tmp_path / "run", seed=0, progress=False,
                        eval_splits=(), tokens=4, epochs=2, batch_size=8, lr=0.03, init="random")
    steps = [r for r in read_jsonl(tmp_path / "run" / "history.jsonl") if "lr" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    losses = torch.tensor([r["loss"] for r in steps], dtype=torch.float64)
    torch.testing.assert_close(losses, torch.tensor(PINNED, dtype=torch.float64), rtol=1e-5, atol=0)
    assert losses[-6:].mean() < losses[:6].mean()  # and it learns
