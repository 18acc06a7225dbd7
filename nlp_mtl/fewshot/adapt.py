"""Few-shot adaptation to a new task: ``nlp-mtl adapt RUN_DIR --task NEW.yaml --shots K``.

For each seed: K examples per class (per entity/tag type for token tasks) are drawn from the
new task's train split; a new adapter starts from the chosen initialisation, the new head from
the support set's class prototypes; both are fine-tuned on the support set and scored on the
whole test split. Inits:

    auto     (default) the run's meta-learned adapter (else its only adapter group), scaled
             by ``init_scale`` (below), unless a fresh adapter does better in 2-fold
             cross-validation on the support set: per seed, each candidate is adapted on one
             half with the same recipe and scored on the other with the few-shot metric, both
             ways; the higher mean wins, a tie keeps the trained one. A trained adapter can
             bend the encoder's features away from what a new task needs (POS tagging after
             NER, sentiment after tagging: README, few-shot table), and this is how adapt
             notices. Cost: about two more adaptations' worth of training per seed, no extra
             test-set passes. With no trained adapter in the run, a fresh one.
    trained  the run's meta-learned adapter (else its only adapter group; with none, a fresh
             one), scaled by ``init_scale``, with no cross-validation
    meta     the run's meta-learned adapter (``nlp-mtl meta-train``)
    GROUP    any adapter group of the run, e.g. a shared adapter from multi-task training
    fresh    a new adapter (the adapter type's own initialisation) on the run's encoder
    full     no adapter: the whole encoder is fine-tuned (the baseline adapters must beat)

``init_scale`` (``--init-scale``, default 0.5) starts a trained adapter from its delta times
that factor: the point that far along the straight line from the pretrained encoder (0) to the
trained adapter (1), as WiSE-FT interpolates weights. A trained adapter bends the features
toward its training tasks; half of it keeps more of the pretrained features a distant task
needs and still starts in the trained direction. Over the few-shot bench's held-out tasks,
half beat both a quarter and the whole adapter at K=8 and 16 (README, few-shot). Fresh and
full inits ignore it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import TaskSpec
from ..data.encoding import collate
from ..data.pipeline import PreparedTask
from ..errors import UserError
from ..evaluation import evaluate_tasks
from ..evaluation.evaluate import predict_split
from ..fileio import atomic_write
from ..kernels import use_fast_cpu_dropout, use_fast_cpu_training
from ..model import AdapterSetup, MultiTaskModel, TaskHeadInfo
from ..training.accelerator import make_accelerator
from ..training.callbacks import JsonlLog, LossLogger, RecordList, ThroughputMeter
from ..training.engine import Batch, Engine
from ..training.guard import NonFiniteGuard
from ..training.trainer import TaskLoss
from .contrastive import CosinePairLoss, InBatchPairLoss, PairBatches
from .episodes import ClassIndex, support_set
from .meta import META_GROUP, class_index
from .prototypes import init_head_from_prototypes, labelled_features

DEFAULT_FRESH_ADAPTER = ("houlsby", {"reduction_factor": 16})
PRECISIONS = ("no", "bf16", "fp16", "auto")
UPDATES = ("recipe", "rule")
PAIR_SCHEDULES = ("constant", "linear")
PAIR_SAMPLINGS = ("setfit", "in_batch")
TOKEN_HEADS = ("linear", "nearest")


@dataclass(frozen=True)
class AdaptSettings:
    shots: int = 16
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    # 'auto': the run's 'meta' adapter (else its only adapter group) or a fresh one, chosen per
    # seed by cross-validation on the support set; 'trained': the former without choosing.
    init: str = "auto"
    # A trained init starts from its delta times this (1: as trained, 0: the bare encoder);
    # with update 'rule' an init that has a learnt rule starts as trained.
    init_scale: float = 0.5
    epochs: int = 10
    max_steps: int = 150
    batch_size: int = 16
    lr: float = 1e-3            # adapter and head
    encoder_lr: float = 5e-5    # init 'full' only
    eval_batch_size: int = 128
    # Precision of the adaptation steps: no | bf16 | fp16 | auto (training.mixed_precision's values).
    mixed_precision: str = "no"
    # Contrastive stage (tasks with one label per example): rounds of SetFit's pair sampling
    # (each support example paired with one of its class and one of another) that train the
    # adapter (the encoder with init 'full') before the head is fitted; 0 (default): none.
    pair_rounds: int = 0
    # After the contrastive stage, fine-tune the head alone (SetFit fits only its classifier
    # on the trained embeddings) instead of head and adapter.
    pair_head_only: bool = False
    # The contrastive stage's learning rate: 'constant', or 'linear': warm up over its first
    # tenth, then decay to 0 (SetFit's, sentence-transformers' WarmupLinear).
    pair_schedule: str = "constant"
    # Which pairs the contrastive stage trains on: 'setfit' (each round, every support example
    # with one of its class and one of another) or 'in_batch' (every pair within shuffled
    # batches of up to twice ``batch_size`` support sentences, for as many steps as 'setfit'
    # takes: ``pair_rounds`` then only sets the number of steps).
    pair_sampling: str = "setfit"
    # Take every example of a class that has fewer than ``shots`` (benchmarks on TREC-50's rare
    # classes) instead of refusing, which is what `adapt` does: K shots would quietly be fewer.
    allow_short_classes: bool = False
    # recipe: the AdamW recipe above, whatever the init. rule: an init meta-trained with
    # meta.learn_inner_lr starts unscaled and adapts by its learnt update rule instead (its
    # inner steps, full-batch SGD at the learnt rates); inits without one keep the recipe.
    update: str = "recipe"
    # Token tasks: after adaptation, score tokens with the linear head adaptation trained, or
    # with 'nearest': each token takes the label of its most similar support token (NNShot).
    token_head: str = "linear"

    def __post_init__(self) -> None:
        # Checked here, before a run or its data is loaded.
        if not 0 <= self.init_scale <= 1:
            raise UserError(f"--init-scale: expected a factor in [0, 1], got {self.init_scale:g}.")
        if self.lr <= 0:
            raise UserError(f"--lr: expected a number > 0, got {self.lr:g}.")
        if self.mixed_precision not in PRECISIONS:
            raise UserError(f"--mixed-precision: expected one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}.")
        if not self.lr <= 1:  # NaN too
            raise UserError(f"--lr: expected a learning rate of at most 1, got {self.lr:g}.")
        if self.update not in UPDATES:
            raise UserError(f"--update: expected one of {', '.join(UPDATES)}, got {self.update!r}.")
        if self.token_head not in TOKEN_HEADS:
            raise UserError(f"--token-head: expected one of {', '.join(TOKEN_HEADS)}, got {self.token_head!r}.")
        if self.pair_schedule not in PAIR_SCHEDULES:
            raise UserError(f"--pair-schedule: expected one of {', '.join(PAIR_SCHEDULES)}, "
                            f"got {self.pair_schedule!r}.")
        if self.pair_sampling not in PAIR_SAMPLINGS:
            raise UserError(f"--pair-sampling: expected one of {', '.join(PAIR_SAMPLINGS)}, "
                            f"got {self.pair_sampling!r}.")
        if self.pair_rounds < 0:
            raise UserError(f"--pair-rounds: expected an integer >= 0 (0: no contrastive stage), got {self.pair_rounds}.")


def fewshot_metric(task: PreparedTask) -> str:
    """Entity F1 for IOB tagging, macro F1 otherwise (plain tags, sequence classes)."""
    if task.task_type.roles.token_level and task.spec.data.tag_scheme != "none":
        return "f1"
    return "macro_f1"


def resolve_init(model: MultiTaskModel, init: str) -> tuple[str, ...]:
    """The candidate initialisations ``init`` stands for (one, except for 'auto')."""
    groups = list(model.adapters)
    if init in ("trained", "auto"):
        trained = META_GROUP if META_GROUP in groups else (groups[0] if len(groups) == 1 else None)
        if trained is None and groups:
            raise UserError(f"--init {init}: this run has several adapter groups ({', '.join(groups)}) and no "
                            "'meta' one; name the group to start from with --init GROUP, or pass --init fresh.")
        if trained is None:  # no trained adapter at all: a fresh one is all there is
            return ("fresh",)
        return (trained, "fresh") if init == "auto" else (trained,)
    if init in ("fresh", "full") or init in groups:
        return (init,)
    raise UserError(f"--init: expected trained, auto, meta, fresh, full or an adapter group of this run "
                    f"({', '.join(groups) or 'it has none'}), got '{init}'.")


def prepare_model(model: MultiTaskModel) -> MultiTaskModel:
    """Give a run without adapters a setup, so that 'fresh' has an adapter type to build; train
    with the fast CPU dropout and embedding gradient."""
    use_fast_cpu_training(model)
    if model.adapter_setup is not None:
        return model
    kind, options = DEFAULT_FRESH_ADAPTER
    model.install_adapters(AdapterSetup(kind, dict(options), []))
    use_fast_cpu_dropout(model)  # the new adapters' dropout layers too
    return model


@dataclass
class SeedResult:
    seed: int
    support_size: int
    per_class: dict[str, int]
    steps: int
    metrics: dict[str, float]
    report: str = field(repr=False, default="")
    init: str = ""
    # init 'auto': each candidate's 2-fold cross-validated few-shot metric on the support set
    selection: dict[str, float] = field(default_factory=dict)
    # The support-set loss (and throughput) about every tenth of the steps: metrics.jsonl's
    # "train" records, for this seed's adaptation.
    curve: list[dict[str, Any]] = field(default_factory=list)
    # How the adapter was trained: adapt's recipe, or the init's meta-learnt update rule.
    update: str = "recipe"


def _support_features(model: MultiTaskModel, task: PreparedTask, indices: list[int], pad_id: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    head = model.heads[task.name]
    model.eval()
    with torch.no_grad():
        for start in range(0, len(indices), 64):
            batch = {k: v.to(device) for k, v in collate(task.encoded["train"], indices[start : start + 64], pad_id).items()}
            hidden = model.encode_through(model.tasks[task.name].adapter, batch["input_ids"], batch["attention_mask"],
                                          batch.get("token_type_ids"))
            f, y = labelled_features(head, hidden, batch["attention_mask"], batch["labels"])
            feats.append(f)
            labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def _start(model: MultiTaskModel, task: PreparedTask, info: TaskHeadInfo, init: str, device: torch.device,
           settings: AdaptSettings) -> None:
    """A new head for the task and, unless ``init`` is 'full', a new adapter group (fresh, or a
    copy of ``init`` with its delta times ``settings.init_scale``)."""
    if init != "full":
        group = model.add_adapter_group(task.name, copy_from=None if init == "fresh" else init)
        # Meta-learnt warp layers shape how the deltas learn; adaptation leaves them as they are.
        for param in group.warp_parameters():
            param.requires_grad_(False)
        if init != "fresh" and not _by_rule(group, settings):
            # A start adapted by its learnt update rule is used as meta-trained: the rule was
            # learnt for that start, not for a shrunk one.
            group.scale_(settings.init_scale)
    model.add_task(info)
    model.heads[task.name].to(device)


class SupportBatches:
    """The engine's batch source for few-shot adaptation: the support set in shuffled batches,
    a new order every pass (the whole sequence fixed by the seed up front)."""

    def __init__(self, task: PreparedTask, indices: list[int], batch_size: int, steps: int, seed: int,
                 pad_id: int, device: torch.device) -> None:
        self.split, self.name, self.pad_id, self.device = task.encoded["train"], task.name, pad_id, device
        rng = np.random.default_rng(seed)
        order: list[int] = []
        self.chunks: list[list[int]] = []
        for _ in range(steps):
            if not order:
                order = rng.permutation(indices).tolist()
            self.chunks.append(order[:batch_size])
            order = order[batch_size:]

    def batch_at(self, micro_step: int) -> Batch:
        chunk = self.chunks[micro_step]
        batch = {k: v.to(self.device) for k, v in collate(self.split, chunk, self.pad_id).items()}
        return Batch(self.name, batch, len(chunk), int(self.split.lengths[chunk].sum()))

    def cursors(self) -> dict[str, list[int]]:
        return {}


def _fine_tune(model: MultiTaskModel, task: PreparedTask, indices: list[int], settings: AdaptSettings, seed: int,
               full: bool, pad_id: int, device: torch.device) -> tuple[int, list[dict[str, Any]]]:
    """The contrastive stage (sentence tasks), the prototype head, then the adaptation recipe
    on ``indices``, each on the training engine; returns the optimizer steps and the loss curve."""
    body = list(model.encoder.parameters()) if full else model.adapters[task.name].delta_parameters()
    body_lr = settings.encoder_lr if full else settings.lr
    rule = model.adapters[task.name].update_rule if not full and _by_rule(model.adapters[task.name], settings) else None
    curve = RecordList()
    steps = 0
    if settings.pair_rounds and one_label_per_example(task):
        pairs = PairBatches(task, indices, settings.pair_rounds, settings.batch_size, seed, pad_id, device)
        source, pair_loss = pairs, CosinePairLoss
        if settings.pair_sampling == "in_batch":  # SetFit's steps and batch width; every pair of each batch
            source = SupportBatches(task, indices, 2 * settings.batch_size, len(pairs), seed, pad_id, device)
            pair_loss = InBatchPairLoss
        steps += _run_engine(model, [{"params": body, "lr": body_lr}], source,
                             lambda autocast: pair_loss(model, task.name, autocast), len(pairs), task.name,
                             settings, curve, schedule=settings.pair_schedule)
    init_head_from_prototypes(model.heads[task.name], *_support_features(model, task, indices, pad_id, device))

    def loss(autocast: Any) -> TaskLoss:
        return TaskLoss(model, {task.name: 1.0}, device, autocast=autocast)

    if rule is not None:
        # A meta-learnt update rule: the update meta-training optimised, as it ran there
        # (full-batch SGD, the learnt rate per tensor, its number of steps, no clipping).
        tensors = ([(f"deltas.{n}", p) for n, p in model.adapters[task.name].deltas.named_parameters()]
                   + [(f"head.{n}", p) for n, p in model.heads[task.name].named_parameters()])
        groups = [{"params": [p], "lr": float(rule.rate(n, p).detach())} for n, p in tensors]
        rule_steps = int(rule.steps)
        steps += _run_engine(model, groups, SupportBatches(task, indices, len(indices), rule_steps, seed, pad_id, device),
                             loss, rule_steps, task.name, settings, curve, sgd=True)
        return steps, curve.records
    groups = [{"params": list(model.heads[task.name].parameters()), "lr": settings.lr}]
    if not (steps and settings.pair_head_only):
        groups.append({"params": body, "lr": body_lr})
    fine_tune = min(settings.max_steps, settings.epochs * math.ceil(len(indices) / settings.batch_size))
    steps += _run_engine(model, groups, SupportBatches(task, indices, settings.batch_size, fine_tune, seed, pad_id, device),
                         loss, fine_tune, task.name, settings, curve)
    return steps, curve.records


def scoring_head(settings: AdaptSettings, task: PreparedTask) -> str:
    """What scores ``task`` after adaptation: 'nearest' only where asked and the task labels
    tokens; a sentence task keeps its one head."""
    return settings.token_head if task.task_type.roles.token_level else "linear"


def use_nearest_neighbours(model: MultiTaskModel, task: PreparedTask, indices: list[int], pad_id: int,
                           device: torch.device) -> None:
    """Replace the task's trained linear head by a nearest-neighbour head over the support
    set's tokens, read through the adapter as adaptation left it."""
    features, labels = _support_features(model, task, indices, pad_id, device)
    info = model.tasks[task.name]
    options = {"type": "token_nearest_neighbour", "support_tokens": len(labels)}
    model.add_task(TaskHeadInfo(**{**asdict(info), "head": "token_nearest_neighbour", "head_options": options}))
    head = model.heads[task.name].to(device)
    head.remember(features, labels)


