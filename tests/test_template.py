"""The prompt's token segments equal the tokenization of the full rendered text."""

from __future__ import annotations

import random

import pytest

from promptlift.methods.shared import balanced_sample
from promptlift.task import Example, Task
from promptlift.render import render
from promptlift.template import build_layout, to_ids

from fakes import DATA
from fakes import DATA  # noqa: F401

TEXTS = ["no movement , no yuks , not much of anything .", "  leading spaces and\ttabs", "ends with newline\n",
         "Café — naïve “quotes” 123", "a"]


def _task():
    return Task(name="t", kind="classification",
                train=[Example(t, lab) for t, lab in zip(TEXTS * 2, ["pos", "neg"] * 5)],
                labels={"pos": "very good", "neg": "bad"}, instruction="Classify the input.")


@pytest.mark.parametrize("instruction", ["Classify the input.", "", "Ends with blank lines\n\n"])
@pytest.mark.parametrize("shots", [0, 2])
def test_segments_equal_full_text_tokenization_chat(tiny_lm, instruction, shots):
    task = _task()
    demos = balanced_sample(task, shots, random.Random(0)) if shots else []
    lay = build_layout(tiny_lm, instruction, demos, task.labels)
    for x in TEXTS:
        full = to_ids(tiny_lm, render(instruction, demos, x, task.labels))
        assert lay.header + lay.body + lay.example(x) == full


@pytest.mark.parametrize("shots", [0, 2])
def test_segments_equal_full_text_tokenization_plain(tiny_plain_lm, shots):
    task = _task()
    demos = balanced_sample(task, shots, random.Random(0)) if shots else []
    lay = build_layout(tiny_plain_lm, task.instruction, demos, task.labels)
    for x in TEXTS:
        full = to_ids(tiny_plain_lm, render(task.instruction, demos, x, task.labels))
        assert lay.header + lay.body + lay.example(x) == full


@pytest.mark.slow
def test_segments_equal_full_text_on_real_tokenizer(real_lm):
    task = Task.from_dir(DATA / "sst2")
    for demos in ([], balanced_sample(task, 4, random.Random(0))):
        lay = build_layout(real_lm, task.instruction, demos, task.labels)
        for ex in task.test[:100]:
            full = to_ids(real_lm, render(task.instruction, demos, ex.input, task.labels))
            assert lay.header + lay.body + lay.example(ex.input) == full
