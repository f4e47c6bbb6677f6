"""Baseline accuracy and evaluation-engine speed on SST-2 with the bundled SmolLM2-135M.

One process, one model, one data set. Measures and writes to BENCHMARKS.md
(section `eval_baselines`):

1. test accuracy (95% Wilson CI) of zero-shot (task instruction), zero-shot
   without instruction, zero-shot calibrated, k-shot with class-balanced random
   demos from train (seeds 0,1,2: mean ± sample std) and k-shot calibrated;
2. speed of `promptlift.engine.evaluate` against the plain transformers loop a
   user would write (full chat text + label words per label, padded batch,
   full-vocabulary logits everywhere, no prefix reuse), on the same examples,
   with the agreement of their predictions;
3. cold (empty cache: dequantize GGUF + save safetensors) and cached start of
   `HFModel(model)`, each in a fresh subprocess;
4. peak RSS.

Calibrated accuracies reuse the uncalibrated run's label scores: the engine's
own content-free scores + `calibrate` are applied to them (examples whose
calibrated margin is below 1e-3, where the 4-decimal rounding of stored scores
could matter, are rescored exactly), and the result is checked against
`evaluate(..., Calibrated(prompt))` on the first `--check-n` examples.

    .venv/bin/python bench/eval_baselines.py                      # full run (~20+ min on 2 cores)
    .venv/bin/python bench/eval_baselines.py --limit 64 --plain-limit 32 --out /tmp/b.md   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile

from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    BENCHMARKS_MD, REPO, SST2, StageLog, command_line, loadavg, machine_facts, md_table, now, peak_rss_mb, progress,
    timed,
)

from promptlift.artifacts import CONTENT_FREE, Calibrated, TextPrompt  # noqa: E402
from promptlift.engine.evaluate import calibrate, classify_scores, evaluate  # noqa: E402
from promptlift.metrics import summarize  # noqa: E402
from promptlift.methods.shared import balanced_sample  # noqa: E402
from promptlift.task import Example, Task  # noqa: E402
from promptlift.render import render  # noqa: E402
from promptlift.template import build_layout, to_text  # noqa: E402

SECTION = "eval_baselines"
TIE_MARGIN = 1e-3  # calibrated margins below this are rescored exactly (stored scores have 4 decimals)

_START_CHILD = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
from promptlift.lm.hf import HFModel
t1 = time.perf_counter()
lm = HFModel(sys.argv[1])
t2 = time.perf_counter()
d = lm.path
size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) if d.exists() else 0
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "complete": (d / ".complete").exists(), "cache_mb": size / 2**20}))
"""


