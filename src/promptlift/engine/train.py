"""The one gradient loop, shared by every soft-prompt method.

A method supplies a `SoftModule`: its trainable parameters and how they make
the prompt's key/value prefix (`prefix(lm, layout, header)`), plus
`to_prompt()` that folds it into an artifact. The trainer owns everything else:
AdamW with warm-up and linear decay, gradient clipping, seeds, length-bucketed
batches, dev evaluation with the shared engine after every epoch, best-epoch
selection on dev (never test), early stopping, a checkpoint every epoch,
`resume`, NaN/inf detection, budget, and progress and history through `ctx`
(`ctx.bar`, `ctx.note`, `ctx.record`: the run's reporter, never stderr).

Compute per step: the chat header's cache is computed once per run; the
[soft][instruction] part once per step (batch 1, with gradients) and shared by
the whole batch; logits are computed only at the scored positions.
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..artifacts import Prompt
from ..checkpoints import load_checkpoint, save_checkpoint
from ..errors import ArtifactError, BudgetExceeded, ConfigError
from ..kv import KV
from ..runs import truncate_history
from ..task import Task
from .evaluate import evaluate, label_candidates
from ..lm.budget import ledger_of
from ..lm.scoring import score_candidates
from .soft import header_kv


class SoftModule(nn.Module, abc.ABC):
    """What a gradient method hands the trainer."""

    @abc.abstractmethod
    def prefix(self, lm, layout, header: KV | None) -> KV:
        """Differentiable cache of the prompt's constant part (batch 1)."""

    @abc.abstractmethod
    def to_prompt(self) -> Prompt:
        """The trained prompt as an artifact (reparameterisations folded away, tensors detached)."""


LOSSES = ("auto", "class", "lm")


@dataclass
class TrainConfig:
    """Options of the one trainer. A gradient method's Config extends this class, so every method
    exposes the trainer's options under the same names, defaults and checks."""

    epochs: int = field(default=10, metadata={"help": "passes over train"})
    batch_size: int = field(default=8, metadata={"help": "examples per step"})
    lr: float = field(default=3e-2, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup: float = field(default=0.1, metadata={"help": "fraction of steps of linear warm-up"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0: off)"})
    patience: int = field(default=0, metadata={"help": "early stopping after N epochs without dev gain (0: off)"})
    eval_batch_size: int = field(default=16, metadata={"help": "examples per forward pass of the dev evaluations"})

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("epochs, batch_size and eval_batch_size must be >= 1")
        if not (self.lr > 0):
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.warmup < 1 or self.grad_clip < 0 or self.patience < 0:
            raise ConfigError("weight_decay, grad_clip and patience must be >= 0, warmup in [0, 1)")


def loss_option(default: str = "auto"):
    """The `loss` option of a method trained on gold outputs (see `train`'s `loss`)."""
    return field(default=default, metadata={"help": "auto | class (softmax over labels) | lm (gold tokens)"})


def check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ConfigError(f"loss must be auto, class or lm, got {loss!r}")


@dataclass
class TrainResult:
    prompt: Prompt
    best_epoch: int
    best_dev: float
    history: list[dict] = field(default_factory=list)
    stopped: str = ""  # why training stopped early ("", "early-stopping", "nan", "budget")


def _batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled batches of similar lengths: deterministic in (seed, epoch), so a resumed run replays exactly."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    chunk = batch_size * 4
    batches = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i : i + chunk], key=lambda j: lengths[j])
        batches += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[p] for p in perm]


LossFn = Callable[[KV, list[list[int]], list[int]], torch.Tensor]


