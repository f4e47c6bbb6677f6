"""Least-to-most prompting (decompose, solve in order, answer) as a `Reasoning` prompt with one follow-up trigger:
its stages, the same answers on a local model and through an endpoint, the baseline method, and the LLM methods'
`strategy` option."""

from __future__ import annotations

import json

import pytest

import promptlift
from promptlift.artifacts import Reasoning, TextPrompt, load
from promptlift.artifacts.base import FORMAT, content_hash
from promptlift.artifacts.wrappers import DECOMPOSE, SOLVE, least_to_most
from promptlift.cli import method_options
from promptlift.engine.apply import applier_for
from promptlift.engine.evaluate import generate_with_prompt
from promptlift.errors import ConfigError
from promptlift.lm.base import LM, GenerationConfig
from promptlift.lm.budget import Budget, ledger_of
from promptlift.registry import get_method
from promptlift.task import Example, Task
from fakes import RuleTarget, ScriptedLM, ctx, make_tiny_lm, sentiment_rule, serving, toy_task  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def gen_task() -> Task:
    exs = [Example(x, y) for x, y in [("hot", "cold"), ("up", "down"), ("big", "small"), ("good", "bad")]]
    return Task(name="g", kind="generation", train=exs, dev=exs[:2], test=exs, instruction="Give the antonym.")


class StagedChat(LM):
    """A chat endpoint that answers each stage by the partial answer it is asked to continue; records them."""

    api = "chat"
    model_id = "staged-chat"

    def __init__(self):
        self.budget = Budget()
        self.prefixes: list[str] = []

    def capabilities(self):
        return {"logprobs": False}

    def generate(self, prompts, config=None):
        out = []
        for msgs in prompts:
            prefix = msgs[-1]["content"] if msgs[-1]["role"] == "assistant" else ""
            self.prefixes.append(prefix)
            word = [m["content"] for m in msgs if m["role"] == "user"][-1].rpartition("\n\n")[2]
            if prefix.endswith(DECOMPOSE):
                out.append([f" What is the opposite of {word}?\n"])
            elif prefix.endswith(SOLVE):
                out.append([" The opposite of it is its antonym."])
            else:
                out.append([f" {dict(hot='cold', up='down').get(word, '?')}.\nmore"])
            ledger_of(self).charge(calls=1)
        return out


def test_three_stages_each_continuing_the_text_so_far():
    lm, task = StagedChat(), gen_task()
    prompt = least_to_most(TextPrompt(instruction=task.instruction))
    assert applier_for(prompt).stages(prompt) == 3
    assert applier_for(Reasoning(inner=TextPrompt())).stages(Reasoning(inner=TextPrompt())) == 2  # CoT as before
    assert generate_with_prompt(lm, prompt, ["hot", "up"], task=task) == ["cold", "down"]
    assert lm.prefixes == [
        DECOMPOSE, DECOMPOSE,
        f"{DECOMPOSE} What is the opposite of hot?\n{SOLVE}", f"{DECOMPOSE} What is the opposite of up?\n{SOLVE}",
        f"{DECOMPOSE} What is the opposite of hot?\n{SOLVE} The opposite of it is its antonym.\nTherefore, the answer is",
        f"{DECOMPOSE} What is the opposite of up?\n{SOLVE} The opposite of it is its antonym.\nTherefore, the answer is"]


def test_the_reasoning_read_by_demonstrations_holds_every_stage():
    lm, task = StagedChat(), gen_task()
    prompt = least_to_most(TextPrompt(instruction=task.instruction))
    from promptlift.engine.backends import backend_for

    reasons = applier_for(prompt).reasons(prompt, backend_for(lm), task, ["hot"], GenerationConfig())
    assert reasons == [f"What is the opposite of hot?\n{SOLVE} The opposite of it is its antonym."]


