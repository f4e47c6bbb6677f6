"""PromptAgent: Wang et al. 2024, "PromptAgent: Strategic Planning with Language Models Enables Expert-level
Prompt Optimization" (ICLR 2024).

Monte-Carlo tree search over prompts. A node is a prompt; expanding it is an
error-feedback action: the target answers a training minibatch, the optimizer reads
the errors, writes feedback, and rewrites the prompt along it (the same textual
gradient step as ProTeGi), giving `expand_width` children. Each child's reward is
its dev score. Each step selects a leaf by UCT from the root
(mean reward + c * sqrt(ln N(parent) / N(child))), expands it, and backs the
children's rewards up the path. Nodes at `depth` are terminal. The best prompt is
the node with the best dev score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...registry import register
from .common import LLMConfig, LLMMethod
from .protegi import gradient_edits, wrong_answers


@register("promptagent")
class PromptAgent(LLMMethod):
    """MCTS over prompt states; expansions are error-feedback rewrites."""

    smoke = {"steps": 2, "expand_width": 1, "minibatch": 4, "dev_examples": 8}

    @dataclass
    class Config(LLMConfig):
        steps: int = field(default=6, metadata={"help": "MCTS iterations (one expansion each)"})
        temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the optimizer model"})
        expand_width: int = field(default=2, metadata={"help": "children per expansion (feedback samples)"})
        depth: int = field(default=3, metadata={"help": "deepest prompt level; deeper nodes are terminal"})
        minibatch: int = field(default=8, metadata={"help": "training examples answered to find errors"})
        errors: int = field(default=3, metadata={"help": "wrong examples shown to the optimizer"})
        exploration: float = field(default=2.5, metadata={"help": "UCT exploration constant c"})

        def __post_init__(self):
            super().__post_init__()
            if min(self.expand_width, self.depth, self.minibatch, self.errors) < 1 or self.exploration < 0:
                raise ValueError("expand_width, depth, minibatch and errors must be >= 1, exploration >= 0")

        # gradient_edits reads these names
        @property
        def gradients(self) -> int:
            return self.expand_width

        @property
        def edits_per_gradient(self) -> int:
            return 1

    def uct(self, nodes: dict, parent: str, child: str) -> float:
        n = nodes[child]
        return n["value"] / n["visits"] + self.config.exploration * math.sqrt(
            math.log(max(1, nodes[parent]["visits"])) / n["visits"])

    def select_path(self, nodes: dict, root: str) -> list[str]:
        """Root to leaf, choosing the child with the highest UCT (ties: the earlier child)."""
        path = [root]
        while nodes[path[-1]]["children"]:
            kids = nodes[path[-1]]["children"]
            path.append(max(kids, key=lambda k: (self.uct(nodes, path[-1], k), -kids.index(k))))
        return path

    def propose(self, state):
        c = self.config
        nodes, root = state.data["nodes"], state.data["root"]
        path = self.select_path(nodes, root)
        leaf = path[-1]
        state.data["path"] = path
        if nodes[leaf]["depth"] >= c.depth or nodes[leaf].get("dead"):
            backup(nodes, path, nodes[leaf]["reward"])  # a terminal leaf is simulated again: its reward counts
            state.skip("terminal")
            return []
        errors = wrong_answers(state, state.prompts[leaf], c.minibatch, c.errors)
        if not errors:
            nodes[leaf]["dead"] = True  # nothing left to correct here
            backup(nodes, path, nodes[leaf]["reward"])
            state.skip("no-errors")
            return []
        _, children = gradient_edits(self, state, leaf, errors)
        return children

    def update(self, state, scored):
        d = state.data
        if "nodes" not in d:  # the starting prompt is the root
            r = scored[0]
            d["root"] = r.key
            d["nodes"] = {r.key: {"parent": None, "children": [], "visits": 1, "value": r.score, "reward": r.score,
                                  "depth": 0}}
            return
        nodes, path = d["nodes"], d["path"]
        leaf = path[-1]
        for r in scored:
            if r.key in nodes:
                continue
            nodes[r.key] = {"parent": leaf, "children": [], "visits": 0, "value": 0.0, "reward": r.score,
                            "depth": nodes[leaf]["depth"] + 1}
            nodes[leaf]["children"].append(r.key)
            backup(nodes, path + [r.key], r.score)

    def optimizer_calls_per_step(self) -> int:
        return 2 * self.config.expand_width

    def per_step(self, state):
        return self.config.expand_width, self.config.minibatch


def backup(nodes: dict, path: list[str], reward: float) -> None:
    """Add one visit with `reward` to every node on `path`."""
    for k in path:
        nodes[k]["visits"] += 1
        nodes[k]["value"] += reward
