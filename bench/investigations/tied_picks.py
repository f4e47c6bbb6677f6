"""Which finished search runs had a tie at the top of a dev ranking that decided something?

Reads each run's checkpoint (`checkpoint/search.json`: candidates and the per-example score cache),
never a model. For every run under RUNS/METHOD/seedN it reports ties among the starting prompts
(the start a method keeps), at the final pick (the best candidate on the whole dev set), and at the
top of a step's candidates (what AutoPrompt keeps each step). A run with none of these would make
the same choices under any tie rule; the others are the ones to re-fit after the rule changes.

    python bench/investigations/tied_picks.py runs/discrete_bbtdemos
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def ties(checkpoint: Path) -> list[str]:
    s = json.loads(checkpoint.read_text())
    cache = s["scores"].get(s["target"], {})
    mean = {k: sum(r["score"] for r in v.values()) / len(v) for k, v in cache.items() if v}
    size = {k: len(v) for k, v in cache.items()}
    full_n = max(size.values(), default=0)
    full = [(c, mean[c["key"]]) for c in s["candidates"] if size.get(c["key"]) == full_n]
    out = []
    starts = [d for c, d in full if c["origin"] == "initial"]
    if starts and starts.count(max(starts)) > 1:
        out.append(f"starts tied at {max(starts):.3f}")
    if full:
        best = max(d for _, d in full)
        if sum(d == best for _, d in full) > 1:
            out.append(f"final pick: {sum(d == best for _, d in full)} tied at {best:.3f}")
    steps: dict = {}
    for c, d in full:
        if c["origin"] != "initial":
            steps.setdefault(c.get("step"), []).append(d)
    tied_steps = sum(1 for v in steps.values() if len(v) > 1 and v.count(max(v)) > 1)
    if tied_steps:
        out.append(f"steps with a tie at the top: {tied_steps} of {len(steps)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="a folder of METHOD/seedN run directories")
    root = ap.parse_args().runs
    for ck in sorted(root.glob("*/seed*/checkpoint/search.json")):
        run = ck.parent.parent
        print(f"{run.parent.name} {run.name}: " + ("; ".join(ties(ck)) or "no ties"))


if __name__ == "__main__":
    main()