# --- measurements ----------------------------------------------------------------------------
def start_times(model: str) -> dict:
    """HFModel(model) in a subprocess with an empty cache dir, then again with that cache warm."""
    out = {}
    tmp = Path(tempfile.mkdtemp(prefix="promptlift-coldstart-"))
    env = {**os.environ, "PROMPTLIFT_CACHE_DIR": str(tmp)}
    try:
        for kind in ("cold", "cached"):
            with timed() as t:
                p = subprocess.run([sys.executable, "-c", _START_CHILD, model], env=env, capture_output=True,
                                   text=True, cwd=REPO)
            if p.returncode != 0:
                raise RuntimeError(f"{kind} start failed:\n{p.stderr[-2000:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["process_wall_s"] = t.wall
            out[kind] = r
            progress(f"{kind} start: HFModel() {r['load_s']:.1f}s (process {t.wall:.1f}s wall), "
                     f"cache {'complete' if r['complete'] else 'MISSING'} {r['cache_mb']:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def plain_loop_scores(lm, task: Task, instruction: str, demos, exs, batch_size: int) -> torch.Tensor:
    """What a user would write: per batch and label, full chat text + label words, one padded forward.

    Right padding (positions then count from 0 for every row, as the model's default
    position ids assume), full-vocabulary log-softmax at every position, sum of the
    label tokens' log-probabilities. Returns (N, labels).
    """
    tok, model = lm.tokenizer, lm.model
    words = list(task.labels.values())
    side = tok.padding_side
    tok.padding_side = "right"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    out = torch.empty(len(exs), len(words))
    try:
        with torch.no_grad():
            for i in range(0, len(exs), batch_size):
                batch = exs[i : i + batch_size]
                texts = [to_text(lm, render(instruction, demos, ex.input, task.labels)) for ex in batch]
                plen = [len(ids) for ids in tok(texts, add_special_tokens=False).input_ids]
                for j, w in enumerate(words):
                    enc = tok([t + w for t in texts], add_special_tokens=False, padding=True, return_tensors="pt")
                    logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
                    logp = torch.log_softmax(logits.float(), dim=-1)
                    lens = enc.attention_mask.sum(1).tolist()
                    for b in range(len(batch)):
                        pos = torch.arange(plen[b] - 1, lens[b] - 1)  # position t predicts token t+1
                        out[i + b, j] = logp[b, pos, enc.input_ids[b, pos + 1]].sum()
    finally:
        tok.padding_side = side
    return out


def token_identity(lm, task: Task, prompt: TextPrompt, exs) -> tuple[int, str]:
    """How many examples the engine feeds exactly the tokens of the plain loop's full-text tokenization,
    and where the first differing example differs (tokens around the first difference)."""
    layout = build_layout(lm, prompt.instruction, prompt.demos, task.labels)
    same, where = 0, ""
    for ex in exs:
        text = to_text(lm, render(prompt.instruction, prompt.demos, ex.input, task.labels))
        plain = lm.tokenizer(text, add_special_tokens=False).input_ids
        eng = layout.header + layout.body + layout.example(ex.input)
        if plain == eng:
            same += 1
        elif not where:
            i = next((k for k, (a, b) in enumerate(zip(plain, eng)) if a != b), min(len(plain), len(eng)))
            show = lambda ids: " ".join(repr(lm.tokenizer.decode([t])) for t in ids[max(0, i - 2): i + 3])  # noqa: E731
            where = f"at token {i}: engine {show(eng)} vs full text {show(plain)}"
    return same, where


def stored_scores(res, names) -> torch.Tensor:
    return torch.tensor([[rec["scores"][n] for n in names] for rec in res.predictions])


def calibrated(lm, task: Task, prompt: TextPrompt, res, exs, batch_size: int) -> dict:
    """Accuracy of `Calibrated(prompt)`, from the uncalibrated result `res` (see module doc)."""
    names = task.label_names
    cal_prompt = Calibrated(inner=prompt)
    with timed() as t, torch.no_grad():
        cf = classify_scores(lm, task, prompt, [Example(x, names[0]) for x in CONTENT_FREE], batch_size)
        scores = calibrate(stored_scores(res, names), cf)
        top2 = scores.topk(2, dim=-1).values
        near = ((top2[:, 0] - top2[:, 1]) < TIE_MARGIN).nonzero().flatten().tolist()
        if near:
            scores[near] = classify_scores(lm, task, cal_prompt, [exs[i] for i in near], batch_size)
    preds = [names[i] for i in scores.argmax(-1).tolist()]
    golds = [ex.output for ex in exs]
    s = summarize([float(p == g) for p, g in zip(preds, golds)], golds, preds)
    return {"accuracy": s["accuracy"], "ci95": s["ci95"], "n": s["n"], "preds": preds, "rescored": len(near),
            "extra_seconds": t.wall, "p_cf": torch.softmax(cf, -1).mean(0).tolist()}


# --- formatting ------------------------------------------------------------------------------
def pct(x: float, d: int = 1) -> str:
    return f"{100 * x:.{d}f}"


def ci(c) -> str:
    return f"[{pct(c[0])}, {pct(c[1])}]"


def share(preds, names) -> str:
    n = len(preds) or 1
    return " · ".join(f"{name} {pct(sum(p == name for p in preds) / n, 0)}%" for name in names)


def mean_std(xs) -> str:
    m = statistics.mean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{pct(m)} ± {pct(sd)}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


# --- main ------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(SST2))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=None, help="test examples for the accuracy runs (default: all)")
    ap.add_argument("--plain-limit", type=int, default=400,
                    help="first N test examples timed with both the engine and the plain loop")
    ap.add_argument("--batch-size", type=int, default=16, help="engine and plain loop batch size")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--check-n", type=int, default=64,
                    help="examples on which derived calibration is checked against evaluate(Calibrated(prompt))")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for the measurements (default: torch's own choice)")
    ap.add_argument("--thread-check", type=int, default=32,
                    help="time engine zero-shot on the first N examples with 1 thread and with torch's default "
                         "thread count, alternating, twice each (0: skip)")
    ap.add_argument("--skip-start", action="store_true", help="skip the cold/cached start subprocesses")
    ap.add_argument("--out", default=str(BENCHMARKS_MD), help="markdown file whose section is replaced")
    args = ap.parse_args(argv)

    from common import write_section

    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    facts = machine_facts()
    cmd = command_line()
    date = now()
    progress(f"{cmd}\n  CPU {facts['cpu']}, {facts['usable_cpus']} usable CPUs, torch {facts['torch']} "
             f"with {facts['torch_threads']} threads, load {facts['loadavg_start']}")
    log = StageLog()

    # 3. start times (before this process loads anything heavy)
    starts = None
    if not args.skip_start:
        progress("stage: cold and cached model start (subprocesses)")
        with timed() as t:
            starts = start_times(args.model)
        log.add("cold + cached start (subprocesses)", t)

    from promptlift.lm.hf import HFModel

    progress(f"stage: load {args.model} in this process")
    with timed() as t:
        lm = HFModel(args.model)
    load_here = t
    log.add("load model in this process (cache warm)", t)
    task = Task.from_dir(args.data)
    names = task.label_names
    test = task.split("test")
    exs = test[: args.limit] if args.limit else test
    sub = test[: min(args.plain_limit, len(test))]
    bs = args.batch_size
    progress(f"data {task.source}: {len(task.train)} train / {len(test)} test; accuracy on {len(exs)}, "
             f"speed on first {len(sub)}; labels {task.labels}")

    zero = TextPrompt(instruction=task.instruction)
    noinst = TextPrompt(instruction="")
    shots = {s: TextPrompt(instruction=task.instruction, demos=balanced_sample(task, args.shots, random.Random(s)))
             for s in args.seeds}

    progress("stage: warm-up (engine 16 examples, plain loop 8 examples; untimed)")
    with timed() as t:
        evaluate(lm, task, zero, examples=test[:16], batch_size=bs, progress=False)
        plain_loop_scores(lm, task, zero.instruction, [], test[:8], bs)
    log.add("warm-up", t)

    thread_rows = []
    if args.thread_check:
        tc = test[: args.thread_check]
        progress(f"stage: thread check, engine zero-shot on first {len(tc)} with 1 and {default_threads} threads")
        used = torch.get_num_threads()
        runs: dict[int, list] = {1: [], default_threads: []}
        with timed() as t:
            for _ in range(2):
                for th in runs:
                    torch.set_num_threads(th)
                    with timed() as tt:
                        evaluate(lm, task, zero, examples=tc, batch_size=bs, progress=False)
                    runs[th].append(tt)
                    progress(f"  {th} thread(s): {tt}, load {loadavg()}")
        torch.set_num_threads(used)
        log.add(f"thread check (n={len(tc)}, 2 rounds)", t)
        for th, ts in runs.items():
            thread_rows.append([th, " / ".join(f"{x.wall:.1f}" for x in ts), " / ".join(f"{x.cpu:.1f}" for x in ts),
                                f"{len(tc) / min(x.wall for x in ts):.1f}"])

    # 1. accuracy on the test split (engine)
    acc: dict[str, dict] = {}

    def run_engine(key: str, prompt: TextPrompt, label: str):
        progress(f"stage: engine {label} on {len(exs)} test examples")
        with timed() as t:
            r = evaluate(lm, task, prompt, examples=exs, batch_size=bs, progress=False)
        acc[key] = {"res": r, "t": t, "preds": [p["pred"] for p in r.predictions]}
        log.add(f"engine {label} (n={len(exs)})", t)
        progress(f"  accuracy {pct(r.accuracy)}% {ci(r.ci95)}, {len(exs) / t.wall:.1f} ex/s")
        return r

    def run_cal(key: str, prompt: TextPrompt, label: str):
        c = calibrated(lm, task, prompt, acc[key]["res"], exs, bs)
        acc[key + "+cal"] = c
        progress(f"  {label} calibrated: {pct(c['accuracy'])}% {ci(c['ci95'])} (p_cf "
                 f"{[round(x, 3) for x in c['p_cf']]}, {c['rescored']} near-ties rescored, {c['extra_seconds']:.1f}s)")

    run_engine("zero", zero, "zero-shot")
    run_cal("zero", zero, "zero-shot")
    check_n = min(args.check_n, len(exs))
    progress(f"stage: check derived calibration against evaluate(Calibrated(prompt)) on {check_n} examples")
    with timed() as t:
        direct = evaluate(lm, task, Calibrated(inner=zero), examples=exs[:check_n], batch_size=bs,
                          progress=False)
    cal_check = sum(p["pred"] == q for p, q in zip(direct.predictions, acc["zero+cal"]["preds"][:check_n]))
    log.add(f"calibration check (n={check_n})", t)
    progress(f"  {cal_check}/{check_n} identical predictions")
    run_engine("noinst", noinst, "zero-shot, no instruction")
    for s, p in shots.items():
        run_engine(f"shot{s}", p, f"{args.shots}-shot seed {s}")
        run_cal(f"shot{s}", p, f"{args.shots}-shot seed {s}")

    # 2. speed: engine vs plain loop on the same examples
    speed: dict[str, dict] = {}
    s0 = args.seeds[0]
    for key, prompt, label in (("zero", zero, "zero-shot"), ("shot", shots[s0], f"{args.shots}-shot seed {s0}")):
        progress(f"stage: speed {label}: engine on first {len(sub)}")
        with timed() as te:
            r = evaluate(lm, task, prompt, examples=sub, batch_size=bs, progress=False)
        log.add(f"speed: engine {label} (n={len(sub)})", te)
        progress(f"stage: speed {label}: plain loop on first {len(sub)}")
        with timed() as tp:
            ps = plain_loop_scores(lm, task, prompt.instruction, prompt.demos, sub, bs)
        log.add(f"speed: plain loop {label} (n={len(sub)})", tp)
        eng_pred = [p["pred"] for p in r.predictions]
        plain_pred = [names[i] for i in ps.argmax(-1).tolist()]
        agree = sum(a == b for a, b in zip(eng_pred, plain_pred))
        same_tok, tok_where = token_identity(lm, task, prompt, sub)
        diff = (ps - stored_scores(r, names)).abs().max(-1).values
        gold = [ex.output for ex in sub]
        speed[key] = {
            "engine": te, "plain": tp, "agree": agree, "same_tok": same_tok, "tok_where": tok_where, "max_diff": float(diff.max()),
            "median_diff": float(diff.median()),
            "eng_acc": sum(a == g for a, g in zip(eng_pred, gold)) / len(sub),
            "plain_acc": sum(a == g for a, g in zip(plain_pred, gold)) / len(sub),
        }
        progress(f"  engine {len(sub) / te.wall:.1f} ex/s, plain {len(sub) / tp.wall:.1f} ex/s "
                 f"({tp.wall / te.wall:.2f}x); agreement {agree}/{len(sub)}; identical tokens {same_tok}/{len(sub)}")

    peak = peak_rss_mb()
    progress(f"done: peak RSS {peak:.0f} MiB, load {loadavg()}")

    # --- report -------------------------------------------------------------------------------
    n = len(exs)
    full = n == len(test)
    rows = []

    def row(label, r_acc, r_ci, preds, secs):
        rows.append([label, pct(r_acc), ci(r_ci), share(preds, names), f"{secs:.0f}", f"{n / secs:.1f}" if secs else "–"])

    z = acc["zero"]
    row("zero-shot (task instruction)", z["res"].accuracy, z["res"].ci95, z["preds"], z["t"].wall)
    ni = acc["noinst"]
    row("zero-shot, no instruction (`\"\"`)", ni["res"].accuracy, ni["res"].ci95, ni["preds"], ni["t"].wall)
    zc = acc["zero+cal"]
    rows.append(["zero-shot calibrated", pct(zc["accuracy"]), ci(zc["ci95"]), share(zc["preds"], names),
                 f"+{zc['extra_seconds']:.0f}", "–"])
    sk = [acc[f"shot{s}"] for s in args.seeds]
    skc = [acc[f"shot{s}+cal"] for s in args.seeds]
    seeds_txt = ",".join(map(str, args.seeds))
    rows.append([f"{args.shots}-shot, balanced random demos (seeds {seeds_txt})",
                 mean_std([a["res"].accuracy for a in sk]), "per seed below",
                 share([p for a in sk for p in a["preds"]], names),
                 f"{statistics.mean(a['t'].wall for a in sk):.0f}",
                 f"{n / statistics.mean(a['t'].wall for a in sk):.1f}"])
    rows.append([f"{args.shots}-shot calibrated (seeds {seeds_txt})", mean_std([a["accuracy"] for a in skc]),
                 "per seed below", share([p for a in skc for p in a["preds"]], names),
                 f"+{statistics.mean(a['extra_seconds'] for a in skc):.0f}", "–"])
    acc_table = md_table(["setting", "accuracy %", "95% CI", "predicted share", "eval s (wall)", "ex/s"], rows)

    seed_rows = []
    for s in args.seeds:
        a, c = acc[f"shot{s}"], acc[f"shot{s}+cal"]
        demo_labels = "".join(d.output[0] for d in shots[s].demos)
        seed_rows.append([s, demo_labels, f"{pct(a['res'].accuracy)} {ci(a['res'].ci95)}",
                          f"{pct(c['accuracy'])} {ci(c['ci95'])}", f"{a['t'].wall:.0f}"])
    seed_table = md_table(["seed", "demo labels (in order)", f"{args.shots}-shot % [95% CI]",
                           "calibrated % [95% CI]", "eval s (wall)"], seed_rows)

    m = len(sub)
    zs, fs = speed["zero"], speed["shot"]
    e_ratio_w = fs["engine"].wall / zs["engine"].wall
    e_ratio_c = fs["engine"].cpu / zs["engine"].cpu
    p_ratio_w = fs["plain"].wall / zs["plain"].wall
    p_ratio_c = fs["plain"].cpu / zs["plain"].cpu
    full_ratio_w = statistics.mean(a["t"].wall for a in sk) / z["t"].wall
    full_ratio_c = statistics.mean(a["t"].cpu for a in sk) / z["t"].cpu
    speed_rows = [
        [f"zero-shot ex/s, first {m} (wall)", f"{m / zs['engine'].wall:.1f}", f"{m / zs['plain'].wall:.1f}",
         f"{zs['plain'].wall / zs['engine'].wall:.2f}×"],
        [f"zero-shot ex/s, first {m} (CPU time)", f"{m / zs['engine'].cpu:.1f}", f"{m / zs['plain'].cpu:.1f}",
         f"{zs['plain'].cpu / zs['engine'].cpu:.2f}×"],
        [f"{args.shots}-shot (seed {s0}) ex/s, first {m} (wall)", f"{m / fs['engine'].wall:.1f}",
         f"{m / fs['plain'].wall:.1f}", f"{fs['plain'].wall / fs['engine'].wall:.2f}×"],
        [f"{args.shots}-shot (seed {s0}) ex/s, first {m} (CPU time)", f"{m / fs['engine'].cpu:.1f}",
         f"{m / fs['plain'].cpu:.1f}", f"{fs['plain'].cpu / fs['engine'].cpu:.2f}×"],
        [f"{args.shots}-shot time / zero-shot time, first {m} (wall / CPU)", f"{e_ratio_w:.2f}× / {e_ratio_c:.2f}×",
         f"{p_ratio_w:.2f}× / {p_ratio_c:.2f}×", ""],
        [f"accuracy on first {m}: zero-shot / {args.shots}-shot", f"{pct(zs['eng_acc'])} / {pct(fs['eng_acc'])}",
         f"{pct(zs['plain_acc'])} / {pct(fs['plain_acc'])}", ""],
        [f"prediction agreement: zero-shot / {args.shots}-shot", "", "",
         f"{pct(zs['agree'] / m)}% / {pct(fs['agree'] / m)}%"],
    ]
    speed_table = md_table(["measure", "engine", "plain loop", "plain / engine"], speed_rows)
    speedup = zs["plain"].wall / zs["engine"].wall
    speedup_c = zs["plain"].cpu / zs["engine"].cpu
    targets = md_table(["target", "measured (wall / CPU)", ""], [
        ["engine zero-shot ≥ 2× plain loop (ex/s, same examples)", f"{speedup:.2f}× / {speedup_c:.2f}×",
         verdict(min(speedup, speedup_c) >= 2)],
        [f"engine {args.shots}-shot time ≤ 1.3× zero-shot time, first {m}", f"{e_ratio_w:.2f}× / {e_ratio_c:.2f}×",
         verdict(max(e_ratio_w, e_ratio_c) <= 1.3)],
        [f"engine {args.shots}-shot time ≤ 1.3× zero-shot time, {n} test (mean of seeds)",
         f"{full_ratio_w:.2f}× / {full_ratio_c:.2f}×", verdict(max(full_ratio_w, full_ratio_c) <= 1.3)],
    ], align="lrl")

    start_section = "(skipped: `--skip-start`)"
    if starts:
        c, w = starts["cold"], starts["cached"]
        start_section = md_table(
            ["start", "`HFModel()` s", "whole subprocess s (incl. Python + torch import)", "subprocess peak RSS MiB"],
            [["cold: empty `PROMPTLIFT_CACHE_DIR` (dequantize GGUF, save safetensors)", f"{c['load_s']:.1f}",
              f"{c['process_wall_s']:.1f}", f"{c['peak_rss_mb']:.0f}"],
             ["cached: same dir, second subprocess", f"{w['load_s']:.1f}", f"{w['process_wall_s']:.1f}",
              f"{w['peak_rss_mb']:.0f}"]])
        start_section += (f"\n\nSafetensors cache written: {c['cache_mb']:.0f} MiB (complete: {c['complete']}). "
                          f"In this process (default cache dir, warm): `HFModel()` {load_here.wall:.1f}s.")

    tok_note = (f"Identical token sequences (engine segments vs the plain loop's full-text tokenization): "
                f"zero-shot {zs['same_tok']}/{m}, {args.shots}-shot {fs['same_tok']}/{m}. "
                f"Max / median |label-score difference| (log-prob, engine scores stored to 4 decimals): "
                f"zero-shot {zs['max_diff']:.2g} / {zs['median_diff']:.2g}, "
                f"{args.shots}-shot {fs['max_diff']:.2g} / {fs['median_diff']:.2g}.")
    for key, label in (("zero", "zero-shot"), ("shot", f"{args.shots}-shot")):
        if speed[key]["tok_where"]:
            tok_note += f" First {label} token difference {speed[key]['tok_where']}."

    thread_section = ""
    if thread_rows:
        thread_section = "\n\n" + md_table(
            ["torch threads", "wall s (round 1 / 2)", "CPU s (round 1 / 2)", "best ex/s"], thread_rows) + (
            f"\n\nThread check: engine zero-shot on the first {args.thread_check} test examples, alternating "
            f"thread counts; every other measurement uses {torch.get_num_threads()} thread(s).")

    body = f"""## Baselines and evaluation speed: SST-2, {args.model}

Command: `{cmd}`  
Date: {date}  
Machine: {facts['cpu']}, {facts['usable_cpus']} usable CPUs ({facts['logical_cpus']} logical), {facts['memory_gib']} GiB RAM; \
torch {facts['torch']} ({facts['torch_threads']} thread(s){'' if facts['torch_threads'] == default_threads else f', set by `--threads`; default {default_threads}'}), transformers {facts['transformers']}, Python {facts['python']}.  
Load average (1/5/15 min) at start {facts['loadavg_start']}, at end {loadavg()}: the machine is shared, so wall times \
vary with other work; CPU times (process_time, all threads) are given beside them.  
Data: `{Path(args.data).name}` test split, {n} of {len(test)} examples{'' if full else ' (`--limit`)'}; \
demos: {args.shots} class-balanced random training examples (`balanced_sample`, `random.Random(seed)`), \
batch size {bs}, fp32 on CPU.

### Test accuracy

{acc_table}

Mean ± sample std over seeds. Calibrated = contextual calibration (Zhao et al. 2021) applied to the same run's \
label scores with the engine's content-free scores + `calibrate` (its "eval s" is the extra time); checked \
against `evaluate(..., Calibrated(prompt))` on the first {check_n} examples: {cal_check}/{check_n} identical \
predictions. Per seed:

{seed_table}

### Evaluation speed: engine vs a plain transformers loop

Plain loop: per batch of {bs} and per label, the full chat-template text (`to_text(render(...))`) + label words, \
tokenized with right padding and attention mask, `lm.model(input_ids, attention_mask).logits` \
(full-vocabulary logits at every position, no prefix reuse), sum of the label tokens' log-probs, argmax. \
Both run on the first {m} test examples, one after the other, after an untimed warm-up.

{speed_table}

{tok_note}

Accuracy runs ({n} test examples), engine only: zero-shot {n / z['t'].wall:.1f} ex/s; {args.shots}-shot \
{n / statistics.mean(a['t'].wall for a in sk):.1f} ex/s (mean of seeds); ratio {full_ratio_w:.2f}× wall, \
{full_ratio_c:.2f}× CPU.

{targets}

### Model start

{start_section}

### Memory, stages and threads

Peak RSS of this process: {peak:.0f} MiB (`getrusage` ru_maxrss; includes the plain loop's full-vocabulary logits).

{log.table()}{thread_section}
"""
    path = write_section(SECTION, body, args.out)
    progress(f"wrote section '{SECTION}' of {path}")
    print("\n" + body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
