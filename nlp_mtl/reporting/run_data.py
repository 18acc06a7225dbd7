"""Read what a run directory holds, tolerating the pieces an unfinished run has not written yet.

Plots and the HTML page both work from this, so a half-written run (no validation yet, no test
reports) yields fewer sections rather than errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..run_dir import MODEL_MANIFEST, RunDir

SPLITS = ("validation", "test")


@dataclass
class TaskInfo:
    name: str
    task_type: str
    metric: str | None
    labels: list[str] = field(default_factory=list)


@dataclass
class RunData:
    path: Path
    experiment: dict[str, Any]
    tasks: list[TaskInfo]
    train_events: list[dict[str, Any]]
    validation_events: list[dict[str, Any]]
    end_event: dict[str, Any] | None
    # (task, split) -> the report JSON written by nlp_mtl.evaluation.reports
    reports: dict[tuple[str, str], dict[str, Any]]
    report_texts: dict[tuple[str, str], str]
    summaries: dict[str, dict[str, Any]]
    finished: dict[str, Any] | None

    @property
    def name(self) -> str:
        return str(self.experiment.get("config", {}).get("name") or self.path.resolve().name)


def _read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or unreadable (a run still being written)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_experiment(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory.")
    experiment_path = RunDir(path).experiment_path
    if not experiment_path.is_file():
        raise UserError(f"{path}: not a run directory (no experiment.json).")
    experiment = _read_json(experiment_path)
    if not isinstance(experiment, dict) or not isinstance(experiment.get("config"), dict):
        raise UserError(f"{experiment_path}: not a valid experiment file (expected the JSON that training writes).")
    return experiment


def _read_events(path: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return events
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a kill cut in half
        if isinstance(record, dict):
            events.append(record)
    return events


def _by_step(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Events of one kind in step order; a repeated step keeps its last record (resumed runs)."""
    latest: dict[int, dict[str, Any]] = {}
    for event in events:
        if event.get("event") == kind and isinstance(event.get("step"), int):
            latest[event["step"]] = event
    return [latest[step] for step in sorted(latest)]


def _tasks(path: Path, experiment: dict[str, Any]) -> list[TaskInfo]:
    # The saved model knows labels and the resolved main metric; before it exists (mid-training)
    # the experiment's specs are all there is.
    saved = _read_json(RunDir(path).model_dir / MODEL_MANIFEST)
    if isinstance(saved, dict) and isinstance(saved.get("tasks"), list):
        return [TaskInfo(t["name"], t.get("task_type", ""), t.get("metric"), list(t.get("labels") or []))
                for t in saved["tasks"] if isinstance(t, dict) and "name" in t]
    return [TaskInfo(t["name"], t.get("type", ""), t.get("metric"), list(t.get("labels") or []))
            for t in experiment.get("tasks", []) if isinstance(t, dict) and "name" in t]


def load_run(run_dir: str | Path) -> RunData:
    """Everything the report needs from RUN_DIR; UserError when it is not a run directory."""
    path = Path(run_dir)
    run = RunDir(path)
    experiment = _read_experiment(path)
    tasks = _tasks(path, experiment)
    events = _read_events(run.metrics_path)
    ends = [e for e in events if e.get("event") == "end"]
    reports: dict[tuple[str, str], dict[str, Any]] = {}
    texts: dict[tuple[str, str], str] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        summary = _read_json(run.summary_path(split, "json"))
        if isinstance(summary, dict) and isinstance(summary.get("tasks"), dict):
            summaries[split] = summary
        for task in tasks:
            report = _read_json(run.report_path(task.name, split, "json"))
            if isinstance(report, dict):
                reports[(task.name, split)] = report
            text_path = run.report_path(task.name, split, "txt")
            if text_path.is_file():
                texts[(task.name, split)] = text_path.read_text(encoding="utf-8", errors="replace")
    finished = _read_json(run.finished_path) if run.finished_path.exists() else None
    if run.finished_path.exists() and not isinstance(finished, dict):
        finished = {}  # finished, duration unknown
    return RunData(
        path=path,
        experiment=experiment,
        tasks=tasks,
        train_events=_by_step(events, "train"),
        validation_events=_by_step(events, "validation"),
        end_event=ends[-1] if ends else None,
        reports=reports,
        report_texts=texts,
        summaries=summaries,
        finished=finished,
    )


def main_metric(task: TaskInfo, metrics: dict[str, Any]) -> str | None:
    """The task's model-selection metric, falling back to the usual one when the spec left it unset."""
    if task.metric and task.metric in metrics:
        return task.metric
    return next((m for m in ("f1", "accuracy", "token_accuracy") if m in metrics), None)