def train(module: SoftModule, lm, task: Task, layout, cfg: TrainConfig, ctx, loss: str | LossFn = "auto") -> TrainResult:
    """Train `module` on task.train, select the best epoch on task.dev; return its prompt.

    loss: "class" (softmax over the label scores), "lm" (log-likelihood of the gold tokens) or
      "auto" (class for classification, else lm); or a function `loss(prefix, rows, batch)` that
      gets the step's differentiable prefix, the batch's token rows (`layout.example` of each input)
      and their indices in task.train, and returns the scalar loss to minimise. Distillation uses
      it to fit a teacher's output distributions instead of the outputs in task.train.
    """
    if not task.train:
        raise ConfigError(f"{task.source}: gradient training needs a non-empty train split")
    classification = task.is_classification
    loss_fn = loss if callable(loss) else None
    if loss_fn is None:
        check_loss(loss)
    loss_kind = "fn" if loss_fn is not None else loss if loss != "auto" else ("class" if classification else "lm")
    if loss_kind == "class" and not classification:
        raise ConfigError("loss=class needs a classification task")

    # --- data: token rows and targets, built once -------------------------------------
    exs = task.train
    rows = [layout.example(ex.input) for ex in exs]
    if classification:
        cands = label_candidates(layout, task)
        gold = torch.tensor([task.label_names.index(ex.output) for ex in exs])
    else:
        targets = [layout.answer(ex.output, close=True) for ex in exs]
    lengths = [len(r) for r in rows]
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs

    # trainable parameters live on the model's device in fp32 (a bf16 model casts them as it reads them)
    module.to(device=lm.device, dtype=torch.float32)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup * total)) if cfg.warmup > 0 else 0

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    # --- resume -----------------------------------------------------------------------
    ckpt = Path(ctx.run_dir) / "checkpoint" / "state.pt" if ctx.run_dir else None
    start_epoch, history = 0, []
    best = {"score": -math.inf, "epoch": -1, "state": None}
    bad_epochs = 0
    if ckpt is not None and ctx.resume and ckpt.exists():
        state = load_checkpoint(ckpt, map_location=lm.device)  # weights_only: never runs code from the file
        try:
            module.load_state_dict(state["module"])
        except (KeyError, RuntimeError) as e:
            raise ArtifactError(f"{ckpt}: checkpoint does not fit this method and model "
                                f"({str(e).splitlines()[0][:160]})") from None
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        start_epoch, history, best, bad_epochs = state["epoch"] + 1, state["history"], state["best"], state["bad_epochs"]
        # history lines logged after the checkpoint belong to the epoch being redone: drop them
        truncate_history(ctx.run_dir, lambda r: r.get("epoch", -1) < start_epoch)
        ctx.note(f"resuming from {ckpt} at epoch {start_epoch}")

    stopped = ""
    try:
        ledger_of(lm).check()  # a budget already spent (e.g. on choosing a start) charges nothing more
        with torch.no_grad():
            header = header_kv(lm, layout)
            header = header.detach() if header is not None else None
    except BudgetExceeded as e:  # spent before training (e.g. on choosing a start): the start is kept
        header, stopped, start_epoch = None, "budget", cfg.epochs
        ctx.note(f"{e}; keeping the starting prompt")

    def dev_score() -> float:
        module.eval()
        with torch.no_grad():
            prompt = module.to_prompt()
            r = evaluate(lm, task, prompt, split="dev", batch_size=cfg.eval_batch_size, progress=False,
                         reporter=ctx.reporter)
        module.train()
        return r.accuracy

    bar = ctx.bar(total, "train", initial=start_epoch * steps_per_epoch)
    t0 = time.perf_counter()
    module.train()
    last_good = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for epoch in range(start_epoch, cfg.epochs):
        losses = []
        try:
            for batch in _batches(lengths, cfg.batch_size, ctx.seed, epoch):
                t_step = time.perf_counter()
                prefix = module.prefix(lm, layout, header)
                brows = [rows[i] for i in batch]
                if loss_fn is not None:
                    loss = loss_fn(prefix, brows, batch)
                elif loss_kind == "class":
                    scores = score_candidates(lm, prefix, brows, [cands] * len(batch))  # (B, labels)
                    loss = F.cross_entropy(scores, gold[batch].to(scores.device))
                elif classification:  # "lm": log-likelihood of the gold label words only
                    bt = [[cands[int(gold[i])]] for i in batch]
                    n_tok = torch.tensor([len(c[0]) for c in bt], dtype=torch.float32, device=lm.device)
                    loss = -(score_candidates(lm, prefix, brows, bt)[:, 0] / n_tok).mean()
                else:
                    bt = [[targets[i]] for i in batch]
                    n_tok = torch.tensor([len(targets[i]) for i in batch], dtype=torch.float32, device=lm.device)
                    loss = -(score_candidates(lm, prefix, brows, bt)[:, 0] / n_tok).mean()
                if not torch.isfinite(loss):
                    stopped = "nan"
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                ledger_of(lm).charge(backward=1)
                gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                if not torch.isfinite(gnorm):
                    stopped = "nan"
                    break
                opt.step()
                sched.step()
                last_good = {k: v.detach().clone() for k, v in module.state_dict().items()}
                losses.append(loss.item())
                bar.update(1)
                shown = {"loss": f"{losses[-1]:.3f}"}
                if best["score"] > float("-inf"):  # no dev number before the first dev evaluation
                    shown["dev"] = f"{best['score']:.3f}"
                bar.set_postfix(**shown)
                ctx.record(step=epoch * steps_per_epoch + len(losses), epoch=epoch,
                           loss=losses[-1], lr=sched.get_last_lr()[0], step_seconds=round(time.perf_counter() - t_step, 4))
            if stopped:
                break
            score = dev_score()
        except BudgetExceeded as e:
            stopped = "budget"
            ctx.note(f"{e}; keeping the best prompt so far")
            break
        row = {"epoch": epoch, "step": (epoch + 1) * steps_per_epoch, "loss": sum(losses) / max(1, len(losses)),
               "dev_score": score, "seconds": round(time.perf_counter() - t0, 3)}
        history.append(row)
        ctx.record(**row)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in module.state_dict().items()}}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if ckpt is not None:
            save_checkpoint(ckpt, {"module": module.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(),
                         "epoch": epoch, "history": history, "best": best, "bad_epochs": bad_epochs,
                         "config": asdict(cfg)})
        if cfg.patience and bad_epochs >= cfg.patience:
            stopped = "early-stopping"
            break
    bar.close()
    if stopped == "nan":
        ctx.note("loss or gradient became NaN/inf; stopped and kept the last good prompt "
                 "(lower --lr or raise grad clipping)")
        ctx.record(event="nan", epoch=epoch)
        module.load_state_dict(last_good)
        if best["state"] is None:
            best = {"score": dev_score(), "epoch": epoch, "state": last_good}
    if best["state"] is None:  # budget ran out before the first dev evaluation
        best = {"score": float("nan"), "epoch": -1,
                "state": {k: v.detach().clone() for k, v in module.state_dict().items()}}
    module.load_state_dict(best["state"])
    module.eval()
    with torch.no_grad():
        prompt = module.to_prompt()
    prompt.meta.update({"best_epoch": best["epoch"], "best_dev": best["score"], "stopped": stopped})
    return TrainResult(prompt, best["epoch"], best["score"], history, stopped)
