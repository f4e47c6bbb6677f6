"""promptlift's soft-prompt methods vs PEFT, side by side in one process, same model, data, template,
steps, batch size, learning rate, number of virtual tokens and selection on dev.

    python bench/soft_vs_peft.py                       # 3 seeds, all four pairs, full SST-2 test
    python bench/soft_vs_peft.py --seeds 0 --pairs prompt-tuning --test-limit 200   # quick

Pairs: prompt-tuning vs PEFT PromptTuning, p-tuning vs PEFT PromptEncoder (MLP),
prefix-tuning vs PEFT PrefixTuning (prefix_projection=True), p-tuning-v2 vs PEFT
PrefixTuning (no projection). PEFT is trained the way its docs show: the full
rendered text + label words as input_ids, labels -100 except on the label
tokens, the model's own loss (full-vocabulary logits at every position).
Both sides get the same batches (same seeded order), AdamW, linear warm-up
(10%) and decay, gradient clipping at 1.0, and keep the epoch with the best dev
accuracy. Both sides' selected prompts are scored on test by the same engine;
the PEFT prompt is converted to a promptlift artifact first, and the script
checks on dev examples that the converted prompt gives PEFT's own scores.

Writes its section of BENCHMARKS.md with the command, the date and the numbers.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SST2, machine_facts, md_table, now, command_line, progress, write_section  # noqa: E402

import promptlift  # noqa: E402
from promptlift.engine.evaluate import evaluate  # noqa: E402
from promptlift.engine.train import _batches  # noqa: E402
from promptlift.kv import KV  # noqa: E402
from promptlift.lm.hf import HFModel  # noqa: E402
from promptlift.methods.base import RunContext  # noqa: E402
from promptlift.registry import get_method  # noqa: E402
from promptlift.artifacts import PrefixPrompt, SoftPrompt  # noqa: E402
from promptlift.task import Task  # noqa: E402
from promptlift.template import build_layout  # noqa: E402

PAIRS = {
    "prompt-tuning": "PromptTuning",
    "p-tuning": "PromptEncoder (MLP)",
    "prefix-tuning": "PrefixTuning (projection)",
    "p-tuning-v2": "PrefixTuning (no projection)",
}


def reset_peak_rss() -> None:
    """Reset the process's RSS high-water mark (Linux), after freeing what earlier runs left."""
    import gc

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peft_config(kind: str, k: int):
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType

    if kind == "prompt-tuning":
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=k)
    if kind == "p-tuning":
        return PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=k, encoder_hidden_size=256,
                                   encoder_reparameterization_type="MLP")
    return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=k,
                              prefix_projection=(kind == "prefix-tuning"), encoder_hidden_size=512)


def peft_to_artifact(kind: str, peft_model, lm, instruction: str):
    """The PEFT model's current prompt as a promptlift artifact with PEFT's placement (prepend)."""
    with torch.no_grad():
        if kind in ("prompt-tuning", "p-tuning"):
            emb = peft_model.get_prompt_embedding_to_save("default").float()
            return SoftPrompt(instruction=instruction, position="prepend", embeds=emb,
                              hidden_size=lm.hidden_size, num_layers=lm.num_layers)
        cache = peft_model.get_prompt(batch_size=1)
        kv = KV.from_hf(cache, torch.ones(1, 1))
        keys = torch.stack([k[0] for k in kv.keys]).float()
        values = torch.stack([v[0] for v in kv.values]).float()
        return PrefixPrompt(instruction=instruction, position="prepend", keys=keys, values=values,
                            hidden_size=lm.hidden_size, num_layers=lm.num_layers)


def peft_label_scores(peft_model, layout, text_rows, cands) -> torch.Tensor:
    """PEFT's own forward: (N, labels) total log-probabilities of each label (for the conversion check)."""
    out = torch.empty(len(text_rows), len(cands))
    with torch.no_grad():
        for i, row in enumerate(text_rows):
            for j, c in enumerate(cands):
                ids = torch.tensor([row + c])
                logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].log_softmax(-1)
                start = logits.shape[0] - len(c)
                out[i, j] = sum(logits[start - 1 + t, tok] for t, tok in enumerate(c))
    return out


