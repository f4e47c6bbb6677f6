"""One rendering for every consumer: its documented rules, and token-for-token agreement between the
white-box engine's tokens and the chat messages the black-box path sends."""

from __future__ import annotations

import pytest
import torch

from fakes import DATA
from promptlift import Task
from promptlift.artifacts import KnnPrompt, Reasoning, SoftPrompt, TextPrompt
from promptlift.artifacts.wrappers import least_to_most
from promptlift.engine.apply import applier_for
from promptlift.engine.backends import Endpoint, WhiteBox
from promptlift.errors import ConfigError
from promptlift.render import render
from promptlift.task import Example
from promptlift.template import build_layout
from fakes import DATA  # noqa: F401

DEMOS = [Example("great film", "pos"), Example("dull film", "neg")]
LABELS = {"pos": "positive", "neg": "negative"}


def test_rules_for_a_plain_input():
    r = render("Classify.", DEMOS, "a fine movie", LABELS)
    assert r.messages() == [
        {"role": "user", "content": "Classify.\n\ngreat film"}, {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "dull film"}, {"role": "assistant", "content": "negative"},
        {"role": "user", "content": "a fine movie"}]
    assert r.plain_text() == ("Classify.\n\nInput: great film\nOutput: positive\n\nInput: dull film\nOutput: negative"
                              "\n\nInput: a fine movie\nOutput:")


def test_rules_for_a_callers_conversation():
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": [{"type": "text", "text": "ok?"}]}]
    assert render("Classify.", [], conv).messages() == [
        {"role": "system", "content": "Be brief."},  # the caller's system message stays first, unchanged
        {"role": "user", "content": "Classify.\n\nhi"},  # instruction: start of the first user turn
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "ok?"}]
    with_demos = render("Classify.", DEMOS[:1], conv, LABELS).messages()
    assert [m["role"] for m in with_demos] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert with_demos[1]["content"] == "Classify.\n\ngreat film" and with_demos[3]["content"] == "hi"


def test_answer_prefix_is_a_final_assistant_message():
    r = render("", [], "2+2?", None, "Let's think step by step.")
    assert r.messages()[-1] == {"role": "assistant", "content": "Let's think step by step."}
    assert r.plain_text().endswith("Input: 2+2?\nOutput: Let's think step by step.")


@pytest.mark.parametrize("bad, match", [
    ([{"content": "x"}], r"messages\[0\]: expected an object"),
    ([{"role": "robot", "content": "x"}], r"messages\[0\]\.role"),
    ([{"role": "user", "content": 3}], r"messages\[0\]\.content"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], r"only text parts"),
    ([{"role": "system", "content": "x"}], "at least one user message"),
])
def test_bad_messages_are_one_line_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        render("", [], bad)


class _Chat:
    """Stands in for an endpoint: the black-box path only needs to know it speaks the chat API."""

    api = "chat"
    model_id = "openai:test"


def whitebox_tokens(lm, prompt, task, inputs, prefixes=None) -> list[list[int]]:
    cond = applier_for(prompt).condition(prompt, WhiteBox(lm), task, inputs, prefixes)
    return [cond.prefix_ids + r for r in cond.rows]


def endpoint_tokens(lm, prompt, task, inputs, prefixes=None) -> list[list[int]]:
    """What a chat server does with the messages promptlift sends: its chat template, then tokens."""
    cond = applier_for(prompt).condition(prompt, Endpoint(_Chat()), task, inputs, prefixes)
    out = []
    for r in cond.rendered:
        msgs = r.messages()
        cont = msgs[-1]["role"] == "assistant"
        text = lm.tokenizer.apply_chat_template(msgs, tokenize=False, continue_final_message=cont,
                                                add_generation_prompt=not cont)
        out.append(lm.encode(text))
    return out


