"""Write classification reports (text + JSON) and the cross-task summary table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fileio import atomic_write
from ..task_types import TaskReport
from ..run_dir import RunDir

SUMMARY_COLUMNS = ("f1", "precision", "recall", "accuracy", "macro_f1", "weighted_f1")


def format_report(report: TaskReport) -> str:
    truncated = report.metrics.get("truncated", 0)
    note = f"\n{truncated} of {report.metrics['examples']} examples were truncated to max_length.\n" if truncated else ""
    return f"== {report.task} ({report.split}) ==\n{report.text}{note}"


def format_summary(reports: dict[str, TaskReport], main_metrics: dict[str, str]) -> str:
    columns = [c for c in SUMMARY_COLUMNS if any(c in r.metrics for r in reports.values())]
    header = ["task", "main metric", *columns, "examples"]
    rows = []
    for name, report in reports.items():
        metric = main_metrics.get(name, "")
        cells = [name, f"{metric}={100 * report.metrics[metric]:.2f}" if metric in report.metrics else "-"]
        cells += [f"{100 * report.metrics[c]:.2f}" if c in report.metrics else "-" for c in columns]
        cells.append(str(report.metrics.get("examples", "")))
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)]) + "\n"


def write_reports(run_dir: str | Path, reports: dict[str, TaskReport], split: str,
                  main_metrics: dict[str, str], extra: dict[str, Any] | None = None) -> str:
    """reports/<task>.<split>.txt and .json per task, summary.<split>.txt/.json; returns the summary."""
    out = RunDir(run_dir).reports_dir
    for name, report in reports.items():
        atomic_write(out / f"{name}.{split}.txt", format_report(report))
        payload = {**report.to_json(), "main_metric": main_metrics.get(name)}
        atomic_write(out / f"{name}.{split}.json", json.dumps(payload, indent=2) + "\n")
    summary = format_summary(reports, main_metrics)
    atomic_write(out / f"summary.{split}.txt", summary)
    summary_json = {
        "split": split,
        "tasks": {n: {"main_metric": main_metrics.get(n), "metrics": r.metrics} for n, r in reports.items()},
        **(extra or {}),
    }
    atomic_write(out / f"summary.{split}.json", json.dumps(summary_json, indent=2) + "\n")
    return summary
