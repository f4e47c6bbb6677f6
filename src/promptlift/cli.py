"""The `promptlift` command line. Every command takes --json; bad input exits 2 with one line on stderr."""

from __future__ import annotations

import json
import os
import shlex
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


DEVICE_HELP = "local models: auto | cpu | cuda | cuda:N | mps (auto: CUDA, else MPS, else CPU)"
API_HELP = "openai:NAME models: chat (messages; labels ranked by first-token logprobs) | completions (plain text; labels scored in full with echo+logprobs)"
DTYPE_HELP = "local models: auto | float32 | bfloat16 | float16 (auto: bf16 on a CUDA GPU, else fp32)"


def load_lm(model: str, base_url: Optional[str] = None, api_key: Optional[str] = None,
            device: str = "auto", dtype: str = "auto", api: str = "chat"):
    """`openai:NAME` (with --base-url / env; `api` chat or completions) or a local model
    (bundled alias, directory, .gguf) on `device`."""
    if model.startswith("openai:"):
        from .lm.openai import OpenAIModel

        return OpenAIModel(model[len("openai:"):], base_url=base_url, api_key=api_key, api=api)
    from .lm.hf import HFModel

    return HFModel(model, device=device, dtype=dtype)


def _version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("promptlift")
        except PackageNotFoundError:  # running from a source tree that is not installed
            from . import __version__ as v
        typer.echo(f"promptlift {v}")
        raise typer.Exit()


@app.callback()
def _app_options(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                              help="print the version and exit")):
    """Optimize an LLM's prompt, prove the gain on held-out data, serve the result."""


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


def check_artifact(p, model: str, task=None, where: Path | str = "prompt") -> None:
    """Refuse, from the files alone and before the model loads, an artifact with trained tensors made on
    another model than `model`, or (with `task`) one whose demonstrations use labels the task lacks."""
    from .engine.evaluate import check_labels
    from .errors import ArtifactError
    from .models import BUNDLED, model_identity

    identity = None
    for q, what in _nested(p, ""):
        if q.text_only or not q.model or model.startswith("openai:"):
            continue
        if identity is None:
            try:
                identity = model_identity(model)
            except ConfigError:  # not a model this machine has: the artifact's own model is the useful hint
                identity = ""
        if q.model not in (model, identity):
            name = q.model.split("@", 1)[0]
            hint = f"pass --model {name}" if name in BUNDLED else "pass --model with the model it was made on"
            raise ArtifactError(f"{where}: {what}this {q.type} prompt was made for model {q.model!r}, not "
                                f"{model!r}; {hint}")
    if task is not None:
        check_labels(p, task)


def _nested(p, what: str):
    """The artifact and every artifact nested in it (a selector's or mixture's members), each with where it sits."""
    yield p, what
    for i, c in enumerate(p.children()):
        yield from _nested(c, f"{what}member {i}: ")


def note_load(task) -> None:
    """After a task's splits are checked: one stderr line on rows that loaded unusually (empty inputs)."""
    note = task.load_note()
    if note:
        typer.echo(f"promptlift: note: {note}", err=True)


def check_options(**opts) -> None:
    """Refuse out-of-range options before anything loads (one line each)."""
    rules = {"limit": (1, "N >= 1"), "batch_size": (1, ">= 1"), "shots": (0, ">= 0"), "seed": (0, ">= 0"),
             "chunk_size": (1, ">= 1"), "max_tokens": (1, ">= 1")}
    for name, value in opts.items():
        flag = "--" + name.replace("_", "-")
        if name == "api":
            if value not in ("chat", "completions"):
                raise ConfigError(f"--api must be chat or completions, got {value!r}")
        elif name == "temperature":
            if value is not None and not (0.0 <= value <= 5.0):
                raise ConfigError(f"--temperature must be between 0 and 5, got {value}")
        elif value is not None and value < rules[name][0]:
            raise ConfigError(f"{flag} must be {rules[name][1]}, got {value}")


