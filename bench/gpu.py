"""GPU vs CPU: the same evaluation and one prompt-tuning step on each device.

    python bench/gpu.py                 # SST-2, first 200 test rows, zero-shot; one prompt-tuning step
    python bench/gpu.py --limit 50      # quicker

Measured on every device that is present: CUDA in its auto dtype (bf16 where the
GPU supports it), CUDA in fp32 (same numerics as the CPU), and the CPU in fp32.
Each run appends a dated section to BENCHMARKS.md. Without a CUDA device it
says so, records that nothing was measured, and exits 0: no numbers are made up.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SST2, machine_facts, md_table, now, progress, timed, write_section  # noqa: E402


def cuda_status() -> tuple[bool, str]:
    """(available, one line describing the CUDA situation)."""
    import torch

    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return False, f"no CUDA device available (torch {torch.__version__}, {built})"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return True, f"{len(names)} CUDA device(s): {', '.join(names)} (torch {torch.__version__}, CUDA {torch.version.cuda})"


def measure(device: str, dtype: str, task, limit: int, batch_size: int) -> dict:
    """Eval ex/s on the first `limit` test rows and one prompt-tuning step's seconds on `device`."""
    import torch

    import promptlift
    from promptlift.lm.hf import HFModel
    from promptlift.task import Task

    with timed() as t_load:
        lm = HFModel("smollm2-135m", device=device, dtype=dtype)
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    promptlift.evaluate(lm, task, limit=16, batch_size=batch_size, progress=False)  # warm-up (kernels, allocator)
    sync()
    with timed() as t_eval:
        r = promptlift.evaluate(lm, task, limit=limit, batch_size=batch_size, progress=False)
        sync()
    # one epoch of 16 training rows at batch 8 = 2 steps; the second is timed by the trainer (step_seconds)
    small = Task(name="sst2-16", kind=task.kind, train=task.train[:16], dev=task.dev[:8], test=task.test[:8],
                 labels=task.labels, instruction=task.instruction)
    with tempfile.TemporaryDirectory() as d:
        promptlift.optimize("prompt-tuning", lm, small, out=Path(d) / "run", progress=False, epochs=1,
                            batch_size=8, tokens=8, eval_splits=())
        steps = [json.loads(x) for x in (Path(d) / "run" / "history.jsonl").read_text().splitlines()]
    step_s = [s["step_seconds"] for s in steps if "step_seconds" in s]
    return {"device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch."), "load_s": t_load.wall,
            "eval_s": t_eval.wall, "ex_per_s": limit / t_eval.wall, "accuracy": r.accuracy,
            "step_s": step_s[-1] if step_s else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SST2))
    ap.add_argument("--limit", type=int, default=200, help="first N test rows")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()

    facts = machine_facts()
    ok, status = cuda_status()
    progress(status)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    head = (f"## GPU vs CPU ({now()})\n\nCommand: `python bench/gpu.py --limit {args.limit}`  \n"
            f"Machine: {facts['cpu']}, {facts['usable_cpus']} usable CPUs, {facts['memory_gib']} GiB RAM; "
            f"torch {facts['torch']}, transformers {facts['transformers']}, Python {facts['python']}.  \n"
            f"Accelerator: {status}.\n")
    if not ok:
        body = head + ("\nNot measured: this machine has no CUDA device, so there is nothing to compare. "
                       "Run `python bench/gpu.py` on a machine with a GPU to fill this in.\n")
        print(body)
        if not args.no_write:
            write_section(f"gpu-{stamp}", body)
        return

    from promptlift.task import Task

    task = Task.from_dir(args.data)
    rows = []
    for device, dtype in (("cuda", "auto"), ("cuda", "float32"), ("cpu", "float32")):
        progress(f"{device} {dtype}: measuring")
        m = measure(device, dtype, task, args.limit, args.batch_size)
        progress(f"{device} {dtype}: {m}")
        rows.append(m)
    cpu = rows[-1]
    table = md_table(
        ["device", "dtype", "load s", f"eval s ({args.limit} rows)", "ex/s", "vs CPU", "accuracy %",
         "prompt-tuning step s", "step vs CPU"],
        [[m["device"], m["dtype"], f"{m['load_s']:.1f}", f"{m['eval_s']:.2f}", f"{m['ex_per_s']:.1f}",
          f"{m['ex_per_s'] / cpu['ex_per_s']:.1f}x", f"{100 * m['accuracy']:.1f}", f"{m['step_s']:.3f}",
          f"{cpu['step_s'] / m['step_s']:.1f}x"] for m in rows])
    body = head + (f"\nData: `{Path(args.data).name}` test split, first {args.limit} rows, zero-shot with the task "
                   f"instruction, batch {args.batch_size}, after an untimed warm-up on 16 rows. Prompt-tuning step: "
                   "8 virtual tokens, batch 8, the second step of an epoch (the trainer's `step_seconds`).\n\n"
                   + table + "\n")
    print(body)
    if not args.no_write:
        write_section(f"gpu-{stamp}", body)


if __name__ == "__main__":
    main()