def _cases(task):
    train = task.train
    cot = Reasoning(inner=TextPrompt(instruction=task.instruction))
    l2m = least_to_most(TextPrompt(instruction=task.instruction, demos=train[:2]))
    ap = applier_for(l2m)
    return {
        "zero-shot": (TextPrompt(instruction=task.instruction), None),
        "few-shot": (TextPrompt(instruction=task.instruction, demos=train[:4]), None),
        "knn": (KnnPrompt(instruction=task.instruction, pool=train, k=3, embedder="tfidf"), None),
        "cot-stage-1": (cot, [cot.trigger]),
        "cot-stage-2": (cot, [f"{cot.trigger} It is kind.\n{cot.answer_trigger}"]),
        # least-to-most: decompose, solve (continuing the sub-questions), answer (continuing both), as the
        # applier builds each stage's opening
        "l2m-decompose": (l2m, [l2m.trigger]),
        "l2m-solve": (l2m, [ap.continued(l2m, "What is it about?\nIs it kind?", l2m.followups[0])]),
        "l2m-answer": (l2m, ap.second_stage(l2m, [f"What is it about?\n{l2m.followups[0]} Kindness. Yes."])),
    }


def _agree(lm, task, inputs):
    for name, (prompt, prefix) in _cases(task).items():
        prefixes = prefix * len(inputs) if prefix else None
        wb, bb = whitebox_tokens(lm, prompt, task, inputs, prefixes), endpoint_tokens(lm, prompt, task, inputs,
                                                                                      prefixes)
        assert wb == bb, name


def _tiny_task():
    rows = ["the movie was great", "a terrible boring film", "sports results today", "world politics summit"]
    exs = [Example(t, lab) for t, lab in zip(rows * 2, ["pos", "neg"] * 4)]
    return Task(name="t", kind="classification", train=exs, test=exs, labels=LABELS, instruction="Classify the input.")


def test_whitebox_tokens_equal_rendered_messages_tiny(tiny_lm):
    task = _tiny_task()
    _agree(tiny_lm, task, [ex.input for ex in task.test] + ["  spaces\tand tabs ", "Café — “quotes”"])


def test_every_stage_the_least_to_most_applier_runs_renders_identically(tiny_lm, monkeypatch):
    """The stage openings the applier itself builds (the model's own reasoning in them) give the same tokens
    locally as the chat messages an endpoint is sent."""
    from promptlift.engine.apply import TextApplier
    from promptlift.lm.base import GenerationConfig

    task = _tiny_task()
    prompt = least_to_most(TextPrompt(instruction=task.instruction), reasoning_tokens=6)
    seen = []
    original = TextApplier.generate

    def spy(self, prompt, backend, task, inputs, cfg, answer_prefixes=None):
        seen.append(list(answer_prefixes))
        return original(self, prompt, backend, task, inputs, cfg, answer_prefixes)

    monkeypatch.setattr(TextApplier, "generate", spy)
    inputs = [ex.input for ex in task.test[:3]]
    applier_for(prompt).generate(prompt, WhiteBox(tiny_lm), task, inputs, GenerationConfig(max_tokens=3))
    assert len(seen) == 3 and seen[1][0].endswith("\n" + prompt.followups[0])
    for prefixes in seen:
        assert whitebox_tokens(tiny_lm, prompt, task, inputs, prefixes) == endpoint_tokens(tiny_lm, prompt, task,
                                                                                           inputs, prefixes)


def test_soft_prompt_segments_are_the_rendered_text(tiny_lm):
    task = _tiny_task()
    soft = SoftPrompt(instruction=task.instruction, embeds=torch.zeros(2, tiny_lm.hidden_size))
    inputs = [ex.input for ex in task.test]
    cond = applier_for(soft).condition(soft, WhiteBox(tiny_lm), task, inputs)
    lay = build_layout(tiny_lm, soft.instruction, [], task.labels)
    text = endpoint_tokens(tiny_lm, TextPrompt(instruction=soft.instruction), task, inputs)
    assert [lay.header + lay.body + r for r in cond.rows] == text


@pytest.mark.slow
def test_whitebox_tokens_equal_rendered_messages_on_the_bundled_chat_template(real_lm):
    task = Task.from_dir(DATA / "sst2")
    _agree(real_lm, task, [ex.input for ex in task.test[:40]])


def test_hfmodel_renders_raw_messages_by_the_same_rendering(tiny_lm, tiny_plain_lm):
    from promptlift.render import from_messages
    from promptlift.template import to_text

    msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "Let's see."}]
    assert tiny_plain_lm.render(msgs) == "Input: 2+2?\nOutput: Let's see."
    assert tiny_lm.render(msgs) == to_text(tiny_lm, from_messages(msgs))
    assert tiny_lm.render(msgs).endswith("<|im_start|>assistant\nLet's see.")  # continued, not closed