def method_options(cls, args: List[str]) -> dict:
    """Parse `--name VALUE`, `--name=VALUE`, `--flag` / `--no-flag` against a method's Config fields.

    Values stay strings here; `Method.make_config` converts and checks them.
    """
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    known = ", ".join("--" + n.replace("_", "-") for n in fields) or "none"
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}; method {cls.name!r} takes: {known}")
        name, eq, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        negated = key.startswith("no_") and key[3:] in fields and key not in fields
        if negated:
            key = key[3:]
        if key not in fields:
            raise ConfigError(f"method {cls.name!r} has no option --{name}; it takes: {known}")
        is_bool = str(fields[key].type) in ("bool", "<class 'bool'>")
        if negated:
            out[key] = "false"
        elif eq:
            out[key] = value
        elif is_bool and (i + 1 >= len(args) or args[i + 1].startswith("--")):
            out[key] = "true"
        elif i + 1 < len(args):
            out[key] = args[i + 1]
            i += 1
        else:
            raise ConfigError(f"option --{name} of method {cls.name!r} needs a value")
        i += 1
    return out


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
    from .models import BUNDLED, DEFAULT_MODEL, is_cached, is_installed

    rows = []
    for alias, b in BUNDLED.items():
        cached = is_cached(alias)
        rows.append({"alias": alias, "default": alias == DEFAULT_MODEL, "installed": is_installed(alias),
                     "cached": cached, "description": b.description, "install": b.install})
    text = "\n".join(f"{r['alias']:14} {'installed' if r['installed'] else 'missing  '} "
                     f"{'cached' if r['cached'] else '      '}  {r['description']}" for r in rows)
    _print(rows, as_json, text + "\nAny local transformers directory or .gguf file, or openai:NAME, also works.")


