"""The same behaviour on a CUDA GPU as on the CPU: scores, bf16 by default, training, artifacts and runs that
move between devices, generation with a soft prompt.

Skipped where there is no CUDA device (CI has none). Run on a GPU machine with
`pytest tests/test_cuda.py`; BENCHMARKS.md ("GPU vs CPU") says when it last ran there.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import promptlift
from promptlift.artifacts import SoftPrompt, TextPrompt, load
from promptlift.engine.evaluate import classify_scores, evaluate, generate_with_prompt
from promptlift.engine.train import TrainConfig, train
from promptlift.lm.hf import HFModel
from promptlift.methods.base import RunContext
from promptlift.template import build_layout

from fakes import learner, synth_task
from fakes import learner, synth_task  # noqa: F401

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def moved(lm: HFModel, device: str = "cuda", dtype: str = "float32") -> HFModel:
    """The same weights as `lm`, on another device / dtype (a copy: `lm` stays where it is)."""
    return HFModel(lm.model_id, model=copy.deepcopy(lm.model), tokenizer=lm.tokenizer, device=device, dtype=dtype)


def scores(lm, task, prompt=None) -> torch.Tensor:
    """(test rows, labels) label log-probabilities of `prompt` (the task's instruction if None), on the CPU."""
    return classify_scores(lm, task, prompt or TextPrompt(instruction=task.instruction), task.test).float().cpu()


def test_fp32_scores_on_cuda_equal_the_cpu_ones():
    cpu, task = learner(), synth_task()
    gpu = moved(cpu)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    assert torch.allclose(scores(cpu, task), scores(gpu, task), atol=1e-4)
    soft = SoftPrompt(instruction=task.instruction, embeds=torch.randn(3, 64) * 0.3, hidden_size=64, num_layers=2)
    assert torch.allclose(scores(cpu, task, soft), scores(gpu, task, soft), atol=1e-4)  # CPU tensors, CUDA model


def test_auto_on_cuda_is_bf16_and_close_to_fp32(tmp_path):
    cpu, task = learner(), synth_task()
    cpu.model.save_pretrained(tmp_path / "m")
    cpu.tokenizer.save_pretrained(tmp_path / "m")
    auto = HFModel(str(tmp_path / "m"))  # device and dtype "auto": the GPU, bf16 where it has it
    assert auto.device.type == "cuda"
    if torch.cuda.is_bf16_supported():
        assert auto.dtype == torch.bfloat16
    a, b = scores(cpu, task), scores(auto, task)
    assert torch.allclose(a, b, atol=0.2) and not torch.equal(a, b)  # bf16 keeps ~3 significant digits
    with torch.no_grad():
        h, _ = auto.forward(ids=torch.tensor([[5, 6, 7]], device=auto.device))
    assert auto.logits(h).dtype == torch.float32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prompt_tuning_learns_on_cuda_and_the_artifact_loads_on_cpu(dtype, tmp_path):
    cpu, task = learner(), synth_task()
    gpu = moved(cpu, dtype=dtype)
    run = promptlift.optimize("prompt-tuning", gpu, task, out=tmp_path / "run", progress=False, epochs=6, tokens=4,
                              lr=0.1)
    hist = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    epochs = [h for h in hist if "dev_score" in h]
    assert epochs[-1]["loss"] < 0.5 * epochs[0]["loss"], "loss must go down"
    assert run.test.accuracy >= 0.8
    loaded = load(tmp_path / "run")
    for t in loaded.tensors().values():
        assert t.device.type == "cpu" and t.dtype == torch.float32  # artifacts are device-free fp32 data
    if dtype == "float32":
        assert torch.allclose(scores(gpu, task, loaded), scores(cpu, task, loaded), atol=1e-3)
    acc_cpu = evaluate(cpu, task, loaded, split="test", progress=False).accuracy
    assert acc_cpu >= 0.8, "a prompt trained on the GPU works on the CPU"


class _Kill(Exception):
    pass


def test_a_run_killed_on_cuda_resumes_on_cpu(tmp_path):
    from promptlift.methods.soft.prompt_tuning import PromptTuningModule

    cpu, task = learner(), synth_task()
    gpu = moved(cpu)
    layout = build_layout(cpu, task.instruction, [], task.labels)
    cfg = TrainConfig(epochs=4, batch_size=8, lr=0.1)

    def module(lm):
        torch.manual_seed(0)
        return PromptTuningModule(lm, layout, [5, 6, 7, 8], "after_header", task.instruction)

    def kill_at(step):
        def log(row):
            if row.get("step") == step and "dev_score" not in row:
                raise _Kill()
        return log

    full = train(module(gpu), gpu, task, layout, cfg, RunContext(seed=0, run_dir=tmp_path / "a", progress=False))
    with pytest.raises(_Kill):
        train(module(gpu), gpu, task, layout, cfg,
              RunContext(seed=0, run_dir=tmp_path / "b", progress=False, log=kill_at(15)))
    resumed = train(module(cpu), cpu, task, layout, cfg,
                    RunContext(seed=0, run_dir=tmp_path / "b", resume=True, progress=False))
    assert resumed.prompt.embeds.device.type == "cpu"
    assert torch.allclose(resumed.prompt.embeds, full.prompt.embeds.cpu(), atol=1e-3)
    assert len(resumed.history) == len(full.history)


def test_greedy_generation_with_a_soft_prompt_is_the_same_on_cuda():
    cpu = learner()
    gpu = moved(cpu)
    soft = SoftPrompt(instruction="Say it.", embeds=torch.randn(3, 64) * 0.3, hidden_size=64, num_layers=2)
    inputs = ["the movie", "boring", "a longer input of several words"]
    assert generate_with_prompt(gpu, soft, inputs, max_tokens=6) == generate_with_prompt(cpu, soft, inputs,
                                                                                          max_tokens=6)
