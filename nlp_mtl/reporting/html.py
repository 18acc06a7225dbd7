"""One self-contained HTML page for a run: inline CSS, PNGs as data URIs, no scripts or links out.

The page has to survive being mailed, attached to a ticket or opened offline years later, so it
references nothing outside itself.
"""

from __future__ import annotations

import base64
import html
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..evaluation.reports import SUMMARY_COLUMNS
from ..fileio import atomic_write
from ..registry import TASK_TYPES
from .plots import DPI, TRAINING_LOSS, VALIDATION, confusion_name, entity_f1_name, write_run_plots
from .run_data import SPLITS, RunData, TaskInfo, load_run, main_metric
from ..run_dir import RunDir

# CSS pixels per inch; images are shown at their physical size so plot text matches the page.
CSS_DPI = 96
def _type_name(task_type: str) -> str:
    return TASK_TYPES.get(task_type).display_name if task_type in TASK_TYPES else task_type

CSS = """
:root { --text: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --card: #fff; --accent: #0072b2; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
       font: 15px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 32px 24px 48px; }
header { margin-bottom: 24px; }
.eyebrow { text-transform: uppercase; letter-spacing: .08em; font-size: 12px; color: var(--muted); font-weight: 600; }
h1 { font-size: 30px; margin: 4px 0 6px; letter-spacing: -.01em; }
h2 { font-size: 19px; margin: 0 0 14px; }
h3 { font-size: 16px; margin: 22px 0 10px; }
.sub { color: var(--muted); margin: 0; font-size: 14px; }
.sub code { font-size: 13px; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600;
         vertical-align: 2px; margin-right: 8px; }
.badge.ok { background: #e3f9e5; color: #1f7a3a; }
.badge.warn { background: #fff3c4; color: #8d6708; }
.tag { display: inline-block; padding: 1px 8px; border-radius: 6px; font-size: 12px; font-weight: 500;
       background: #e6f0f8; color: #185a86; vertical-align: 2px; margin-left: 8px; }
section.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
               padding: 22px 24px; margin-bottom: 22px; box-shadow: 0 1px 2px rgba(31, 41, 51, .04); }
dl.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 12px 24px; margin: 0 0 8px; }
dl.facts div { border-left: 3px solid var(--line); padding-left: 10px; }
dl.facts dt { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .05em; }
dl.facts dd { margin: 2px 0 0; font-weight: 600; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; font-size: 14px; margin-top: 6px; }
th, td { padding: 7px 12px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; font-weight: 600;
     border-bottom: 2px solid var(--line); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.main { font-weight: 700; color: var(--accent); }
tbody tr:hover { background: #f9fafb; }
.table-wrap { overflow-x: auto; }
.plots { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; padding: 8px; border: 1px solid var(--line); border-radius: 8px; background: #fff; max-width: 100%; }
figure img { display: block; max-width: 100%; height: auto; }
pre { background: #f8fafc; border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; margin: 0;
      font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
      overflow-x: auto; }
.reports { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 16px; margin-top: 16px; }
.reports h4 { margin: 0 0 6px; font-size: 13px; color: var(--muted); text-transform: uppercase; letter-spacing: .05em; }
article.task + article.task { border-top: 1px solid var(--line); margin-top: 26px; padding-top: 4px; }
.headline { font-size: 14px; font-weight: 400; color: var(--muted); margin-left: 10px; }
.headline b { color: var(--text); }
.note { color: var(--muted); font-size: 13px; margin: 10px 0 0; }
.empty { color: var(--muted); font-style: italic; margin: 0; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 8px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png_width(data: bytes) -> int:
    # Width from the IHDR chunk, which the PNG format puts right after the 8-byte signature.
    return struct.unpack(">I", data[16:20])[0]


def _figure(path: Path, alt: str) -> str:
    data = path.read_bytes()
    width = round(_png_width(data) * CSS_DPI / DPI)
    encoded = base64.b64encode(data).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{encoded}" width="{width}" alt="{_e(alt)}"></figure>'


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "—" if value is None else str(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    minutes = seconds / 60
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _header(run: RunData) -> str:
    if run.finished is not None:
        status = f'<span class="badge ok">finished</span>in {_duration(run.finished.get("seconds"))}'
    else:
        status = '<span class="badge warn">unfinished</span>training has not completed'
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<header><div class="eyebrow">nlp-mtl run report</div><h1>{_e(run.name)}</h1>'
            f'<p class="sub">{status} · <code>{_e(run.path.resolve())}</code> · generated {generated}</p></header>')


def _facts(run: RunData) -> str:
    config = run.experiment.get("config", {})
    training = config.get("training", {}) or {}
    backbone = config.get("backbone", {}) or {}
    sampler = config.get("sampler", {}) or {}
    last_step = run.end_event.get("steps") if run.end_event else (
        run.train_events[-1]["step"] if run.train_events else None)
    best = run.end_event.get("best_step") if run.end_event else None
    facts = [
        ("backbone", backbone.get("name")),
        ("tasks", ", ".join(t.name for t in run.tasks) or "—"),
        ("steps", training.get("steps") or (f"{last_step} (logged)" if last_step else None)),
        ("batch size", training.get("batch_size")),
        ("learning rate", training.get("lr")),
        ("head learning rate", training.get("head_lr") or training.get("lr")),
        ("warmup / weight decay", f"{_number(training.get('warmup_ratio'))} / {_number(training.get('weight_decay'))}"),
        ("sampler", f"{sampler.get('strategy', '—')}" + (f", T={_number(sampler.get('temperature'))}"
                                                        if sampler.get("strategy") == "temperature" else "")),
        ("precision", training.get("mixed_precision")),
        ("seed", training.get("seed")),
        ("best step", best),
        ("data root", run.experiment.get("data_root")),
    ]
    items = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(_number(v))}</dd></div>" for k, v in facts)
    return f'<dl class="facts">{items}</dl>'


def _tasks_table(run: RunData) -> str:
    specs = {t.get("name"): t for t in run.experiment.get("tasks", []) if isinstance(t, dict)}
    rows = []
    for task in run.tasks:
        spec = specs.get(task.name, {})
        cells = [f"<td>{_e(task.name)}</td>", f"<td>{_e(_type_name(task.task_type))}</td>",
                 f"<td>{_e(task.metric or spec.get('metric') or '—')}</td>",
                 f'<td class="num">{len(task.labels) or "—"}</td>',
                 f'<td class="num">{_e(_number(spec.get("sampling_weight")))}</td>',
                 f'<td class="num">{_e(_number(spec.get("loss_weight")))}</td>',
                 f'<td class="num">{_e(_number(spec.get("max_length")))}</td>']
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = ("<tr><th>task</th><th>type</th><th>main metric</th><th class=num>labels</th>"
            "<th class=num>sampling weight</th><th class=num>loss weight</th><th class=num>max length</th></tr>")
    return f'<div class="table-wrap"><table><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _summary_table(summary: dict[str, Any]) -> str:
    tasks: dict[str, Any] = summary.get("tasks", {})
    metrics_of = {n: (t.get("metrics") or {}) for n, t in tasks.items() if isinstance(t, dict)}
    columns = [c for c in SUMMARY_COLUMNS if any(c in m for m in metrics_of.values())]
    head = ("<tr><th>task</th>" + "".join(f"<th class=num>{_e(c.replace('_', ' '))}</th>" for c in columns)
            + "<th class=num>examples</th></tr>")
    rows = []
    for name, metrics in metrics_of.items():
        main = tasks[name].get("main_metric")
        cells = [f"<td>{_e(name)}</td>"]
        for column in columns:
            value = metrics.get(column)
            text = f"{100 * value:.2f}" if isinstance(value, (int, float)) else "—"
            cells.append(f'<td class="num{" main" if column == main else ""}">{text}</td>')
        examples = metrics.get("examples")
        truncated = metrics.get("truncated") or 0
        note = f" ({truncated:,} truncated)" if truncated else ""
        cells.append(f'<td class="num">{f"{examples:,}" if isinstance(examples, int) else "—"}{note}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="table-wrap"><table><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _results(run: RunData) -> str:
    if not run.summaries:
        return '<p class="empty">No reports yet: they are written when training finishes (or by nlp-mtl evaluate).</p>'
    parts = [f"<h3>{_e(split.capitalize())}</h3>{_summary_table(run.summaries[split])}"
             for split in SPLITS if split in run.summaries]
    return "".join(parts) + '<p class="note">Scores in %; each task\'s main metric is highlighted.</p>'


def _figures(plots: list[Path], wanted: list[tuple[str, str]]) -> str:
    """The wanted (file name, alt text) plots that were written, as figures in the order asked."""
    by_name = {p.name: p for p in plots}
    return "".join(_figure(by_name[name], alt) for name, alt in wanted if name in by_name)


def _training(plots: list[Path]) -> str:
    figures = _figures(plots, [(TRAINING_LOSS, "training loss per task"),
                               (VALIDATION, "validation main metric per task")])
    return f'<div class="plots">{figures}</div>' if figures else '<p class="empty">No training metrics logged yet.</p>'


def _task_section(run: RunData, task: TaskInfo, plots: list[Path]) -> str:
    figures = _figures(plots, [(entity_f1_name(task.name), f"{task.name}: F1 per entity type")] + [
        (confusion_name(task.name, split), f"{task.name}: {split} confusion matrix") for split in SPLITS])
    reports = []
    for split in SPLITS:
        text = run.report_texts.get((task.name, split))
        if text is not None:
            reports.append(f"<div><h4>{_e(split)}</h4><pre>{_e(text.rstrip())}</pre></div>")
    scores = _headline(run, task)
    plots_html = f'<div class="plots">{figures}</div>' if figures else ""
    reports_html = (f'<div class="reports">{"".join(reports)}</div>' if reports
                    else '<p class="empty">No classification report yet.</p>')
    body = plots_html + reports_html
    return (f'<article class="task"><h3>{_e(task.name)}<span class="tag">'
            f'{_e(_type_name(task.task_type))}</span>{scores}</h3>{body}</article>')


def _headline(run: RunData, task: TaskInfo) -> str:
    """'test f1 86.06' next to the task name, so the section says how it did before the details."""
    for split in ("test", "validation"):
        metrics = (run.reports.get((task.name, split)) or {}).get("metrics") or {}
        metric = main_metric(task, metrics)
        if metric:
            return f'<span class="headline">{_e(split)} {_e(metric)} <b>{100 * metrics[metric]:.2f}</b></span>'
    return ""


def render(run: RunData, plots: list[Path]) -> str:
    """The page as a string, from a loaded run and the PNGs to embed."""
    sections = [
        f'<section class="card"><h2>Experiment</h2>{_facts(run)}{_tasks_table(run)}</section>',
        f'<section class="card"><h2>Results</h2>{_results(run)}</section>',
        f'<section class="card"><h2>Training</h2>{_training(plots)}</section>',
        '<section class="card"><h2>Tasks</h2>' + "".join(_task_section(run, t, plots) for t in run.tasks) + "</section>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(run.name)} · nlp-mtl report</title><style>{CSS}</style></head>"
            f"<body><main>{_header(run)}{''.join(sections)}"
            "<footer>Generated by nlp-mtl report. Self-contained: images are embedded.</footer>"
            "</main></body></html>\n")


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the plots, then RUN_DIR/report.html (or OUTPUT); returns the page's path."""
    run = load_run(run_dir)
    plots = write_run_plots(run)
    path = Path(output) if output is not None else RunDir(run.path).report_page
    atomic_write(path, render(run, plots))
    return path