@app.command()
def methods(name: Optional[str] = typer.Argument(None, help="one method: its options in full"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """List the registered optimization methods and their options (from each method's Config)."""
    from .registry import get_method, list_methods

    found = {name: get_method(name)} if name else list_methods()
    rows = [{"name": c.name, "aliases": list(getattr(c, "aliases", ())), "family": c.family,
             "white_box": c.white_box, "tasks": list(c.task_kinds),
             "doc": (c.__doc__ or "").strip().splitlines()[0] if c.__doc__ else "", "options": c.options()}
            for c in found.values()]
    if name:  # one method: every option with its type, default and help
        text = "\n".join(f"{r['name']:16} {r['family']:9} {r['doc']}\n" + "".join(
            f"    --{o['name'].replace('_', '-')} {o['type'].upper()} (default {o['default']!r}): {o['help']}\n"
            for o in r["options"]) for r in rows).rstrip()
    else:  # one line per method
        text = "\n".join(f"{r['name']:18} {r['family']:9} {r['doc']}" for r in rows) + \
            "\n\n`promptlift methods NAME` lists a method's options with their types, defaults and help."
    _print(rows, as_json, text)


@app.command("eval")
def eval_cmd(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="alias, directory, .gguf, or openai:NAME"),
    data: str = typer.Option(..., "--data", "-d", help="data directory, a JSONL/CSV file, or demo:NAME"),
    split: str = typer.Option("test", help="train | dev | test"),
    instruction: Optional[str] = typer.Option(None, help="instruction text (default: the task's)"),
    prompt: Optional[Path] = typer.Option(None, help="a prompt artifact or a run directory"),
    shots: int = typer.Option(0, help="k class-balanced random demonstrations from train"),
    calibrate: bool = typer.Option(False, help="contextual calibration (classification)"),
    limit: Optional[int] = typer.Option(None, help="only N examples (see --sample)"),
    sample: str = typer.Option("first", help="with --limit: first (the first N rows) | stratified (N rows as "
                               "balanced across labels as N allows, drawn with --seed)"),
    batch_size: int = typer.Option(16, help="examples per forward pass"),
    seed: int = typer.Option(0, help="seed for demonstration sampling"),
    predictions: Optional[Path] = typer.Option(None, help="write per-example predictions (JSONL) here, as they "
                                               "are computed"),
    resume: bool = typer.Option(False, help="continue an evaluation killed part way (its --predictions file)"),
    overwrite: bool = typer.Option(False, help="replace an existing --predictions file"),
    chunk_size: int = typer.Option(256, help="examples scored between two writes of --predictions"),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint (openai:NAME models)"),
    api_key: Optional[str] = typer.Option(None, help="API key (default: $OPENAI_API_KEY)"),
    api: str = typer.Option("chat", help=API_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """Score a prompt on a split: accuracy with a 95% interval and per-class results."""
    import random

    from .artifacts import Calibrated, TextPrompt, load
    from .engine.evaluate import evaluate
    from .methods.shared import balanced_sample

    from .files import read_jsonl
    from .runs import PredictionWriter

    if prompt is not None and (instruction is not None or shots):
        raise ConfigError("--prompt cannot be combined with --instruction or --shots")
    check_options(limit=limit, batch_size=batch_size, shots=shots, seed=seed, chunk_size=chunk_size, api=api)
    if sample not in ("first", "stratified"):
        raise ConfigError(f"--sample must be first or stratified, got {sample!r}")
    if resume and predictions is None:
        raise ConfigError("--resume continues the evaluation written to --predictions; give --predictions FILE")
    done: list = []
    if predictions is not None and predictions.exists() and predictions.stat().st_size:
        if resume:
            done = read_jsonl(predictions)
        elif not overwrite:
            raise ConfigError(f"{predictions} already holds predictions; pass --resume to continue that "
                              "evaluation, or --overwrite to replace it")
    task = load_task(data)
    rows = task.split(split)  # a missing or empty split fails before the model loads
    note_load(task)
    if limit is not None and limit < len(rows):
        if sample == "stratified":
            rows = balanced_sample(task, limit, random.Random(seed), split=split)
        else:
            rows = rows[:limit]
        seen = {ex.output for ex in rows}
        if task.is_classification and len(seen) == 1 and 1 < len(task.labels) <= limit:
            typer.echo(f"promptlift: warning: the {limit} rows of {split} hold one label only ({next(iter(seen))!r}); "
                       "accuracy on them says little; add --sample stratified", err=True)
    p = load(prompt) if prompt is not None else None  # a bad artifact fails before the model loads
    if p is not None:
        check_artifact(p, model, task, prompt)
    lm = load_lm(model, base_url, api_key, device=device, dtype=dtype, api=api)
    if p is None:
        demos = balanced_sample(task, shots, random.Random(seed)) if shots else []
        p = TextPrompt(instruction=task.instruction if instruction is None else instruction, demos=demos)
    if calibrate:
        p = Calibrated(inner=p, model=p.model, task=p.task, method=p.method)
    writer = None
    if predictions is not None:
        predictions.parent.mkdir(parents=True, exist_ok=True)
        writer = PredictionWriter(predictions, resume=bool(done))
    try:
        r = evaluate(lm, task, p, split=split, examples=rows, batch_size=batch_size, progress=not as_json,
                     on_records=writer.extend if writer else None, done=done, chunk_size=chunk_size)
    finally:
        if writer is not None:
            writer.close()
    out = {"accuracy": r.accuracy, "n": r.n, "ci95": r.ci95, "per_class": r.per_class, "split": split,
           "model": lm.model_id, "task": task.name, "seconds": round(r.seconds, 3),
           "examples_per_second": round(r.examples_per_second, 2), "scoring": r.scoring, "unparsed": r.unparsed,
           "resumed": min(len(done), r.n), "empty_inputs": task.empty_inputs.get(split, 0),
           "prompt_tokens": r.prompt_tokens, "prompt_tokens_unit": r.prompt_tokens_unit}
    text = (f"{task.name} [{split}] {lm.model_id}: accuracy {r.accuracy:.3f} "
            f"(95% CI {r.ci95[0]:.3f}-{r.ci95[1]:.3f}, n={r.n}, {r.examples_per_second:.1f} ex/s)")
    if r.prompt_tokens is not None:
        text += f"\n  prompt: {r.prompt_tokens:g} {r.prompt_tokens_unit} before each input"
    if r.unparsed:
        text += f"\n  {r.unparsed} answer(s) matched no label (counted wrong)"
    if r.per_class:
        text += "\n" + "\n".join(f"  {k:20} recall {v['recall']:.3f}  precision {v['precision']:.3f}  "
                                 f"support {v['support']}" for k, v in r.per_class.items())
    _print(out, as_json, text)


# The optimize options stored in config.json ("command") so that `--resume` needs no options retyped.
RESUMABLE = ("method", "model", "data", "seed", "budget", "base_url", "api", "optimizer_model",
             "optimizer_base_url", "optimizer_api", "device", "dtype")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def optimize(
    ctx: typer.Context,
    method: Optional[str] = typer.Option(None, "--method", help="a registered method (see `promptlift methods`)"),
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    data: Optional[str] = typer.Option(None, "--data", "-d"),
    out: Path = typer.Option(..., "--out", help="run directory"),
    seed: int = typer.Option(0),
    budget: Optional[str] = typer.Option(None, help="limits, e.g. calls=200,tokens=1e6,forward=500,time=20m "
                                         "(README: Budgets)"),
    resume: bool = typer.Option(False, help="continue the run in --out from its checkpoint, with the options "
                                "stored there (any option given must match them)"),
    overwrite: bool = typer.Option(False, help="replace a run already in --out"),
    option: List[str] = typer.Option([], "--option", "-o", help="any method option as KEY=VALUE (repeatable)"),
    base_url: Optional[str] = typer.Option(None),
    api_key: Optional[str] = typer.Option(None),
    api: str = typer.Option("chat", help=API_HELP),
    optimizer_model: Optional[str] = typer.Option(None, help="LLM-as-optimizer methods: the model that proposes "
                                                  "prompts (same values as --model; default: the target itself)"),
    optimizer_base_url: Optional[str] = typer.Option(None, help="endpoint of an openai:NAME --optimizer-model"),
    optimizer_api: str = typer.Option("chat", help="API of an openai:NAME --optimizer-model"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    as_json: bool = typer.Option(False, "--json"),
):
    """Optimize a prompt with METHOD; writes config, history, artifact and result.json to --out.

    Every option of the method's Config is accepted as `--name VALUE` (or `-o name=VALUE`);
    `promptlift methods NAME` lists them with their types, defaults and help.
    `promptlift optimize --out RUN --resume` continues a run with the options stored in RUN.
    """
    from .api import optimize as run_optimize
    from .registry import get_method
    from .runs import probe_run_dir

    given = dict(method=method, model=model, data=data, seed=seed, budget=budget, base_url=base_url, api=api,
                 optimizer_model=optimizer_model, optimizer_base_url=optimizer_base_url,
                 optimizer_api=optimizer_api, device=device, dtype=dtype)
    explicit = {k for k in given if _given(ctx, k)}
    opts = _parse_options(option)
    stored = _stored_command(out) if (resume or overwrite) else None
    if resume:
        if stored is None:
            raise ConfigError(f"{out}: no run to resume (no config.json with its options); start it without --resume")
        given.update({k: stored[k] for k in RESUMABLE if k in stored and k not in explicit})
    for k in ("method", "data"):
        if given[k] is None:
            raise ConfigError(f"missing option '--{k}'")
    method, model, data, seed, budget = (given[k] for k in ("method", "model", "data", "seed", "budget"))
    cls = get_method(method)  # unknown method: fail before loading anything
    opts.update(method_options(cls, list(ctx.args)))
    if resume:
        opts = {**stored.get("options", {}), **opts}
    cls.make_config(**opts)  # unknown or mistyped options: fail before loading the model
    own = given["optimizer_model"] in (None, model)
    if cls.family == "llm" and own and not model.startswith("openai:") and not as_json:
        typer.echo(f"promptlift: note: {method} asks the target model {model} to write prompts for itself; a small "
                   "local model rarely writes usable ones: pass a stronger proposer, e.g. --optimizer-model "
                   "openai:NAME --optimizer-base-url URL", err=True)
    check_options(seed=seed, api=given["api"])
    check_options(api=given["optimizer_api"])
    from .lm.budget import Budget

    Budget.parse(budget)  # a malformed budget: fail before loading the model
    probe_run_dir(out)  # a directory that is not a run, or a run another process writes: fail now
    if not resume and not overwrite and (out / "config.json").is_file():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                          "or choose another --out")
    if resume and stored is not None and "options" in stored:
        _check_same(out, stored, {**given, "options": opts})
    task = load_task(data)
    for split in ("train", "dev"):  # methods select on dev: a task without one fails now, not after an epoch
        task.split(split)
    note_load(task)
    lm = load_lm(model, given["base_url"], api_key, device=given["device"], dtype=given["dtype"], api=given["api"])
    optimizer_lm = None
    if given["optimizer_model"] is not None:
        optimizer_lm = (lm if given["optimizer_model"] == model and given["optimizer_base_url"] in (None, given["base_url"])
                        else load_lm(given["optimizer_model"], given["optimizer_base_url"], api_key,
                                     device=given["device"], dtype=given["dtype"], api=given["optimizer_api"]))
    command = {**{k: given[k] for k in RESUMABLE}, "options": opts}
    try:
        run = run_optimize(method, lm, task, out=out, seed=seed, budget=budget, resume=resume, overwrite=overwrite,
                           progress=not as_json, optimizer_lm=optimizer_lm, command=command, **opts)
    except KeyboardInterrupt:
        from .demo import command_name

        typer.echo(f"promptlift: interrupted {_where(out)}; continue with: "
                   f"{command_name()} optimize --out {shlex.quote(str(out))} --resume", err=True)
        raise typer.Exit(130) from None
    s = run.summary()
    dev = f"dev {run.dev.accuracy:.3f}" if run.dev else "dev -"
    test = (f"test {run.test.accuracy:.3f} (95% CI {run.test.ci95[0]:.3f}-{run.test.ci95[1]:.3f})"
            if run.test else "test -")
    gain = ""
    if run.gain:
        from .metrics import describe_gain

        gain = "\n  " + describe_gain(run.gain)
    if s.get("search", {}).get("kept_start"):
        gain += "\n  no candidate scored higher on dev than the start: the start was kept"
    _print(s, as_json, f"{method} on {task.name} with {lm.model_id}: {dev}, {test}; {run.seconds:.1f}s -> {out}{gain}")
    if run.stopped == "budget":
        _budget_stop(run, budget, out)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was given on the command line (not its default)."""
    source = ctx.get_parameter_source(name)  # typer may ship its own click: compare the enum by name
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _stored_command(out: Path) -> dict | None:
    """The optimize options a run in `out` was started with (config.json's "command"; older runs: what
    config.json records), or None when `out` holds no run."""
    p = out / "config.json"
    if not p.is_file():
        return None
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"{p}: malformed JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p}: expected a JSON object")
    if isinstance(cfg.get("command"), dict):
        return cfg["command"]
    old = {k: cfg[k] for k in ("method", "seed") if k in cfg}
    if isinstance(cfg.get("model"), str) and not cfg["model"].startswith("openai:"):  # an endpoint's id is no --model
        old["model"] = cfg["model"]
    if cfg.get("data") and cfg["data"] != "<memory>":
        old["data"] = cfg["data"]
    return old


def _check_same(out: Path, stored: dict, now: dict) -> None:
    """Refuse a --resume whose options differ from the stored ones, naming each differing key."""
    from .api import config_differences

    keys = [k for k in (*RESUMABLE, "options") if k in stored]
    diff = config_differences({k: stored[k] for k in keys}, {k: now.get(k) for k in keys})
    if diff:
        raise ConfigError(f"{out}: --resume with other settings than the run there: {diff}; "
                          "leave them out to resume as it was, or pass --overwrite to start again")


def _where(out: Path) -> str:
    """Where an interrupted run stopped, from its history: the last step and the last epoch scored on dev."""
    from .files import read_jsonl

    rows = read_jsonl(out / "history.jsonl")
    steps = [r["step"] for r in rows if isinstance(r.get("step"), int)]
    epochs = [r["epoch"] for r in rows if "dev_score" in r and isinstance(r.get("epoch"), int)]
    if not steps:
        return "before the first step"
    where = f"after step {steps[-1]}"
    if epochs:
        where += f" (last checkpoint: epoch {epochs[-1] + 1} done)"
    return where


def _budget_stop(run, budget: Optional[str], out: Path) -> None:
    """A budget stop is the normal end of a budgeted run: one line, exit 0. Only a budget too small to
    score any prompt on dev (nothing was chosen, the starting prompt is all there is) exits 3."""
    from .errors import BudgetExceeded
    from .files import read_jsonl

    meta = run.prompt.meta
    search = meta.get("search") if isinstance(meta.get("search"), dict) else {}
    scored = [r for r in read_jsonl(out / "history.jsonl") if r.get("dev_score") is not None]
    if search:  # the search loop: candidates registered; no best_dev when not even a start was scored
        ok, n = search.get("best_dev") is not None, int(search.get("candidates", 0))
    else:  # the trainer's epochs, few-shot's trials: one history row with a dev score per candidate
        ok, n = bool(scored), len(scored)
    if not ok:
        raise BudgetExceeded(f"budget {budget} is too small to score any prompt on dev; the starting prompt "
                             f"is saved in {out}; raise --budget")
    typer.echo(f"promptlift: stopped at the budget after {n} candidate{'s' if n != 1 else ''}; best kept in {out}", err=True)


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
             device: str = typer.Option("auto", help=DEVICE_HELP),
             dtype: str = typer.Option("auto", help=DTYPE_HELP),
             as_json: bool = typer.Option(False, "--json")):
    """Generate an answer to TEXT, optionally through a learned prompt (text or soft)."""
    from .artifacts import TextPrompt, load
    from .engine.evaluate import generate_with_prompt

    check_options(max_tokens=max_tokens, temperature=temperature)
    p = load(prompt) if prompt else TextPrompt()  # a bad artifact fails before the model loads
    check_artifact(p, model, where=prompt or "prompt")
    lm = load_lm(model, device=device, dtype=dtype)
    # demonstrations answer with the label words the prompt was made with, as `eval` renders them
    outs = generate_with_prompt(lm, p, [text], max_tokens=max_tokens, temperature=temperature, task=p.label_task())
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
    if model:
        check_artifact(p, model, where=run_dir)
    lm = load_lm(model or (p.model or "").split("@", 1)[0] or "smollm2-135m")
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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def distill(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="the teacher: a run directory or prompt artifact (e.g. prefix-tuning)"),
    out: Path = typer.Option(..., "--out", help="run directory for the distilled soft prompt"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="inputs to distil on (train + dev; labels unused); "
                                       "default: the teacher run's data"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="default: the model the teacher was made on"),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False, help="continue the run in --out from its checkpoint"),
    overwrite: bool = typer.Option(False, help="replace a run already in --out"),
    option: List[str] = typer.Option([], "--option", "-o", help="KEY=VALUE: any option of `promptlift methods "
                                     "distill` (tokens, epochs, lr, ...)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    as_json: bool = typer.Option(False, "--json"),
):
    """Distil a prompt (a prefix prompt vLLM cannot take) into an input-level soft prompt; reports the dev
    accuracy of teacher and student. The same run as `optimize --method distill --teacher RUN_DIR`;
    data and model default to the teacher's. Options as `--tokens 20` or `-o tokens=20`."""
    from .api import optimize as run_optimize
    from .artifacts import load
    from .registry import get_method
    from .runs import probe_run_dir

    cls = get_method("distill")
    opts = _parse_options(option)
    opts.update(method_options(cls, list(ctx.args)))
    opts["teacher"] = str(run_dir)
    tokens = cls.make_config(**opts).tokens  # unknown or mistyped options: fail before loading anything
    check_options(seed=seed)
    teacher = load(run_dir)
    config = {}
    if run_dir.is_dir() and (run_dir / "config.json").exists():
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    data = data or config.get("data")
    if not data or data == "<memory>":
        raise ConfigError(f"{run_dir}: no data recorded for the teacher; give --data")
    name = model or (teacher.model or "").split("@", 1)[0] or config.get("model")
    if not name:
        raise ConfigError(f"{run_dir}: the teacher records no model; give --model")
    probe_run_dir(out)
    if model:
        check_artifact(teacher, model, where=run_dir)
    task = load_task(data)
    note_load(task)
    lm = load_lm(name, device=device, dtype=dtype)
    run = run_optimize("distill", lm, task, out=out, seed=seed, resume=resume, overwrite=overwrite,
                       progress=not as_json, eval_splits=("dev",), **opts)
    s = run.summary()
    acc = lambda e: f"{e['accuracy']:.3f}" if e else "-"  # noqa: E731
    kept = f", kept {s['kept']:.1%}" if s["kept"] is not None else ""
    agree = f", agreement {s['agreement_dev']:.3f}" if s["agreement_dev"] is not None else ""
    _print(s, as_json, f"distilled {teacher.type} -> soft ({tokens} tokens) on {task.name}: dev teacher "
                       f"{acc(s['teacher']['dev'])}, student {acc(s['student']['dev'])}{kept}{agree}; "
                       f"{run.seconds:.1f}s -> {out}")


@app.command(context_settings={"allow_extra_args": True})
def select(
    ctx: typer.Context,
    pool: List[Path] = typer.Option([], "--pool", help="run directories or prompt artifacts: --pool RUN [RUN ...]"),
    out: Path = typer.Option(..., "--out", help="run directory for the selector"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="one task: learn per input which member answers "
                                       "correctly; default: learn from each pool run's own data which member "
                                       "serves an input (members from different tasks)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="default: the model the pool was made on"),
    features: str = typer.Option("tfidf", help="tfidf (stored vocabulary: works on an endpoint) | model (the "
                                 "local model's own embeddings)"),
    limit: Optional[int] = typer.Option(2000, help="at most N rows per task and split"),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, help="replace a run already in --out"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    as_json: bool = typer.Option(False, "--json"),
):
    """Train a prompt selector: a small classifier that picks, per input, which prompt of a pool answers it.
    Width and weight decay are chosen on dev; writes a run (prompt.json, result.json) that eval, generate and
    serve take."""
    from .artifacts import load
    from .engine.backends import backend_for
    from .runs import RunDir, probe_run_dir
    from .selector import Member, check_pool, select_across, select_within

    check_options(seed=seed, limit=limit)
    if features not in ("tfidf", "model"):
        raise ConfigError(f"--features must be tfidf or model, got {features!r}")
    paths = list(pool) + [Path(a) for a in ctx.args]
    unknown = [a for a in ctx.args if a.startswith("-")]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for select")
    members = []
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path}: pool run not found (expected a run directory or a prompt.json)")
        config = {}
        if path.is_dir() and (path / "config.json").exists():
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        members.append((Member(load(path), str(path)), config))
    check_pool([m for m, _ in members])
    name = model or next((c.get("model") for _, c in members if c.get("model")), None) or next(
        ((m.prompt.model or "").split("@", 1)[0] for m, _ in members if m.prompt.model), None) or "smollm2-135m"
    for m, _ in members:
        check_artifact(m.prompt, name, where=m.source)
    task = None
    if data is not None:
        task = load_task(data)
        task.split("train")
        note_load(task)
        for m, _ in members:
            check_artifact(m.prompt, name, task, where=m.source)
    else:
        for m, config in members:
            source = config.get("data")
            if not source or source == "<memory>":
                raise ConfigError(f"{m.source}: no data recorded for this pool run; a selector across tasks learns "
                                  "from each run's training rows (give a run directory made by optimize, or --data)")
            m.task = load_task(source)
            if not m.task.train:
                raise ConfigError(f"{m.source}: its data {source} has no training rows; a selector across tasks "
                                  "learns from them which member serves an input")
    probe_run_dir(out)
    pool_members = [m for m, _ in members]
    needs_model = features == "model" or task is not None
    lm = load_lm(name, device=device, dtype=dtype) if needs_model else None
    backend = backend_for(lm) if lm is not None else None
    recorded = (getattr(lm, "identity", None) or lm.model_id) if lm is not None else None
    if features == "tfidf" and all(m.prompt.text_only for m in pool_members):
        recorded = None  # text all the way down: the selector goes to any model
    elif recorded is None:
        recorded = next((m.prompt.model for m in pool_members if m.prompt.model), None)
    if task is None:
        p, result = select_across(pool_members, features=features, backend=backend, seed=seed, limit=limit,
                                  model=recorded)
    else:
        p, result = select_within(pool_members, task, lm, features=features, backend=backend, seed=seed,
                                  limit=limit, model=recorded)
    run = RunDir(out)
    try:
        run.start({"method": "select", "options": {"features": features, "limit": limit,
                                                   "pool": [m.source for m in pool_members]},
                   "model": name, "task": task.name if task else None, "seed": seed, "data": data},
                  overwrite=overwrite)
        p.save(run.path)
        result["prompt_sha256"] = p.hash
        run.write_result(result)
    finally:
        run.close()
    score = result.get("test") or result["dev"]
    split = "test" if "test" in result else "dev"
    text = (f"selector over {len(pool_members)} prompts ({features}): " + (
        f"routing accuracy {split} {score['routing_accuracy']['accuracy']:.3f}" if task is None else
        f"{task.name} {split} accuracy {score['accuracy']:.3f} (best member {score['best_member']:.3f}, "
        f"oracle {score['oracle']:.3f})") + f" -> {out}")
    _print(result, as_json, text)


@app.command()
def demo(as_json: bool = typer.Option(False, "--json"),
         out: Path = typer.Option(Path("runs/demo"), help="where the demo's runs go"),
         full: bool = typer.Option(False, "--full", help="the longer demo: + calibration, 10 epochs of prompt tuning")):
    """The headline on the bundled model and the project's demo task: before/after table."""
    from .demo import run_demo

    run_demo(out, as_json=as_json, full=full)


def _report_error(message: str, kind: str, code: int, as_json: bool) -> int:
    """One line on stderr: text, or with --json `{"error", "type", "exit_code"}`; returns `code`."""
    message = " ".join(str(message).split())  # one line, whatever the message held
    if as_json:
        typer.echo(json.dumps({"error": message, "type": kind, "exit_code": code}, ensure_ascii=False), err=True)
    else:
        typer.echo(f"promptlift: error: {message}", err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: a user error becomes one line on stderr (JSON with --json) and its exit code.

    Exit codes: 0 success (a run stopped at its budget included); 2 bad input or configuration (and usage
    errors); 3 a budget too small to score any prompt; 4 a remote endpoint still failing after retries;
    130 interrupted.
    """
    from typer.main import get_command

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = list(argv) if argv is not None else sys.argv[1:]
    as_json = "--json" in args
    cmd = get_command(app)
    try:
        code = cmd.main(args=args, prog_name="promptlift", standalone_mode=False)
    except PromptliftError as e:
        return _report_error(str(e), type(e).__name__, int(e.exit_code), as_json)
    except KeyboardInterrupt:
        typer.echo("promptlift: interrupted", err=True)
        return 130
    except Exception as e:  # click usage errors carry their own exit code
        code = getattr(e, "exit_code", None)
        if code is not None:
            if hasattr(e, "format_message"):
                return _report_error(e.format_message(), type(e).__name__, int(code), as_json)
            return int(code)
        raise
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def _entry() -> None:
    sys.exit(main())


from .serve.cli import serve as _serve; app.command("serve")(_serve)  # noqa: E402,E702


if __name__ == "__main__":
    _entry()
