"""The layout of a run directory, in one place.

    RUN_DIR/
      experiment.json        resolved experiment config with every task spec inlined
      model/                 final MultiTaskModel (save_pretrained format)
      checkpoints/best/      best model by mean validation metric
      checkpoints/last/      resumable state: model, optimizer, scheduler, sampler position, RNG
      metrics.jsonl          training and validation metrics, one JSON object per line
      reports/               <task>.<split>.txt/.json, summary.<split>.txt/.json
      plots/                 PNG curves, confusion matrices, per-entity F1 (nlp-mtl report adds report.html)
      logs/                  tracker output (TensorBoard events with training.log_with: auto/tensorboard)
      FINISHED               written last: the run completed
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, TaskSpec, data_root
from .errors import UserError
from .fileio import atomic_write
from .schema import from_mapping, to_mapping


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    model_dir = property(lambda self: self.path / "model")
    best_dir = property(lambda self: self.path / "checkpoints" / "best")
    last_dir = property(lambda self: self.path / "checkpoints" / "last")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    experiment_path = property(lambda self: self.path / "experiment.json")
    finished_path = property(lambda self: self.path / "FINISHED")

    @classmethod
    def for_config(cls, config: ExperimentConfig, output_dir: str | Path | None = None) -> RunDir:
        """The run directory: ``output_dir`` if given, else the config's, else runs/<name>."""
        return cls(output_dir or config.output_dir or f"runs/{config.name}")

    def check_new(self, overwrite: bool) -> None:
        """Refuse to train into a directory holding a run, finished or not, unless told to."""
        if not overwrite:
            if self.finished_path.exists():
                raise UserError(
                    f"{self.path}: holds a finished run; pass --overwrite to replace it or choose another --output-dir."
                )
            if (self.last_dir / "trainer_state.json").exists():
                raise UserError(
                    f"{self.path}: holds an unfinished run; continue it with --resume {self.path}, "
                    "or pass --overwrite to start over."
                )

    def prepare_new(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # Only reached with --overwrite or for a fresh directory: the old run's outputs go, so
        # nothing of it can be mistaken for the new one.
        for stale in (self.finished_path, self.metrics_path, self.experiment_path, self.path / "report.html"):
            stale.unlink(missing_ok=True)
        for stale_dir in (self.path / "checkpoints", self.path / "reports", self.model_dir, self.path / "plots",
                          self.path / "logs"):
            shutil.rmtree(stale_dir, ignore_errors=True)

    def write_experiment(self, config: ExperimentConfig, specs: list[TaskSpec]) -> None:
        # Specs built in Python are stored below with the others; the config refers to them by name.
        config = replace(config, tasks=[t.name if isinstance(t, TaskSpec) else t for t in config.tasks])
        payload = {
            "config": to_mapping(config),
            "config_source": config.source,
            "data_root": str(data_root(config)),
            "tasks": [{**to_mapping(spec), "source": spec.source} for spec in specs],
        }
        atomic_write(self.experiment_path, json.dumps(payload, indent=2) + "\n")

    def read_experiment(self) -> tuple[ExperimentConfig, list[TaskSpec], Path]:
        if not self.experiment_path.is_file():
            raise UserError(f"{self.path}: not a run directory (no experiment.json).")
        payload: dict[str, Any] = json.loads(self.experiment_path.read_text())
        config = replace(from_mapping(ExperimentConfig, payload["config"], str(self.experiment_path)),
                         source=payload.get("config_source", ""))
        specs = []
        for raw in payload["tasks"]:
            source = raw.pop("source", "")
            specs.append(replace(from_mapping(TaskSpec, raw, str(self.experiment_path)), source=source))
        return config, specs, Path(payload["data_root"])

    def mark_finished(self, seconds: float) -> None:
        atomic_write(self.finished_path, json.dumps({"seconds": round(seconds, 1)}) + "\n")
