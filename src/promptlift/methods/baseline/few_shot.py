"""Few-shot in-context learning: k demonstrations before the input.

Brown et al. 2020, "Language Models are Few-Shot Learners" (random, class-balanced
demonstrations); Liu et al. 2022, "What Makes Good In-Context Examples for
GPT-3?" (nearest neighbours of each input, `selection="knn"`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...artifacts import Calibrated, KnnPrompt, TextPrompt
from ...engine.search import best_of
from ...errors import ConfigError
from ...registry import register
from ..base import Method
from ..shared import balanced_sample


@register("few-shot")
class FewShot(Method):
    """k demonstrations: random class-balanced (best of `trials` draws on dev, ties by the gold label's
    probability, then the earlier draw), or nearest neighbours."""

    family = "baseline"
    takes = ("text",)
    smoke = {"shots": 2, "trials": 2}

    @dataclass
    class Config:
        shots: int = field(default=4, metadata={"help": "number of demonstrations k"})
        selection: str = field(default="random", metadata={"help": "random (class-balanced) | knn (per input)"})
        trials: int = field(default=1, metadata={"help": "random draws scored on dev; the best is kept"})
        instruction: str = field(default="", metadata={"help": "instruction text; empty = the task's default"})
        calibrate: bool = field(default=False, metadata={"help": "apply contextual calibration"})
        embedder: str = field(default="auto", metadata={
            "help": "knn: auto (the model itself on a local model, tfidf on an endpoint) | model | tfidf"})

        def __post_init__(self):
            if self.shots < 1:
                raise ValueError("shots must be >= 1")
            if self.selection not in ("random", "knn"):
                raise ValueError(f"selection must be 'random' or 'knn', got {self.selection!r}")
            if self.embedder not in ("auto", "model", "tfidf"):
                raise ValueError(f"embedder must be auto, model or tfidf, got {self.embedder!r}")
            if self.trials < 1:
                raise ValueError("trials must be >= 1")

    def fit(self, lm, task, ctx):
        c = self.config
        instruction = c.instruction or task.instruction
        wrap = (lambda p: Calibrated(inner=p)) if c.calibrate else (lambda p: p)
        if c.selection == "knn":
            embedder = c.embedder if c.embedder != "auto" else ("model" if lm.is_white_box else "tfidf")
            if embedder == "model" and not lm.is_white_box:
                raise ConfigError("embedder=model embeds inputs with the model itself: it needs a local model; "
                                  "use embedder=tfidf on an endpoint")
            return wrap(KnnPrompt(instruction=instruction, pool=list(task.split("train")), k=c.shots,
                                  embedder=embedder))
        rng = ctx.rng()
        draws = [wrap(TextPrompt(instruction=instruction, demos=balanced_sample(task, c.shots, rng)))
                 for _ in range(c.trials)]
        if c.trials == 1:
            return draws[0]
        choice = best_of(draws, lm, task, ctx, name=self.name)  # the search loop's one rule, ties included
        for t, score in enumerate(choice.scores):
            if score is None:
                ctx.record(event="budget", step=t, message="budget exhausted: the remaining draws were not scored")
                break
            ctx.record(step=t, dev_score=score)
        best = draws[choice.index]
        if choice.stopped:
            best.meta = {**best.meta, "stopped": choice.stopped}
        return best