def test_least_to_most_on_an_endpoint_answers_as_locally():
    from fakes import serving
    from promptlift.lm.cache import CallCache
    from promptlift.lm.openai import OpenAIModel

    lm, task = make_tiny_lm(), gen_task()
    prompt = least_to_most(TextPrompt(instruction=task.instruction), reasoning_tokens=5)
    with serving(lm) as srv:
        ep = OpenAIModel("tiny", base_url=srv.base_url, cache=CallCache(enabled=False), retry_backoff=0.01)
        local = generate_with_prompt(lm, prompt, ["hot", "up"], max_tokens=4, task=task)
        remote = generate_with_prompt(ep, prompt, ["hot", "up"], max_tokens=4, task=task)
    assert local == remote
    last = [r["messages"][-1] for r in srv.requests if r.get("messages")]
    decompose = [m for m in last if m["content"] == DECOMPOSE]
    solve = [m for m in last if m["content"].startswith(DECOMPOSE + " ") and m["content"].endswith("\n" + SOLVE)]
    answer = [m for m in last if m["content"].endswith("\nTherefore, the answer is") and f"\n{SOLVE} " in m["content"]]
    assert len(decompose) == len(solve) == len(answer) == 2
    assert all(m["role"] == "assistant" for m in decompose + solve + answer)


def test_artifact_round_trips_and_chain_of_thought_files_are_unchanged(tmp_path):
    p = least_to_most(TextPrompt(instruction="Give the antonym."), reasoning_tokens=40)
    path = p.save(tmp_path / "l2m")
    q = load(tmp_path / "l2m")
    assert q == p and q.hash == p.hash and q.followups == [SOLVE]
    assert q.save(tmp_path / "again").read_bytes() == path.read_bytes()
    with pytest.raises(ValueError, match="followups"):
        Reasoning(inner=TextPrompt(), followups=["  "])


def test_a_chain_of_thought_artifact_saved_before_followups_keeps_its_hash(tmp_path):
    # a prompt.json as written before `followups` existed: its content hash is what `serve --sha256` pins
    old = {"format": FORMAT, "type": "reasoning", "model": None, "task": None, "method": "zero-shot-cot", "meta": {},
           "inner": {"type": "text", "model": None, "task": None, "method": "", "meta": {}, "instruction": "Think.",
                     "demos": []},
           "trigger": "Let's think step by step.", "answer_trigger": "Therefore, the answer is", "reasoning_tokens": 96}
    sha = content_hash(old)
    (tmp_path / "prompt.json").write_text(json.dumps({**old, "sha256": sha}))
    p = load(tmp_path)
    assert p.followups == [] and p.hash == sha


def test_baseline_method(tmp_path):
    lm, task = make_tiny_lm(), gen_task()
    r = promptlift.optimize("least-to-most", lm, task, out=tmp_path / "run", progress=False, seed=0,
                            reasoning_tokens=3)
    p = load(tmp_path / "run")
    assert isinstance(p, Reasoning) and p.trigger == DECOMPOSE and p.followups == [SOLVE]
    assert p.inner.instruction == task.instruction and p.reasoning_tokens == 3 and p.method == "least-to-most"
    assert 0.0 <= r.test.accuracy <= 1.0


def test_every_llm_method_takes_the_strategy_option(tmp_path):
    ape = get_method("ape")
    cfg = ape.make_config(**method_options(ape, ["--reasoning", "--strategy", "least-to-most"]))
    assert cfg.reasoning is True and cfg.strategy == "least-to-most"
    assert ape.make_config(**method_options(ape, ["--reasoning"])).strategy == "cot"  # the boolean flag as before
    with pytest.raises(ConfigError, match="turn reasoning on"):
        ape.make_config(strategy="least-to-most")
    with pytest.raises(ConfigError, match="strategy must be one of"):
        ape.make_config(reasoning=True, strategy="tree")
    with pytest.raises(ConfigError, match="has its own"):
        ape.make_config(reasoning=True, strategy="least-to-most", trigger="Think.")
    # the instruction is optimized inside the least-to-most wrapper
    p = ape(**ape.smoke, reasoning=True, strategy="least-to-most").fit(
        RuleTarget(sentiment_rule), toy_task(), ctx(optimizer=ScriptedLM(["judge the sentiment"])))
    assert isinstance(p, Reasoning) and p.trigger == DECOMPOSE and p.followups == [SOLVE]
    assert p.inner.instruction == "Judge the sentiment"
