"""Cross-model transfer of token prompts: found on one model, read as text by another.

    python bench/transfer.py                          # smollm2-135m <-> gemma3-270m, pez + autoprompt
    python bench/transfer.py --gemma-seeds 0 1 --test-limit 0     # more seeds, the full test split
    python bench/transfer.py --no-fit --no-write      # only what is already there (no new fits)

Token prompts found on smollm2-135m are taken from the runs `bench/discrete.py`
wrote (`--source-runs`, one `METHOD/seedN` folder per run with its `bench.json`
and `prompt.json`); token prompts on gemma3-270m are found here with
`promptlift.optimize` (defaults, selection on train/dev only) into
`--runs/gemma3-270m/METHOD/seedN`. Every prompt is then scored on the first
`--test-limit` SST-2 test rows on both models: on the model it was found on its
token ids are applied as they are, on the other one its decoded text is the
instruction (the engine notes that it was found on another model). The target
model's zero-shot (the task's instruction) and no-instruction scores are the
baselines. A soft prompt from the same runs (BBT) is tried on the other model
too, to show that it is refused.

A prompt that carries demonstrations is also scored on the other model as the
same demonstrations after the task's instruction without the found tokens, so
the table shows what the tokens add to the examples.

Every score is kept in `--runs/scores/*.json`, so a second call only computes
what is missing. Writes the `transfer` section of bench/DISCRETE_RESULTS.md
(`--section` names another).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SST2, command_line, loadavg, machine_facts, md_table, now, progress, timed, write_section  # noqa: E402

import promptlift  # noqa: E402
from promptlift.artifacts import TextPrompt, TokenPrompt, load  # noqa: E402
from promptlift.errors import PromptliftError  # noqa: E402
from promptlift.lm.hf import HFModel  # noqa: E402
from promptlift.task import Task  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "DISCRETE_RESULTS.md"
MODELS = ("smollm2-135m", "gemma3-270m")


class Models:
    """The two models, loaded when first asked for (load time and the RSS after it are recorded)."""

    def __init__(self):
        self.lms: dict[str, HFModel] = {}
        self.load: dict[str, dict] = {}

    def __call__(self, name: str) -> HFModel:
        if name not in self.lms:
            with timed() as t:
                self.lms[name] = HFModel(name)
            self.load[name] = {"wall_s": round(t.wall, 1), "peak_rss_mib_after": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
            progress(f"loaded {name}: {t}")
        return self.lms[name]


def scored(cache: Path, key: dict, compute) -> dict:
    """`compute()` once per `key` (a dict), kept as JSON under `cache`."""
    f = cache / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")
    if f.exists():
        return json.loads(f.read_text())["result"]
    result = compute()
    cache.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"key": key, "result": result}, indent=1))
    return result


def score(models: Models, task: Task, prompt, target: str, limit: int | None) -> dict:
    with timed() as t:
        r = promptlift.evaluate(models(target), task, prompt, split="test", limit=limit, progress=False)
    return {"acc": r.accuracy, "n": r.n, "ci95": r.ci95, "wall_s": round(t.wall, 1),
            "predicted": {k: v["predicted"] for k, v in r.per_class.items()}}


def fit(models: Models, task: Task, method: str, seed: int, d: Path, no_fit: bool) -> dict | None:
    """Find a token prompt on gemma3-270m into `d` (once; its bench.json is read on later calls)."""
    done = d / "bench.json"
    if done.exists():
        return json.loads(done.read_text())
    if no_fit:
        return None
    progress(f"fit {method} seed {seed} on gemma3-270m (load {loadavg()})")
    with timed() as t:
        run = promptlift.optimize(method, models("gemma3-270m"), task, out=d, overwrite=True, seed=seed,
                                  progress=False, eval_splits=("dev",))
    out = {"fit_wall_s": round(t.wall, 1), "fit_cpu_s": round(t.cpu, 1),
           "dev": run.dev.accuracy if run.dev else None, "text": run.prompt.text, **run.cost}
    done.write_text(json.dumps(out, indent=1))
    progress(f"  dev {out['dev']}, {t}, text {run.prompt.text!r}")
    return out


def pct(r: dict | None) -> str:
    return "–" if r is None else f"{100 * r['acc']:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["pez", "autoprompt"])
    ap.add_argument("--source-runs", type=Path, default=Path("/tmp/promptlift-bench-discrete"),
                    help="bench/discrete.py's --runs: smollm2-135m runs as METHOD/seedN")
    ap.add_argument("--smollm-seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--gemma-seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--runs", type=Path, default=Path("/tmp/promptlift-bench-transfer"))
    ap.add_argument("--test-limit", type=int, default=300, help="first N test rows (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-fit", action="store_true", help="do not fit on gemma3-270m; use only finished runs")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not write DISCRETE_RESULTS.md")
    ap.add_argument("--section", default="transfer", help="name of the section of DISCRETE_RESULTS.md written")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    facts = machine_facts()
    task = Task.from_dir(SST2)
    limit = args.test_limit or None
    n_test = limit or len(task.test)
    models = Models()
    cache = args.runs / "scores"

    # --- baselines on each target ---
    base = {}
    for target in MODELS:
        for name, instr in (("zero-shot", task.instruction), ("no-instruction", "")):
            key = {"target": target, "instruction": instr, "n": n_test}
            base[(target, name)] = scored(cache, key, lambda: score(models, task, TextPrompt(instruction=instr),
                                                                      target, limit))
            progress(f"{target} {name}: {pct(base[(target, name)])}")

    # --- every token prompt on both models: smollm2-135m's runs first, then gemma3-270m's (fitted here) ---
    rows = []
    sources = [("smollm2-135m", m, s, args.source_runs / m / f"seed{s}") for m in args.methods
               for s in args.smollm_seeds]
    sources += [("gemma3-270m", m, s, args.runs / "gemma3-270m" / m / f"seed{s}") for m in args.methods
                for s in args.gemma_seeds]
    fits = {}
    for src, m, s, d in sources:
        if src == "gemma3-270m":
            fits[(m, s)] = fit(models, task, m, s, d, args.no_fit)
        if not (d / "prompt.json").exists():
            progress(f"skip {src} {m} seed {s}: no {d / 'prompt.json'}")
            continue
        p = load(d / "prompt.json")
        if not isinstance(p, TokenPrompt):
            progress(f"skip {d}: a {p.type} prompt, not a token prompt")
            continue
        target = next(t for t in MODELS if t != src)
        res = {}
        for where in (src, target):
            key = {"target": where, "prompt_ids": p.ids, "prompt_model": p.model, "text": p.text, "n": n_test}
            res[where] = scored(cache, key, lambda: score(models, task, p, where, limit))
        zs, ni = base[(target, "zero-shot")], base[(target, "no-instruction")]
        shots = None  # a prompt with demonstrations: the same demonstrations after the task's instruction alone
        if p.demos:
            demos = [{"input": d.input, "output": d.output} for d in p.demos]
            key = {"target": target, "instruction": task.instruction, "demos": demos, "n": n_test}
            shots = scored(cache, key, lambda: score(models, task, TextPrompt(task.instruction, list(p.demos)),
                                                     target, limit))
        progress(f"{src} {m} seed {s}: {src} {pct(res[src])} -> {target} {pct(res[target])} "
                 f"(zero-shot {pct(zs)}{'' if shots is None else ', its demos alone ' + pct(shots)})")
        rows.append({"source": src, "method": m, "seed": s, "text": p.text, "src": res[src], "tgt": res[target],
                     "target": target, "zs": zs, "ni": ni, "shots": shots, "demos": len(p.demos)})

    # --- a soft prompt is refused on another model ---
    refusal = "not tried (no BBT run found)"
    bbt = args.source_runs / "bbt" / f"seed{args.smollm_seeds[0]}" / "prompt.json"
    if bbt.exists():
        try:
            promptlift.evaluate(models("gemma3-270m"), task, load(bbt), split="test", limit=2, progress=False)
            refusal = "NOT refused (unexpected)"
        except PromptliftError as e:
            refusal = f"refused: `{type(e).__name__}: {e}`"

    body = report(rows, base, refusal, models, fits, args, facts, n_test, task)
    print(body)
    if not args.no_write:
        write_section(args.section, body, RESULTS, title="# Discrete and black-box prompt results")
        progress(f"wrote {RESULTS}")


def report(rows, base, refusal, models, fits, args, facts, n_test, task) -> str:
    table = []
    for r in rows:
        gain = 100 * (r["tgt"]["acc"] - r["zs"]["acc"])
        lo, hi = r["tgt"]["ci95"]
        share = " · ".join(f"{k[:3]} {100 * v / r['tgt']['n']:.0f}%" for k, v in sorted(r["tgt"]["predicted"].items()))
        text = "`" + json.dumps(r["text"])[1:-1].replace("|", "\\|") + "`" + (f" + {r['demos']} demos" if r.get("demos") else "")
        src_gain = 100 * (r["src"]["acc"] - base[(r["source"], "zero-shot")]["acc"])
        table.append([r["source"], r["method"], r["seed"], f"{pct(r['src'])} ({src_gain:+.1f})",
                      f"{pct(r['tgt'])} [{100 * lo:.1f}, {100 * hi:.1f}]", share, pct(r["zs"]), pct(r["ni"]),
                      pct(r.get("shots")), f"{gain:+.1f}", text])
    basel = [[t, pct(base[(t, "zero-shot")]), pct(base[(t, "no-instruction")])] for t in MODELS]
    loads = "; ".join(f"{k} {v['wall_s']} s (peak RSS after {v['peak_rss_mib_after']} MiB)"
                      for k, v in models.load.items()) or "none loaded (every score reused)"
    summary = []
    for src, m in dict.fromkeys((r["source"], r["method"]) for r in rows):
        rs = [r for r in rows if (r["source"], r["method"]) == (src, m)]
        sg = [100 * (r["src"]["acc"] - base[(src, "zero-shot")]["acc"]) for r in rs]
        tg = [100 * (r["tgt"]["acc"] - r["zs"]["acc"]) for r in rs]
        summary.append([src, rs[0]["target"], m, len(rs), f"{statistics.mean(sg):+.1f}", f"{statistics.mean(tg):+.1f}",
                        sum(g > 0 for g in tg)])
    fit_lines = [f"- fit on gemma3-270m, {m} seed {s}: {v['fit_wall_s']} s wall ({v['fit_cpu_s']} s CPU), dev {100 * (v['dev'] or 0):.1f} %, "
                 f"forward {v.get('forward', 0)}, backward {v.get('backward', 0)}" for (m, s), v in fits.items() if v]
    return "\n".join([
        f"## Cross-model transfer of token prompts: smollm2-135m ↔ gemma3-270m, SST-2 ({now()})",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {facts['cpu']}, {facts['usable_cpus']} usable CPUs, torch {facts['torch']} "
        f"({facts['torch_threads']} thread(s)); load average at start {facts['loadavg_start']}, at end {loadavg()}.  ",
        f"Data: SST-2, test: the first {n_test} rows of {len(task.test)}. Token prompts found with the methods' defaults "
        "on SST-2 16-shot train/dev (what follows the searched tokens, when the method chooses it: the task's "
        "instruction, none, or the instruction with 4 training examples, whichever scored best on dev); on the "
        "model it was found on a prompt's ids are applied as they are, on the other model its decoded text is the "
        "instruction and its examples follow as earlier turns. \"its demos alone\": the same examples after the "
        "task's instruction, without the found tokens (what the examples give by themselves).",
        "",
        md_table(["target model", "zero-shot %", "no-instruction %"], basel),
        "",
        md_table(["source model", "target model", "method", "prompts", "mean gain on source (pts)",
                  "mean gain on target (pts)", "prompts with a gain on target"], summary, "lllrrrr"),
        "",
        "Gains are over each model's own zero-shot (the task instruction alone); every prompt, per seed:",
        "",
        md_table(["source model", "method", "seed", "source acc % (vs its zero-shot)", "target acc % [95% CI]", "target predicted",
                  "target zero-shot %", "target no-instr. %", "target, its demos alone %", "target vs zero-shot (pts)",
                  "prompt text"],
                 table, "llrrrlrrrrl"),
        "",
        f"A soft prompt (BBT, found on smollm2-135m) evaluated on gemma3-270m: {refusal}.  ",
        f"Model loads in this process: {loads}.",
        *([""] + fit_lines if fit_lines else []),
    ])


if __name__ == "__main__":
    main()
