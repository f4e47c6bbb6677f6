"""One self-contained HTML page comparing optimization runs.

A run directory holds `result.json` (required), `config.json` and
`history.jsonl` (both optional). `write_report(run_dirs, out)` reads them and
writes a single HTML file: a comparison table, plots of the score (and the loss,
when logged) over steps as embedded PNG images, and each run's config in a
collapsible block. The page loads nothing from outside; every string from the
files is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

# Metric keys looked up in a split's result, in order of preference.
_METRIC_KEYS = ("accuracy", "exact_match", "score", "f1", "exact")
# Keys of a split's result that are never the metric itself.
_NOT_METRICS = {"n", "ci95", "per_class", "seconds"}


@dataclass
class Run:
    """What one run directory holds, as read by `load_run`."""

    name: str
    path: Path
    result: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    prompt: dict[str, Any] = field(default_factory=dict)  # prompt.json (the learned artifact), when present
    norms: list[float] = field(default_factory=list)  # a soft prompt's vector norms (prompt.safetensors)

    def info(self, key: str) -> str:
        """`key` ("method", "model", "task") from the result, else the config, else ""."""
        for src in (self.result, self.config):
            val = src.get(key)
            if val not in (None, ""):
                return str(val)
        return ""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def _read_history(path: Path) -> list[dict[str, Any]]:
    from .datafiles import read_rows

    return read_rows(path)


def load_run(run_dir: Path) -> Run:
    """Read one run directory.

    `result.json` is required; `config.json` and `history.jsonl` are read when
    present. Raises `DataError` naming the path when the directory or
    `result.json` is missing or a file is malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run directory not found")
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        raise DataError(f"{run_dir}: missing result.json")
    result = _read_json(result_path)
    if not isinstance(result, dict):
        raise DataError(f"{result_path}: expected a JSON object")
    config: dict[str, Any] = {}
    config_path = run_dir / "config.json"
    if config_path.is_file():
        loaded = _read_json(config_path)
        if not isinstance(loaded, dict):
            raise DataError(f"{config_path}: expected a JSON object")
        config = loaded
    history_path = run_dir / "history.jsonl"
    history = _read_history(history_path) if history_path.is_file() else []
    name = run_dir.resolve().name or str(run_dir)
    prompt = _read_json(run_dir / "prompt.json") if (run_dir / "prompt.json").is_file() else {}
    return Run(name=name, path=run_dir, result=result, config=config, history=history,
               prompt=prompt if isinstance(prompt, dict) else {}, norms=_norms(run_dir, prompt))


def _norms(run_dir: Path, prompt: Any) -> list[float]:
    """The L2 norm of each trained input vector of a soft prompt (its safetensors file; no model needed)."""
    name = prompt.get("tensors") if isinstance(prompt, dict) else None
    if not isinstance(name, str) or "/" in name or not (run_dir / name).is_file():
        return []
    try:
        from safetensors.torch import load_file

        tensors = load_file(str(run_dir / name))
    except Exception:  # an unreadable tensor file: the page still shows everything else
        return []
    embeds = tensors.get("embeds")
    if embeds is None or embeds.dim() != 2:
        return []
    return [float(x) for x in embeds.float().norm(dim=-1)]


def _number(x: Any) -> float | None:
    """`x` as a finite float, or None (bools, strings, NaN and inf are not numbers here)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def split_metric(split: Any) -> tuple[str, float] | None:
    """The (name, value) of the metric in one split's result, or None.

    Prefers "accuracy", then "exact_match", "score", "f1", "exact"; otherwise the
    first numeric entry that is not a count or an interval.
    """
    if not isinstance(split, dict):
        return None
    for key in _METRIC_KEYS:
        val = _number(split.get(key))
        if val is not None:
            return key, val
    for key, raw in split.items():
        val = _number(raw)
        if key not in _NOT_METRICS and val is not None:
            return str(key), val
    return None


def _fmt_num(x: Any) -> str:
    val = _number(x)
    if val is None:
        return "" if x is None else str(x)
    if isinstance(x, int):
        return f"{x:,}"
    return f"{val:,.3f}"


def _fmt_split(split: Any, metric_name: str | None) -> str:
    """Escaped cell text: "0.800 [0.780, 0.820] n=1,821", with the metric name first
    when it differs from the column's."""
    found = split_metric(split)
    if found is None:
        return "&ndash;"
    name, val = found
    text = f"{val:.3f}"
    ci = split.get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        lo, hi = _number(ci[0]), _number(ci[1])
        if lo is not None and hi is not None:
            text += f" [{lo:.3f}, {hi:.3f}]"
    n = _number(split.get("n"))
    cell = html.escape(text)
    if name != metric_name:
        cell = f"{html.escape(name)} {cell}"
    if n is not None:
        cell += f' <span class="n">n={int(n):,}</span>'
    return cell


