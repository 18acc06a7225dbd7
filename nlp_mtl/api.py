"""The Python API in one place: train from a YAML file or from config objects.

    import nlp_mtl
    result = nlp_mtl.train("configs/conll_trec_sst2.yaml", output_dir="runs/joint")
    model = nlp_mtl.MultiTaskModel.from_pretrained("runs/joint")
    model.predict(["John lives in Berlin."])
"""

from __future__ import annotations

from pathlib import Path

from dataclasses import replace

from .config import ExperimentConfig, TaskSpec, load_experiment
from .run_dir import RunDir
from .schema import from_mapping, to_mapping
from .training import TrainResult
from .training import train as _train


def train(config: str | Path | ExperimentConfig, output_dir: str | Path | None = None, *,
          overrides: list[str] | None = None, quiet: bool = False, overwrite: bool = False) -> TrainResult:
    """Train an experiment; ``config`` is a YAML path or an :class:`ExperimentConfig`.

    ``overrides`` are ``key=value`` strings as on the command line (YAML configs only). The run
    directory defaults to the config's ``output_dir``, else ``runs/<name>``.
    """
    if isinstance(config, ExperimentConfig):
        if overrides:
            raise ValueError("overrides apply to YAML configs; change the ExperimentConfig with dataclasses.replace")
        check_config_object(config)
    else:
        config = load_experiment(config, list(overrides or []))
    run = RunDir(output_dir or config.output_dir or f"runs/{config.name}")
    return _train(config, run, quiet=quiet, overwrite=overwrite)


def check_config_object(config: ExperimentConfig) -> None:
    """Config objects built in Python get the checks a YAML file gets (types, choices, ranges)."""
    plain = replace(config, tasks=[t.name if isinstance(t, TaskSpec) else t for t in config.tasks])
    from_mapping(ExperimentConfig, to_mapping(plain), "ExperimentConfig")
    for task in config.tasks:
        if isinstance(task, TaskSpec):
            from_mapping(TaskSpec, to_mapping(task), f"ExperimentConfig.tasks[{task.name}]")


def resume(run_dir: str | Path, quiet: bool = False) -> TrainResult:
    """Continue an interrupted run from its last checkpoint."""
    run = RunDir(run_dir)
    config, _, _ = run.read_experiment()
    return _train(config, run, quiet=quiet, resume=True)
