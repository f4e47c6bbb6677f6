"""The `promptlift` command line. Every command takes --json; bad input exits 2 with one line on stderr."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import ConfigError, PromptliftError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Optimize an LLM's prompt, prove the gain on held-out data, serve the result.")


def _print(obj, as_json: bool, text: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
    elif text is not None:
        typer.echo(text)


def load_lm(model: str, base_url: Optional[str] = None, api_key: Optional[str] = None):
    """`openai:NAME` (with --base-url / env) or a local model (bundled alias, directory, .gguf)."""
    if model.startswith("openai:"):
        from .lm.openai import OpenAIModel

        return OpenAIModel(model[len("openai:"):], base_url=base_url, api_key=api_key)
    from .lm.hf import HFModel

    return HFModel(model)


def load_task(data: str):
    """A data directory, a single JSONL/CSV/TSV file (used as the test split), or `demo:NAME`."""
    from .task import Task

    if data.startswith("demo:") or data in ("demo", "demo_topics", "demo_antonyms"):
        name = data.split(":", 1)[1] if ":" in data else ("demo_topics" if data == "demo" else data)
        return Task.demo(name)
    p = Path(data)
    if p.is_file() or p.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv"):  # a missing file: "file not found"
        return Task.from_files(test=p)
    return Task.from_dir(p)


def _parse_options(pairs: List[str]) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--option expects KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = v
    return out


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """List the bundled models and whether they are installed and cached."""
    from .models import BUNDLED, DEFAULT_MODEL, cache_dir, is_installed

    rows = []
    for alias, b in BUNDLED.items():
        cached = (cache_dir() / "models" / alias / ".complete").exists()
        rows.append({"alias": alias, "default": alias == DEFAULT_MODEL, "installed": is_installed(alias),
                     "cached": cached, "description": b.description, "install": b.install})
    text = "\n".join(f"{r['alias']:14} {'installed' if r['installed'] else 'missing  '} "
                     f"{'cached' if r['cached'] else '      '}  {r['description']}" for r in rows)
    _print(rows, as_json, text + "\nAny local transformers directory or .gguf file, or openai:NAME, also works.")


@app.command()
def methods(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """List the registered optimization methods and their options."""
    from .registry import list_methods

    rows = [{"name": n, "family": c.family, "white_box": c.white_box, "tasks": list(c.task_kinds),
             "doc": (c.__doc__ or "").strip().splitlines()[0] if c.__doc__ else "", "options": c.options()}
            for n, c in list_methods().items()]
    text = "\n".join(f"{r['name']:16} {r['family']:9} {r['doc']}\n" + "".join(
        f"    --{o['name'].replace('_', '-')} (default {o['default']!r}): {o['help']}\n" for o in r["options"])
        for r in rows)
    _print(rows, as_json, text.rstrip())


@app.command("eval")
def eval_cmd(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="alias, directory, .gguf, or openai:NAME"),
    data: str = typer.Option(..., "--data", "-d", help="data directory, a JSONL/CSV file, or demo:NAME"),
    split: str = typer.Option("test", help="train | dev | test"),
    instruction: Optional[str] = typer.Option(None, help="instruction text (default: the task's)"),
    prompt: Optional[Path] = typer.Option(None, help="a prompt artifact or a run directory"),
    shots: int = typer.Option(0, help="k class-balanced random demonstrations from train"),
    calibrate: bool = typer.Option(False, help="contextual calibration (classification)"),
    limit: Optional[int] = typer.Option(None, help="only the first N examples"),
    batch_size: int = typer.Option(16, help="examples per forward pass"),
    seed: int = typer.Option(0, help="seed for demonstration sampling"),
    predictions: Optional[Path] = typer.Option(None, help="write per-example predictions (JSONL) here"),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint (openai:NAME models)"),
    api_key: Optional[str] = typer.Option(None, help="API key (default: $OPENAI_API_KEY)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """Score a prompt on a split: accuracy with a 95% interval and per-class results."""
    import random

    from .artifacts import TextPrompt, load
    from .engine.evaluate import evaluate
    from .methods.baseline.few_shot import balanced_sample

    if prompt is not None and (instruction is not None or shots):
        raise ConfigError("--prompt cannot be combined with --instruction or --shots")
    task = load_task(data)
    examples = task.split(split)
    lm = load_lm(model, base_url, api_key)
    if prompt is not None:
        p = load(prompt)
        if calibrate:
            p.calibrate = True
    else:
        demos = balanced_sample(task, shots, random.Random(seed)) if shots else []
        p = TextPrompt(instruction=task.instruction if instruction is None else instruction, demos=demos,
                       calibrate=calibrate)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    r = evaluate(lm, task, p, split=split, limit=limit, batch_size=batch_size, progress=not as_json)
    if predictions:
        from .runs import RunDir

        predictions.parent.mkdir(parents=True, exist_ok=True)
        predictions.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in r.predictions))
    out = {"accuracy": r.accuracy, "n": r.n, "ci95": r.ci95, "per_class": r.per_class, "split": split,
           "model": lm.model_id, "task": task.name, "seconds": round(r.seconds, 3),
           "examples_per_second": round(r.examples_per_second, 2)}
    text = (f"{task.name} [{split}] {lm.model_id}: accuracy {r.accuracy:.3f} "
            f"(95% CI {r.ci95[0]:.3f}-{r.ci95[1]:.3f}, n={r.n}, {r.examples_per_second:.1f} ex/s)")
    if r.per_class:
        text += "\n" + "\n".join(f"  {k:20} recall {v['recall']:.3f}  precision {v['precision']:.3f}  "
                                 f"support {v['support']}" for k, v in r.per_class.items())
    _print(out, as_json, text)


@app.command()
def optimize(
    method: str = typer.Option(..., "--method", help="a registered method (see `promptlift methods`)"),
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    data: str = typer.Option(..., "--data", "-d"),
    out: Path = typer.Option(..., "--out", help="run directory"),
    seed: int = typer.Option(0),
    budget: Optional[str] = typer.Option(None, help="limits, e.g. calls=200,tokens=1e6,forward=500"),
    resume: bool = typer.Option(False, help="continue the run in --out from its checkpoint"),
    overwrite: bool = typer.Option(False, help="replace a run already in --out"),
    tokens: Optional[int] = typer.Option(None, help="soft methods: number of virtual tokens"),
    epochs: Optional[int] = typer.Option(None, help="gradient methods: epochs"),
    batch_size: Optional[int] = typer.Option(None, help="gradient methods: batch size"),
    lr: Optional[float] = typer.Option(None, help="gradient methods: learning rate"),
    init: Optional[str] = typer.Option(None, help="soft methods: random | text | labels"),
    encoder: Optional[str] = typer.Option(None, help="p-tuning: mlp | lstm"),
    shots: Optional[int] = typer.Option(None, help="few-shot / calibrated: demonstrations"),
    option: List[str] = typer.Option([], "--option", "-o", help="any method option as KEY=VALUE (repeatable)"),
    base_url: Optional[str] = typer.Option(None),
    api_key: Optional[str] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json"),
):
    """Optimize a prompt with METHOD; writes config, history, artifact and result.json to --out."""
    from .api import optimize as run_optimize
    from .registry import get_method

    get_method(method)  # unknown method: fail before loading anything
    opts = _parse_options(option)
    for k, v in {"tokens": tokens, "epochs": epochs, "batch_size": batch_size, "lr": lr, "init": init,
                 "encoder": encoder, "shots": shots}.items():
        if v is not None:
            opts[k] = v
    get_method(method).make_config(**opts)  # unknown or mistyped options: fail before loading the model
    task = load_task(data)
    lm = load_lm(model, base_url, api_key)
    run = run_optimize(method, lm, task, out=out, seed=seed, budget=budget, resume=resume, overwrite=overwrite,
                       progress=not as_json, **opts)
    s = run.summary()
    dev = f"dev {run.dev.accuracy:.3f}" if run.dev else "dev -"
    test = (f"test {run.test.accuracy:.3f} (95% CI {run.test.ci95[0]:.3f}-{run.test.ci95[1]:.3f})"
            if run.test else "test -")
    _print(s, as_json, f"{method} on {task.name} with {lm.model_id}: {dev}, {test}; {run.seconds:.1f}s -> {out}")


@app.command()
def report(run_dirs: List[Path] = typer.Argument(..., help="run directories"),
           out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write"),
           as_json: bool = typer.Option(False, "--json")):
    """One self-contained HTML page comparing runs: scores over steps and a table."""
    from .report import write_report

    path = write_report(list(run_dirs), out)
    _print({"report": str(path)}, as_json, f"wrote {path}")


@app.command()
def generate(text: str = typer.Argument(..., help="the user message"),
             model: str = typer.Option("smollm2-135m", "--model", "-m"),
             prompt: Optional[Path] = typer.Option(None, help="a prompt artifact or run directory to apply"),
             max_tokens: int = typer.Option(64), temperature: float = typer.Option(0.0),
             as_json: bool = typer.Option(False, "--json")):
    """Generate an answer to TEXT, optionally through a learned prompt (text or soft)."""
    from .artifacts import TextPrompt, load
    from .engine.evaluate import generate_with_prompt

    lm = load_lm(model)
    p = load(prompt) if prompt else TextPrompt()
    outs = generate_with_prompt(lm, p, [text], max_tokens=max_tokens, temperature=temperature)
    _print({"output": outs[0]}, as_json, outs[0])


@app.command()
def export(run_dir: Path = typer.Argument(..., help="a run directory or prompt artifact"),
           out: Path = typer.Option(..., "--out", help="directory to write the adapter into"),
           fmt: str = typer.Option("peft", "--format", help="peft"),
           model: Optional[str] = typer.Option(None, "--model", "-m", help="default: the model the prompt was made for"),
           as_json: bool = typer.Option(False, "--json")):
    """Export a soft prompt as a PEFT adapter (`PeftModel.from_pretrained` loads it)."""
    from .artifacts import load
    from .peft_io import export_peft

    if fmt != "peft":
        raise ConfigError(f"unknown export format {fmt!r}; expected: peft")
    p = load(run_dir)
    lm = load_lm(model or p.model or "smollm2-135m")
    path = export_peft(p, lm, out)
    _print({"adapter": str(path)}, as_json, f"wrote PEFT adapter to {path}")


@app.command("import")
def import_cmd(adapter: Path = typer.Argument(..., help="a PEFT prompt-tuning adapter directory"),
               out: Path = typer.Option(..., "--out", help="where to write the promptlift artifact"),
               model: str = typer.Option("smollm2-135m", "--model", "-m"),
               instruction: str = typer.Option("", help="text the adapter was trained with after its virtual tokens"),
               as_json: bool = typer.Option(False, "--json")):
    """Import a PEFT PROMPT_TUNING / P_TUNING adapter as a promptlift SoftPrompt."""
    from .peft_io import import_peft

    lm = load_lm(model)
    p = import_peft(adapter, lm, instruction=instruction)
    path = p.save(out)
    _print({"prompt": str(path)}, as_json, f"wrote {path}")


@app.command()
def demo(as_json: bool = typer.Option(False, "--json"),
         out: Path = typer.Option(Path("runs/demo"), help="where the demo's runs go")):
    """The headline on the bundled model and the project's demo task: before/after table."""
    from .demo import run_demo

    run_demo(out, as_json=as_json)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit code 2."""
    from typer.main import get_command

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmd = get_command(app)
    try:
        cmd.main(args=argv if argv is not None else sys.argv[1:], prog_name="promptlift", standalone_mode=False)
    except PromptliftError as e:
        typer.echo(f"promptlift: error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("promptlift: interrupted", err=True)
        return 130
    except Exception as e:  # click usage errors carry their own exit code
        code = getattr(e, "exit_code", None)
        if code is not None:
            if hasattr(e, "format_message"):
                typer.echo(f"promptlift: error: {e.format_message()}", err=True)
            return int(code)
        raise
    return 0


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
