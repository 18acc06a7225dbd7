"""The Python API in one place: train from a YAML file or from config objects.

    import nlp_mtl
    result = nlp_mtl.train("configs/conll_trec_sst2.yaml", output_dir="runs/joint")
    model = nlp_mtl.MultiTaskModel.from_pretrained("runs/joint")
    model.predict(["John lives in Berlin."])

    nlp_mtl.meta_train("configs/meta_ner_trec_sst2.yaml")
    summary = nlp_mtl.adapt("runs/meta_ner_trec_sst2", "conll2003_chunk", shots=16, seeds=5)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    run = RunDir.for_config(config, output_dir)
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


def meta_train(config: str | Path | ExperimentConfig, output_dir: str | Path | None = None, *,
               overrides: list[str] | None = None, quiet: bool = False, overwrite: bool = False) -> Any:
    """Meta-learn an adapter initialisation (the config's ``adapters:`` and ``meta:`` sections)."""
    from .fewshot.meta import meta_train as _meta_train

    if isinstance(config, ExperimentConfig):
        check_config_object(config)
    else:
        config = load_experiment(config, list(overrides or []))
    run = RunDir.for_config(config, output_dir)
    return _meta_train(config, run, quiet=quiet, overwrite=overwrite)


def adapt(run_dir: str | Path, task: str | Path | TaskSpec, shots: int = 16, seeds: int = 5, init: str = "auto",
          data_root: str | Path | None = None, test_limit: int | None = None, quiet: bool = True,
          init_scale: float = 0.5, mixed_precision: str = "no", pair_rounds: int = 0,
          pair_head_only: bool = False, pair_schedule: str = "constant", pair_sampling: str = "setfit",
          update: str = "recipe", token_head: str = "linear") -> Any:
    """Few-shot adaptation to a new task, once per seed (1..seeds); returns an ``AdaptSummary``
    with every seed's metrics and report, and their mean and std. ``init_scale`` starts a
    trained adapter from its delta times that factor (``adapt --init-scale``); ``pair_rounds``
    sets the contrastive stage of sentence tasks (``adapt --pair-rounds``; 0: none) and
    ``pair_head_only`` what follows it (``adapt --pair-head-only``), ``pair_schedule`` its
    learning rate (``adapt --pair-schedule``: constant or linear) and ``pair_sampling`` its pairs
    (``adapt --pair-sampling``: setfit or in_batch); ``update='rule'`` adapts a
    meta-trained init by its learnt update rule (``adapt --update rule``); ``token_head='nearest'``
    scores token tasks by their nearest support token (``adapt --token-head nearest``)."""
    from .config import load_task_spec, resolve_task_path
    from .fewshot.adapt import AdaptSettings, adapt_run

    spec = task if isinstance(task, TaskSpec) else load_task_spec(resolve_task_path(str(task)))
    settings = AdaptSettings(shots=shots, seeds=tuple(range(1, seeds + 1)), init=init, init_scale=init_scale,
                             mixed_precision=mixed_precision, pair_rounds=pair_rounds,
                             pair_head_only=pair_head_only, pair_schedule=pair_schedule,
                             pair_sampling=pair_sampling, update=update, token_head=token_head)
    return adapt_run(run_dir, spec, settings, data_root, test_limit, quiet=quiet)[1]