def train_peft(kind: str, lm, task: Task, args, seed: int) -> dict:
    from peft import get_peft_model

    torch.manual_seed(seed)
    instruction = task.instruction
    layout = build_layout(lm, instruction, [], task.labels)
    base = copy.deepcopy(lm.model)
    model = get_peft_model(base, peft_config(kind, args.tokens))
    model.train()
    cands = [layout.answer(w) for w in task.labels.values()]
    names = task.label_names
    rows = [layout.header + layout.body + layout.example(ex.input) for ex in task.train]
    gold = [cands[names.index(ex.output)] for ex in task.train]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr_peft or args.lr)
    total = math.ceil(len(rows) / args.batch_size) * args.epochs
    warm = max(1, int(0.1 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    pad = lm.tokenizer.pad_token_id or 0
    step_times, best = [], (-1.0, None, -1)
    lengths = [len(layout.example(ex.input)) for ex in task.train]
    reset_peak_rss()
    for epoch in range(args.epochs):
        for batch in _batches(lengths, args.batch_size, seed, epoch):
            t0 = time.perf_counter()
            seqs = [rows[i] + gold[i] for i in batch]
            T = max(len(s) for s in seqs)
            ids = torch.full((len(batch), T), pad)
            mask = torch.zeros((len(batch), T), dtype=torch.long)
            labels = torch.full((len(batch), T), -100)
            for r, (i, s) in enumerate(zip(batch, seqs)):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
                labels[r, len(rows[i]) : len(s)] = torch.tensor(gold[i])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step_times.append(time.perf_counter() - t0)
        model.eval()
        art = peft_to_artifact(kind, model, lm, instruction)
        dev = evaluate(lm, task, art, split="dev", progress=False).accuracy
        model.train()
        if dev > best[0]:
            best = (dev, art, epoch)
    peak = peak_rss_mib()
    model.eval()
    # the converted artifact must give PEFT's own scores (checked on 4 dev examples)
    check_rows = [layout.header + layout.body + layout.example(ex.input) for ex in task.dev[:4]]
    theirs = peft_label_scores(model, layout, check_rows, cands)
    last = peft_to_artifact(kind, model, lm, instruction)
    ours = torch.tensor([list(p["scores"].values()) for p in
                         evaluate(lm, task, last, examples=task.dev[:4], progress=False).predictions])
    diff = float((theirs - ours).abs().max())
    return {"dev": best[0], "prompt": best[1], "epoch": best[2], "step_s": statistics.median(step_times),
            "peak_mib": peak, "check_diff": diff}


def train_ours(kind: str, lm, task: Task, args, seed: int, lr: float | None) -> dict:
    reset_peak_rss()
    opts = dict(tokens=args.tokens, epochs=args.epochs, batch_size=args.batch_size)
    if lr is not None:
        opts["lr"] = lr
    hist: list[dict] = []
    m = get_method(kind)(**opts)
    ctx = RunContext(seed=seed, progress=False, log=hist.append)
    ctx.seed_everything()
    prompt = m.fit(lm, task, ctx)
    step_s = [h["step_seconds"] for h in hist if "step_seconds" in h]
    return {"dev": prompt.meta["best_dev"], "prompt": prompt, "epoch": prompt.meta["best_epoch"],
            "step_s": statistics.median(step_s), "peak_mib": peak_rss_mib()}


def mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{100 * xs[0]:.1f}"
    return f"{100 * statistics.mean(xs):.1f} ± {100 * statistics.stdev(xs):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated promptlift methods")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-2, help="the shared learning rate (both sides)")
    ap.add_argument("--lr-peft", type=float, default=None, help="override PEFT's learning rate")
    ap.add_argument("--own-defaults", action="store_true",
                    help="also run promptlift with each method's documented default lr")
    ap.add_argument("--test-limit", type=int, default=None, help="score only the first N test examples")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--section", default="soft_vs_peft", help="BENCHMARKS.md section to (re)write")
    args = ap.parse_args()

    progress("loading model and data")
    lm = HFModel("smollm2-135m")
    task = Task.from_dir(SST2)
    test = task.test[: args.test_limit] if args.test_limit else task.test
    zero = evaluate(lm, task, examples=test, progress=False).accuracy
    progress(f"zero-shot test accuracy {zero:.3f} (n={len(test)})")
    rows, raw = [], []
    for kind in args.pairs.split(","):
        variants = [("promptlift", args.lr)]
        own_lr = get_method(kind).Config().lr
        if args.own_defaults and own_lr != args.lr:
            variants.append((f"promptlift, own default lr {own_lr:g}", None))
        res: dict[str, list[dict]] = {}
        for seed in args.seeds:
            for name, lr in variants:
                r = train_ours(kind, lm, task, args, seed, lr)
                r["test"] = evaluate(lm, task, r["prompt"], examples=test, progress=False).accuracy
                res.setdefault(name, []).append(r)
                progress(f"{kind} {name} seed {seed}: dev {r['dev']:.3f} test {r['test']:.3f} "
                         f"step {r['step_s']:.2f}s peak {r['peak_mib']:.0f} MiB")
            r = train_peft(kind, lm, task, args, seed)
            r["test"] = evaluate(lm, task, r["prompt"], examples=test, progress=False).accuracy
            res.setdefault("PEFT", []).append(r)
            progress(f"{kind} PEFT seed {seed}: dev {r['dev']:.3f} test {r['test']:.3f} step {r['step_s']:.2f}s "
                     f"peak {r['peak_mib']:.0f} MiB (conversion check max |diff| {r['check_diff']:.2e})")
        peft_step = statistics.median([r["step_s"] for r in res["PEFT"]])
        for name, rs in res.items():
            step = statistics.median([r["step_s"] for r in rs])
            label = f"{kind} ({name})" if name != "PEFT" else f"PEFT {PAIRS[kind]}"
            rows.append([label, mean_std([r["test"] for r in rs]), mean_std([r["dev"] for r in rs]),
                         f"{step:.2f}", f"{step / peft_step:.2f}×",
                         f"{max(r['peak_mib'] for r in rs):.0f}"])
            raw.append((kind, name, rs))

    table = md_table(["method", "test acc % (mean ± std)", "dev acc %", "median s/step", "vs PEFT",
                      "peak RSS MiB"], rows)
    facts = machine_facts()
    lrs = f"lr {args.lr}" + (f" (PEFT {args.lr_peft})" if args.lr_peft else "")
    body = f"""## Soft prompts vs PEFT: {', '.join(args.pairs.split(','))} (`bench/soft_vs_peft.py`)

Run {now()}: `{command_line()}`

Model smollm2-135m (fp32, CPU, {facts['cpu']}, torch threads {facts['torch_threads']}); data SST-2 16-shot
(train 32 / dev 32), test n={len(test)}; {args.tokens} virtual tokens, {args.epochs} epochs of batch {args.batch_size}
({math.ceil(len(task.train) / args.batch_size) * args.epochs} steps), {lrs}, seeds {args.seeds}; best epoch on dev.
Zero-shot (same template): {100 * zero:.1f} %.

{table}

Seconds per step: forward + backward + optimizer step, median over all steps and seeds. Peak RSS: the
process's high-water mark during that side's training (reset before each; the model itself is ~0.55 GB
and PEFT trains on its own copy). Conversion check (PEFT prompt → promptlift artifact, max |Δ log-prob|
over 4 dev examples × labels): {', '.join(f"{k}: {max(r['check_diff'] for r in rs):.1e}" for k, n, rs in raw if n == 'PEFT')}.
"""
    print(body)
    if not args.no_write:
        write_section(args.section, body)


if __name__ == "__main__":
    main()