def _common_metric(runs: list[Run], split: str) -> str | None:
    names = {m[0] for r in runs if (m := split_metric(r.result.get(split))) is not None}
    return names.pop() if len(names) == 1 else None


def _rows_epoch(row: dict) -> bool:
    """A per-epoch (or per-trial) row: it carries a dev score."""
    return _number(row.get("dev_score")) is not None


def _rows_step(row: dict) -> bool:
    """A per-step training row: a loss and no dev score (per-epoch means are another series)."""
    return not _rows_epoch(row) and "best_dev" not in row


def _rows_search(row: dict) -> bool:
    """A search-loop row (one per step of the ask/tell loop)."""
    return _number(row.get("best_dev")) is not None


def _series(run: Run, keys: tuple[str, ...], rows=None, x_keys: tuple[str, ...] = ("step",)
            ) -> tuple[str, list[float], list[float]] | None:
    """(key, xs, ys) of the first key in `keys` that the run's history logs, among the rows `rows(row)`
    keeps; x is the first of `x_keys` the row logs (cumulated when it is "candidates"), else its position."""
    for key in keys:
        xs: list[float] = []
        ys: list[float] = []
        total = 0.0
        for i, row in enumerate(run.history):
            if rows is not None and not rows(row):
                continue
            y = _number(row.get(key))
            if y is None:
                continue
            x = next((v for k in x_keys if (v := _number(row.get(k))) is not None), None)
            if x_keys[0] == "candidates" and x is not None:
                total += x
                x = total
            xs.append(x if x is not None else float(i))
            ys.append(y)
        if ys:
            return key, xs, ys
    return None


def _plot(runs: list[Run], keys: tuple[str, ...], ylabel: str, title: str, *,
          series: list[tuple[str, Any, tuple[str, ...]]] | None = None, xlabel: str = "step") -> str | None:
    """A line plot, one line per run and series, as a base64 PNG data URI; None when nothing is logged.

    series: (label suffix, row filter, x keys) per line kind (default: every row over "step"); each kind
    is its own line, so per-step and per-epoch points never join into one line that jumps at epoch ends.
    """
    kinds = series or [("", None, ("step",))]
    lines = [(r.name + (f" {suffix}" if suffix else ""), s) for r in runs for suffix, rows, xk in kinds
             if (s := _series(r, keys, rows, xk)) is not None]
    if not lines:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    used = {key for _, (key, _, _) in lines}
    for name, (key, xs, ys) in lines:
        label = name if len(used) == 1 else f"{name} ({key})"
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel if len(used) != 1 else next(iter(used)))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _unique_names(runs: list[Run]) -> None:
    """Make run names unique by prefixing the parent folder, then a counter."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
    for r in runs:
        if seen[r.name] > 1:
            parent = r.path.resolve().parent.name
            if parent:
                r.name = f"{parent}/{r.name}"
    taken: set[str] = set()
    for r in runs:
        base, k = r.name, 2
        while r.name in taken:
            r.name = f"{base} ({k})"
            k += 1
        taken.add(r.name)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1180px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;max-width:100%}
td{overflow-wrap:break-word}
th,td{border:1px solid #ccc;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.n{color:#777;font-size:.85em}
pre{background:#f8f8f8;border:1px solid #ddd;padding:.6em;overflow:auto;font-size:.85em;white-space:pre-wrap}
.prompt{background:#f6f9ff;border:1px solid #cdd9f0;padding:.5em .8em;white-space:pre-wrap;margin:.3em 0}
.stopped{background:#fff3cd;border:1px solid #e0c36c;border-radius:3px;padding:0 .35em;font-size:.85em}
.gain-yes{color:#176f2c;font-weight:600}.gain-no{color:#8a5a00}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}
img{max-width:100%;height:auto}.note{color:#777}
"""