def _by_rule(group: Any, settings: AdaptSettings) -> bool:
    """Whether this adapter group adapts by its learnt update rule."""
    return settings.update == "rule" and group.update_rule is not None


def one_label_per_example(task: PreparedTask) -> bool:
    """Sentence tasks with one class per example: what the contrastive stage's pairs need."""
    roles = task.task_type.roles
    return not roles.token_level and not roles.label_set


def _run_engine(model: MultiTaskModel, groups: list[dict[str, Any]], source: Any, loss: Any, steps: int, name: str,
                settings: AdaptSettings, curve: RecordList, sgd: bool = False, schedule: str = "constant") -> int:
    """``steps`` optimizer steps of AdamW (clipped at norm 1), or with ``sgd`` of plain SGD, over
    ``groups`` at their rates, constant or on the 'linear' schedule (``linear_warmup_decay``);
    the loss curve (about every tenth of the steps) goes into ``curve``."""
    optimizer = torch.optim.SGD(groups) if sgd else torch.optim.AdamW(groups, weight_decay=0.01)
    # The model stays where adapt put it (its device), so only the precision is accelerate's.
    accelerator, _ = make_accelerator(settings.mixed_precision, 1, Path(os.devnull), [])
    factor = linear_warmup_decay(steps) if schedule == "linear" else (lambda _: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    engine = Engine(accelerator, model, optimizer, scheduler, source, loss(accelerator.autocast),
                    NonFiniteGuard("stop", JsonlLog(Path(os.devnull), False),
                                   lambda: "this seed's adaptation is dropped", "--lr"),
                    [ThroughputMeter(), LossLogger([name], max(1, steps // 10), curve, trackers=False)],
                    steps, max_grad_norm=0.0 if sgd else 1.0)
    return engine.fit().step


def linear_warmup_decay(steps: int, warmup: float = 0.1) -> Callable[[int], float]:
    """The rate's factor at each step: up from 0 over the first ``warmup`` of ``steps``, then
    down in equal steps, reaching 0 just after the last (SetFit's, sentence-transformers'
    WarmupLinear, shifted by one so that neither the first nor the last step is wasted at 0)."""
    ramp = max(1, math.ceil(warmup * steps))

    def factor(step: int) -> float:
        if step < ramp:
            return (step + 1) / ramp
        return max(0.0, (steps - step) / (steps - ramp + 1))
    return factor


def _support_score(model: MultiTaskModel, task: PreparedTask, indices: list[int], metric: str, pad_id: int,
                   device: torch.device) -> float:
    """The few-shot metric (entity F1 or macro F1, as on the test split) on support examples."""
    part = task.encoded["train"].take(indices)
    predicted = predict_split(model, task, part, 64, pad_id, device)
    rows = [task.data.splits["train"][i] for i in indices]
    report = task.task_type.report(task.spec, "support", rows, part, [predicted[i] for i in range(len(part))],
                                   task.labels)
    return float(report.metrics[metric])


def support_halves(task: PreparedTask, indices: list[int], seed: int) -> tuple[list[int], list[int]]:
    """Two halves of the support set: every class split evenly for sequence tasks (by each
    example's label), sentences split at random for token tasks."""
    rng = np.random.default_rng(seed + 7919)  # apart from the draws that picked the support set
    labels = task.encoded["train"].labels
    if isinstance(labels, np.ndarray) and labels.ndim == 1:
        order = sorted(rng.permutation(indices).tolist(), key=lambda i: int(labels[i]))  # stable: shuffled per class
    else:
        order = rng.permutation(indices).tolist()
    return sorted(order[0::2]), sorted(order[1::2])


def choose_init(model: MultiTaskModel, task: PreparedTask, info: TaskHeadInfo, candidates: tuple[str, ...],
                indices: list[int], seed: int, settings: AdaptSettings, pad_id: int,
                device: torch.device) -> tuple[str, dict[str, float]]:
    """The candidate that adapts best on one half of the support set, scored (with the task's
    few-shot metric) on the other half and the other way round; the first on a tie. Returns
    it with every candidate's score."""
    halves = support_halves(task, indices, seed)
    if not all(halves):  # a support set of one example: nothing to cross-validate on
        return candidates[0], {}
    scores = {}
    for init in candidates:
        folds = []
        for train_half, held_out in (halves, halves[::-1]):
            torch.manual_seed(seed)
            _start(model, task, info, init, device, settings)
            _fine_tune(model, task, train_half, settings, seed, False, pad_id, device)
            folds.append(_support_score(model, task, held_out, fewshot_metric(task), pad_id, device))
        scores[init] = float(np.mean(folds))
    return max(candidates, key=lambda c: (scores[c], -candidates.index(c))), scores


def adapt_one_seed(model: MultiTaskModel, task: PreparedTask, info: TaskHeadInfo, candidates: tuple[str, ...],
                   seed: int, settings: AdaptSettings, encoder_state: dict[str, torch.Tensor] | None,
                   index: ClassIndex) -> SeedResult:
    """Adapt ``model`` (in place: a new adapter group and head named after the task) and score."""
    device = next(model.parameters()).device
    pad_id = model.tokenizer.pad_token_id or 0
    torch.manual_seed(seed)
    indices, per_class = support_set(task.labels, index, settings.shots, seed)
    init, selection = candidates[0], {}
    if init == "full":
        model.encoder.load_state_dict(encoder_state)  # every seed starts from the same encoder
        model.encoder.requires_grad_(True)
        info = TaskHeadInfo(**{**asdict(info), "adapter": None})
    else:
        model.encoder.requires_grad_(False)
        info = TaskHeadInfo(**{**asdict(info), "adapter": task.name})
        if len(candidates) > 1:
            init, selection = choose_init(model, task, info, candidates, indices, seed, settings, pad_id, device)
            torch.manual_seed(seed)  # from here on, the same draws as with the chosen init alone
    _start(model, task, info, init, device, settings)
    steps, curve = _fine_tune(model, task, indices, settings, seed, init == "full", pad_id, device)
    if scoring_head(settings, task) == "nearest":
        use_nearest_neighbours(model, task, indices, pad_id, device)
    report = evaluate_tasks(model, [task], "test", settings.eval_batch_size, pad_id, device)[task.name]
    ruled = init != "full" and _by_rule(model.adapters[task.name], settings)
    return SeedResult(seed, len(indices), per_class, steps, report.metrics, report.text, init, selection, curve,
                      "learnt update rule" if ruled else "recipe")


@dataclass
class AdaptSummary:
    task: str
    source: str
    init: str
    shots: int
    metric: str
    seeds: list[SeedResult]
    mean: dict[str, float]
    std: dict[str, float]
    seconds: float
    init_scale: float | None = None  # None: no trained adapter to scale (fresh, full)
    token_head: str = "linear"  # what scored a token task: 'linear' or 'nearest'

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "source": self.source, "init": self.init, "init_scale": self.init_scale,
                "shots": self.shots, "token_head": self.token_head,
                "metric": self.metric, "mean": self.mean, "std": self.std, "seconds": round(self.seconds, 1),
                "seeds": [{k: v for k, v in asdict(s).items() if k != "report"} for s in self.seeds]}

    @property
    def scale_suffix(self) -> str:
        """' x0.5' where a scale applied and is not 1, else ''."""
        return f" x{self.init_scale:g}" if self.init_scale not in (None, 1.0) else ""

    @property
    def label(self) -> str:
        """The init with its scale: 'meta x0.5', 'fresh'."""
        return self.init + self.scale_suffix

    def headline(self) -> str:
        m = self.metric
        return (f"{self.task}, {self.shots}-shot, init {self.label}{self.choices()}: {m} {100 * self.mean[m]:.2f} ± "
                f"{100 * self.std[m]:.2f} over {len(self.seeds)} seeds")

    def choices(self) -> str:
        """' (meta 3, fresh 2)' for init 'auto': what the seeds chose."""
        if self.init != "auto":
            return ""
        counts: dict[str, int] = {}
        for s in self.seeds:
            counts[s.init] = counts.get(s.init, 0) + 1
        return " (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"


def few_shot_adapt(model: MultiTaskModel, task: PreparedTask, settings: AdaptSettings, source: str = "",
                   quiet: bool = True, on_seed: Any = None) -> AdaptSummary:
    """Adapt ``model`` to ``task`` once per seed. With an adapter init the model keeps the last
    seed's adapter and head (``save_task_package`` writes them); with 'full' it keeps nothing."""
    started = time.perf_counter()
    if "test" not in task.encoded:
        raise UserError(f"{task.spec.source}: few-shot adaptation is scored on the test split; the spec has none.")
    model = prepare_model(model)
    candidates = resolve_init(model, settings.init)
    init = "auto" if len(candidates) > 1 else candidates[0]
    scaled = any(c not in ("fresh", "full") and not _by_rule(model.adapters[c], settings) for c in candidates)
    if settings.update == "rule" and not any(c in model.adapters and model.adapters[c].update_rule is not None
                                             for c in candidates):
        raise UserError(f"--update rule: no learnt update rule in {source or 'this model'} for --init {settings.init} "
                        "(meta-train with meta.learn_inner_lr: true makes one, in adapter group 'meta').")
    if task.name in model.tasks or task.name in model.adapters:
        raise UserError(f"task '{task.name}' is already in {source or 'this model'}; adapt is for a new task "
                        "(give the spec another name).")
    encoder_state = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()} if init == "full" else None
    info = TaskHeadInfo(name=task.name, task_type=task.spec.type, head=task.spec.head.get("type", task.task_type.head),
                        labels=task.labels, head_options=dict(task.spec.head), max_length=task.spec.max_length,
                        metric=task.metric, pair=task.encoded["train"].pairs)
    index = class_index(task)  # one pass over the train split, shared by every seed
    short = [(c, int(n)) for c, n in zip(index.classes, index.counts()) if n < settings.shots]
    if short and not settings.allow_short_classes:  # K shots of a class with fewer examples would quietly be fewer than K
        raise UserError(f"--shots {settings.shots}: more than the train split of {task.spec.source} has of " +
                        ", ".join(f"'{c}' ({n})" for c, n in short) + "; lower --shots or add examples.")
    was_training, encoder_trainable = model.training, next(model.encoder.parameters()).requires_grad
    results = []
    try:
        for seed in tqdm(settings.seeds, desc=f"adapting {task.name} ({settings.shots}-shot, {init})", disable=quiet):
            result = adapt_one_seed(model, task, info, candidates, seed, settings, encoder_state, index)
            results.append(result)
            if on_seed is not None:
                on_seed(result)
    finally:
        # The encoder is shared and stays as it came: weights (init 'full'), frozen, same mode.
        if encoder_state is not None:
            model.encoder.load_state_dict(encoder_state)
            model.remove_task(task.name)  # its head was trained with an encoder that is gone now
        model.encoder.requires_grad_(encoder_trainable)
        model.train(was_training)
    keys = sorted(set.intersection(*(set(r.metrics) for r in results)))
    mean = {k: float(np.mean([r.metrics[k] for r in results])) for k in keys}
    std = {k: float(np.std([r.metrics[k] for r in results])) for k in keys}
    return AdaptSummary(task.name, source, init, settings.shots, fewshot_metric(task), results, mean, std,
                        time.perf_counter() - started, settings.init_scale if scaled else None,
                        scoring_head(settings, task))


def load_new_task(spec: TaskSpec, root: Path, tokenizer: Any, test_limit: int | None = None) -> PreparedTask:
    from ..data.pipeline import encode_all, load_all

    limit = {"test": test_limit} if test_limit else None
    (data,) = load_all([spec], root, limit)
    return encode_all([data], tokenizer, splits=("train", "test"), quiet=True)[0]


def write_summary(summary: AdaptSummary, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(summary.to_json(), indent=2) + "\n")


def adapt_run(run_dir: str | Path, spec: TaskSpec, settings: AdaptSettings, data_root: str | Path | None = None,
              test_limit: int | None = None, quiet: bool = True, on_seed: Any = None,
              device: str | None = None) -> tuple[MultiTaskModel, AdaptSummary]:
    """``nlp-mtl adapt`` and ``nlp_mtl.adapt``: load the run, read the new task (data root: the
    given one, else the run's, else the default), adapt on ``device`` (default: the GPU where
    there is one). Returns the model (holding the last seed's adapter and head) and the summary."""
    from ..config import default_data_root
    from ..devices import default_device
    from ..run_dir import RunDir

    run = RunDir(run_dir)
    if data_root:
        root = Path(data_root).expanduser().resolve()
    elif run.experiment_path.is_file():
        root = run.read_experiment()[2]
    else:
        root = default_data_root()
    model = MultiTaskModel.from_pretrained(run.path, device=device or default_device())
    task = load_new_task(spec, root, model.tokenizer, test_limit)
    return model, few_shot_adapt(model, task, settings, source=str(run.path), quiet=quiet, on_seed=on_seed)