def _fmt_gain(gain: Any) -> str:
    """Escaped cell: "+0.100 [-0.013, +0.213] p=0.11, not significant" (result.json's "gain")."""
    if not isinstance(gain, dict) or _number(gain.get("gain")) is None:
        return "&ndash;"
    g, ci, p = _number(gain.get("gain")), gain.get("ci95") or [None, None], _number(gain.get("p_value"))
    lo, hi = (_number(ci[0]), _number(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
    text = f"{g:+.3f}" + (f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else "")
    verdict = "significant" if gain.get("significant") else "not significant"
    tail = f" p={p:.2g}, {verdict}" if p is not None else ""
    return f'<span class="gain-{"yes" if gain.get("significant") else "no"}">{html.escape(text + tail)}</span>'


def _stopped(r: Run) -> str:
    why = r.result.get("stopped")
    return f' <span class="stopped">stopped at {html.escape(str(why))}</span>' if why else ""


def _table(runs: list[Run]) -> str:
    """The comparison: scores, the gain over zero-shot, seconds; the cost counters behind a toggle."""
    dev_metric = _common_metric(runs, "dev")
    test_metric = _common_metric(runs, "test")
    head = ["run", "method", "model", "task",
            f"dev {dev_metric}" if dev_metric else "dev",
            f"test {test_metric} [95% CI]" if test_metric else "test [95% CI]",
            "gain over zero-shot (same rows) [95% CI]", "prompt tokens", "seconds"]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>", "<tbody>"]
    for r in runs:
        cells = [f"<td>{html.escape(r.name)}{_stopped(r)}</td>"]
        cells += [f"<td>{html.escape(v)}</td>" for v in (r.info("method"), r.info("model"), r.info("task"))]
        cells.append(f'<td class="num">{_fmt_split(r.result.get("dev"), dev_metric)}</td>')
        cells.append(f'<td class="num">{_fmt_split(r.result.get("test"), test_metric)}</td>')
        cells.append(f'<td class="num">{_fmt_gain(r.result.get("gain"))}</td>')
        toks = _prompt_tokens(r)
        cells.append(f'<td class="num">{"&ndash;" if toks is None else f"{toks:,.1f}"}</td>')
        secs = _number(r.result.get("seconds"))
        cells.append(f'<td class="num">{"" if secs is None else f"{secs:,.1f}"}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>", _cost_table(runs)]
    return "\n".join(o for o in out if o)


def _prompt_tokens(r: Run) -> float | None:
    """The positions the run's prompt puts before each input (result.json's test, else dev, `prompt_tokens`)."""
    for split in ("test", "dev"):
        d = r.result.get(split)
        if isinstance(d, dict) and _number(d.get("prompt_tokens")) is not None:
            return _number(d.get("prompt_tokens"))
    return None


def _cost_plot(runs: list[Run]) -> str | None:
    """Each run's test score against its prompt tokens (cost per request), as a base64 PNG; None for fewer than
    two runs with both."""
    points = [(r.name, t, m[1]) for r in runs if (t := _prompt_tokens(r)) is not None
              and (m := split_metric(r.result.get("test"))) is not None]
    if len(points) < 2:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, t, score in points:
        ax.scatter([t], [score], s=25)
        ax.annotate(name, (t, score), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if max(t for _, t, _ in points) > 20 * max(min(t for _, t, _ in points), 1):
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("prompt tokens before each input")
    ax.set_ylabel("test score")
    ax.set_title("Score against prompt tokens")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cost_table(runs: list[Run]) -> str:
    """Every cost counter, one row per counter and one column per run (many counters, few runs: no
    horizontal scrolling), folded away."""
    keys: list[str] = []
    for r in runs:
        cost = r.result.get("cost")
        if isinstance(cost, dict):
            keys += [str(k) for k in cost if str(k) not in keys]
    if not keys:
        return ""
    head = "<tr><th>cost</th>" + "".join(f"<th>{html.escape(r.name)}</th>" for r in runs) + "</tr>"
    rows = []
    for k in keys:
        vals = [r.result.get("cost", {}).get(k) if isinstance(r.result.get("cost"), dict) else None for r in runs]
        rows.append(f"<tr><td>{html.escape(k)}</td>" + "".join(
            f'<td class="num">{html.escape(_fmt_num(v))}</td>' for v in vals) + "</tr>")
    return ('<details class="cost"><summary>Cost details (' + str(len(keys)) + " counters)</summary><table><thead>"
            + head + "</thead><tbody>" + "".join(rows) + "</tbody></table></details>")


def _learned(r: Run) -> str:
    """The prompt the run learned: instruction and demonstrations (text), vectors and their norms (soft),
    the wrapped prompt of a wrapper; from prompt.json."""
    p = r.prompt
    if not p:
        return '<p class="note">No prompt.json in this run.</p>'
    view = r.result.get("prompt_view") if isinstance(r.result.get("prompt_view"), dict) else {}
    return _prompt_html(p, r.norms, view.get("nearest_tokens") or [])


def _prompt_html(p: dict, norms: list[float], nearest: list | None = None) -> str:
    """`nearest`: per soft vector its nearest vocabulary tokens (result.json `prompt_view.nearest_tokens`)."""
    kind = str(p.get("type", "?"))
    out = [f"<p>Type: <b>{html.escape(kind)}</b></p>"]
    inner = p.get("inner")
    if isinstance(inner, dict):  # a wrapper (calibrated, reasoning): the prompt it wraps
        return "\n".join(out + ["<p>Wrapping:</p>", _prompt_html(inner, norms, nearest)])
    text = p.get("text") if kind == "token" else None
    instruction = p.get("instruction")
    if text:
        out.append(f'<p>Tokens (as text):</p><div class="prompt">{html.escape(str(text))}</div>')
    if isinstance(instruction, str):
        shown = html.escape(instruction) if instruction else '<span class="note">(none)</span>'
        out.append(f'<p>Instruction:</p><div class="prompt">{shown}</div>')
    demos = p.get("demos") or p.get("pool") or []
    if isinstance(demos, list) and demos:
        label = "Demonstrations" if p.get("demos") else f"Pool (k={p.get('k')} nearest per input)"
        items = "".join(f"<tr><td>{html.escape(str(d.get('input', '')))}</td><td>{html.escape(str(d.get('output', '')))}"
                        "</td></tr>" for d in demos[:20] if isinstance(d, dict))
        more = f'<p class="note">… and {len(demos) - 20} more</p>' if len(demos) > 20 else ""
        out.append(f"<p>{label} ({len(demos)}):</p><table><thead><tr><th>input</th><th>answer</th></tr></thead>"
                   f"<tbody>{items}</tbody></table>{more}")
    if norms and nearest:
        rows = "".join(f"<tr><td>{i}</td><td>{norm:.2f}</td><td>"
                       + ", ".join(f"<code>{html.escape(repr(t.get('token', '')))}</code> {float(t.get('cosine', 0)):.2f}"
                                   for t in near if isinstance(t, dict)) + "</td></tr>"
                       for i, (norm, near) in enumerate(zip(norms, nearest)))
        out.append(f"<p>{len(norms)} trained vectors: L2 norm and the 3 nearest vocabulary tokens (cosine with the "
                   "model's input embeddings):</p><table><thead><tr><th>#</th><th>norm</th><th>nearest tokens</th>"
                   f"</tr></thead><tbody>{rows}</tbody></table>")
    elif norms:
        vals = ", ".join(f"{x:.2f}" for x in norms)
        out.append(f"<p>{len(norms)} trained vectors; L2 norms: {html.escape(vals)}. Their nearest tokens need the "
                   "model's embeddings: <code>promptlift optimize --method project</code> finds them.</p>")
    elif kind == "prefix":
        out.append('<p class="note">Per-layer key/value prefixes (no text form).</p>')
    return "\n".join(out)


def _per_class(split: Any) -> str:
    per = split.get("per_class") if isinstance(split, dict) else None
    if not isinstance(per, dict) or not per:
        return ""
    cols: list[str] = []
    for v in per.values():
        if isinstance(v, dict):
            cols += [str(k) for k in v if str(k) not in cols]
    rows = []
    for label, v in per.items():
        if isinstance(v, dict):
            vals = [html.escape(_fmt_num(v.get(c))) for c in cols]
        else:  # a bare number per class, e.g. {"pos": 0.91}
            vals = [html.escape(_fmt_num(v))] + [""] * max(len(cols) - 1, 0)
        rows.append(f"<tr><td>{html.escape(str(label))}</td>" + "".join(f'<td class="num">{x}</td>' for x in vals) + "</tr>")
    head = "<tr><th>class</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in (cols or ["value"])) + "</tr>"
    return "<p>Test, per class:</p><table><thead>" + head + "</thead><tbody>" + "".join(rows) + "</tbody></table>"


def render_html(runs: list[Run], title: str = "promptlift report") -> str:
    """The report page for already-loaded runs, as one HTML string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{len(runs)} run{"s" if len(runs) != 1 else ""}. '
        "Intervals are 95% confidence intervals as recorded by each run.</p>",
        "<h2>Comparison</h2>",
        _table(runs),
        '<p class="note">Gain: the test score minus that of the task\'s instruction alone (zero-shot) on the same '
        "rows, with a paired test (McNemar exact for 0/1 scores, paired bootstrap otherwise) and its 95% interval."
        "</p>",
    ]
    cost_png = _cost_plot(runs)
    if cost_png:
        parts += ["<h2>Score against prompt tokens</h2>", f'<img alt="score against prompt tokens" src="{cost_png}">',
                  '<p class="note">Prompt tokens: the positions a prompt puts before each input (instruction, '
                  "demonstrations, soft vectors, ...), paid on every request.</p>"]
    parts.append("<h2>What was learned</h2>")
    for r in runs:
        parts += [f"<h3>{html.escape(r.name)}{_stopped(r)}</h3>", _learned(r)]
    parts.append("<h2>Score over steps</h2>")
    score_png = _plot(runs, ("dev_score", "score"), "score", "Dev score (per epoch or trial)",
                      series=[("", _rows_epoch, ("step",))])
    if score_png:
        parts.append(f'<img alt="score over steps" src="{score_png}">')
    else:
        parts.append('<p class="note">No run logged a dev score per epoch or trial in its history.</p>')
    search_png = _plot(runs, ("best_dev",), "best dev score", "Search: best dev score over candidates",
                       series=[("", _rows_search, ("candidates",))], xlabel="candidates scored")
    calls_png = _plot(runs, ("best_dev",), "best dev score", "Search: best dev score over calls",
                      series=[("", _rows_search, ("calls",))], xlabel="calls")
    if search_png or calls_png:
        parts.append("<h2>Search curves</h2>")
        parts += [f'<img alt="search curve" src="{png}">' for png in (search_png, calls_png) if png]
    loss_png = _plot(runs, ("loss",), "loss", "Training loss",
                     series=[("per step", _rows_step, ("step",)), ("epoch mean", _rows_epoch, ("step",))])
    if loss_png:
        parts += ["<h2>Loss over steps</h2>", f'<img alt="loss over steps" src="{loss_png}">']
    parts.append("<h2>Runs</h2>")
    for r in runs:
        config = json.dumps(r.config, indent=2, sort_keys=True, ensure_ascii=False, default=str)
        parts += [
            "<details>",
            f"<summary>{html.escape(r.name)}</summary>",
            f"<p>Directory: <code>{html.escape(str(r.path))}</code></p>",
            "<p>Config:</p>",
            f"<pre>{html.escape(config)}</pre>",
            _per_class(r.result.get("test")),
            "</details>",
        ]
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


def write_report(run_dirs: list[Path], out: Path) -> Path:
    """Write one self-contained HTML page comparing the runs in `run_dirs`.

    Each directory must hold `result.json`; `config.json` and `history.jsonl`
    are used when present. `out` is the file to write (parent folders are
    created); when `out` is an existing directory the page is written to
    `out/report.html`. Returns the path written. Raises `DataError` when no
    directory is given or a directory or its `result.json` is missing or
    malformed.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise DataError("no run directories given to the report")
    runs = [load_run(d) for d in run_dirs]
    _unique_names(runs)
    out = Path(out)
    if out.is_dir():
        out = out / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(runs), encoding="utf-8")
    return out
