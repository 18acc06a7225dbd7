"""The multi-task training loop, on accelerate.

One loop for CPU, one GPU or many processes: at each step the task sampler names a task (the
same on every process), that task's next length-grouped batch is padded and fed through the
shared encoder and the task's head. Validation runs a few times; the best checkpoint by the mean
of the tasks' main metrics is kept and becomes the final model, which is then scored on test.
A resumable checkpoint is written periodically; ``resume=True`` continues from it exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..backbone import load_backbone, resolve_backbone
from ..config import AdapterConfig, ExperimentConfig, TaskSpec, TrainingConfig, cache_dir, data_root, load_tasks
from ..data.encoding import collate, collate_labels
from ..data.pipeline import PreparedTask, encode_all, load_all
from ..data.sampler import BatchCursor, LengthGroupedBatches, TaskSampler
from ..errors import UserError
from ..evaluation import evaluate_tasks, write_reports
from ..kernels import attention_for_varying_shapes, use_fast_cpu_training
from ..model import AdapterSetup, MultiTaskModel, TaskHeadInfo
from ..run_dir import RunDir
from ..task_types.base import TaskReport
from .callbacks import (Checkpointer, EarlyStopping, Evaluator, JsonlLog, LossLogger, ProgressBar, ThroughputMeter,
                        Validation)
from .checkpoint import checkpoint_note, find_checkpoint, load_checkpoint
from .engine import Batch, Callback, Engine, EngineState
from .guard import NonFiniteGuard
from .shared_pass import TrainUnit, train_units
from .accelerator import make_accelerator
from .optim import build_optimizer, build_scheduler
from .tracking import flat_hyperparameters, resolve_trackers, scalar_metrics


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_step: int | None
    best_score: float | None
    test_reports: dict[str, TaskReport] = field(default_factory=dict)
    seconds: float = 0.0


def head_infos(tasks: list[PreparedTask], adapters: AdapterConfig | None = None) -> list[TaskHeadInfo]:
    return [
        TaskHeadInfo(
            name=t.name,
            task_type=t.spec.type,
            head=t.spec.head.get("type", t.task_type.head),
            labels=t.labels,
            head_options=dict(t.spec.head),
            max_length=t.spec.max_length,
            metric=t.metric,
            pair=t.encoded["train"].pairs,
            adapter=adapters.group_of(t.name) if adapters else None,
        )
        for t in tasks
    ]


def build_model(config: ExperimentConfig, encoder: Any, tokenizer: Any, tasks: list[PreparedTask]) -> MultiTaskModel:
    ac = config.adapters
    infos = head_infos(tasks, ac)
    setup = None
    if ac.enabled:
        groups = list(dict.fromkeys(i.adapter for i in infos if i.adapter is not None))
        setup = AdapterSetup(ac.type, dict(ac.options), groups, ac.train_backbone)
        if not ac.train_backbone:
            encoder.requires_grad_(False)
    model = MultiTaskModel(encoder, infos, tokenizer, setup)
    use_fast_cpu_training(model)
    return model


def parameter_summary(model: MultiTaskModel) -> list[str]:
    """Trainable parameters in all, and what each task adds to the shared encoder."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.encoder.parameters())
    lines = [f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%)"]
    if model.adapter_setup is not None:
        backbone = "trainable" if model.adapter_setup.train_backbone else "frozen"
        lines[0] += f"; encoder {encoder:,} ({backbone}), adapters: {model.adapter_setup.type}"
        users: dict[str | None, list[str]] = {}
        for name, info in model.tasks.items():
            users.setdefault(info.adapter, []).append(name)
        for name, info in model.tasks.items():
            own = sum(p.numel() for p in model.task_parameters(name))
            sharing = users[info.adapter]
            if info.adapter is not None and len(sharing) > 1:
                adapter = sum(p.numel() for p in model.adapters[info.adapter].parameters())
                # A shared adapter is the task's only once: count it once, say who shares it.
                lines.append(f"  {name}: head {own - adapter:,} parameters, plus adapter '{info.adapter}' "
                             f"({adapter:,}, {100 * adapter / encoder:.2f}% of the encoder) shared with "
                             f"{', '.join(t for t in sharing if t != name)}")
            else:
                lines.append(f"  {name}: adapter '{info.adapter}' + head = {own:,} parameters "
                             f"({100 * own / encoder:.2f}% of the encoder)")
    return lines


def count_steps(config: ExperimentConfig, batches_per_epoch: list[int]) -> int:
    """'steps' when set; otherwise epochs x (batches in all tasks' train splits), in optimizer steps."""
    if config.training.steps:
        return config.training.steps
    return max(1, math.ceil(config.training.epochs * sum(batches_per_epoch) / config.training.gradient_accumulation_steps))


def unit_sampler(config: ExperimentConfig, tasks: list[PreparedTask], units: list[TrainUnit],
                 batches_per_epoch: dict[str, int], steps: int) -> TaskSampler:
    """Proportional sampling by examples; with token budgets by batches, so that a task of short
    sentences (more of them per batch) is not over-sampled for it. A shared-pass group counts
    its examples once, with its members' mean sampling_weight."""
    by_name = {t.name: t for t in tasks}
    tc = config.training
    sizes = [len(by_name[u.members[0]].encoded["train"]) if tc.batch_tokens is None else batches_per_epoch[u.name]
             for u in units]
    weights = [sum(by_name[m].spec.sampling_weight for m in u.members) / len(u.members) for u in units]
    return TaskSampler([u.name for u in units], sizes, weights, config.sampler,
                       steps * tc.gradient_accumulation_steps, tc.seed)


def check_max_length(specs: list[TaskSpec], encoder_config: Any) -> None:
    limit = getattr(encoder_config, "max_position_embeddings", None)
    if limit and encoder_config.model_type in ("roberta", "xlm-roberta", "camembert"):
        # Their position ids start after the padding index: 514 positions hold 512 tokens.
        limit -= (encoder_config.pad_token_id or 0) + 1
    for spec in specs:
        if limit and spec.max_length > limit:
            raise UserError(f"{spec.source}: max_length {spec.max_length} exceeds the backbone's "
                            f"{limit} positions (max_position_embeddings).")


class TaskBatches:
    """The engine's batch source for multi-task training: the sampler names the unit (a task, or
    a shared-pass group) of each micro-step, the same on every process; that unit's
    length-grouped batches give this process's shard, padded and moved to the device. A group's
    batch carries each member's labels, as {task: labels}."""

    def __init__(self, tasks: list[PreparedTask], units: list[TrainUnit], training: TrainingConfig, accelerator: Any,
                 pad_id: int) -> None:
        self.splits = {t.name: t.encoded["train"] for t in tasks}
        self.units = {u.name: u for u in units}
        self.sampler: TaskSampler | None = None
        self.pad_id, self.multiple_of = pad_id, training.pad_to_multiple_of
        self.rank, self.device = accelerator.process_index, accelerator.device
        per_step = accelerator.num_processes
        self.batches = {
            u.name: LengthGroupedBatches(self.splits[u.members[0]].lengths, training.batch_size * per_step,
                                         seed=training.seed + 1000 * i, group_by_length=training.group_by_length,
                                         num_shards=per_step,
                                         batch_tokens=training.batch_tokens and training.batch_tokens * per_step)
            for i, u in enumerate(units)
        }

    def batches_per_epoch(self) -> dict[str, int]:
        return {name: len(b) for name, b in self.batches.items()}

    def batch_at(self, micro_step: int) -> Batch:
        unit = self.units[self.sampler.task_at(micro_step)]
        split = self.splits[unit.members[0]]
        indices = self.batches[unit.name].next_shard(self.rank)
        inputs = collate(split, indices, self.pad_id, self.multiple_of)
        if unit.shared:  # the members' inputs are the same: only their labels are padded again
            width = inputs["input_ids"].shape[1]
            inputs["labels"] = {m: collate_labels(self.splits[m], indices, width) for m in unit.members}
        return Batch(unit.name, _to_device(inputs, self.device), len(indices), int(split.lengths[indices].sum()))

    def cursors(self) -> dict[str, list[int]]:
        return {n: [b.cursor.pass_index, b.cursor.position] for n, b in self.batches.items()}

    def restore(self, cursors: dict[str, list[int]]) -> None:
        for name, cursor in cursors.items():
            self.batches[name].cursor = BatchCursor(*cursor)


def _to_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: _to_device(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True)
            for k, v in inputs.items()}


class TaskLoss:
    """A batch of one unit through the shared encoder and its heads: one task's loss times its
    ``loss_weight``, or for a shared-pass group the weighted sum of its members' losses from one
    encoder pass. With ``compiled``, through ``torch.compile`` of the same call (one graph per
    unit; lengths dynamic after the second shape, so a unit compiles twice, not per length)."""

    def __init__(self, model: Any, weights: dict[str, float], device: torch.device,
                 autocast: Callable[[], Any] = contextlib.nullcontext, compiled: bool = False,
                 units: list[TrainUnit] | None = None) -> None:
        # autocast: for a model accelerate did not wrap (adapt), its precision context.
        self.model, self.weights, self.device, self.autocast = model, weights, device, autocast
        self.forward = torch.compile(model) if compiled else model
        self.shared = {u.name: u.members for u in units or [] if u.shared}

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, float]:
        members = self.shared.get(batch.task)
        with attention_for_varying_shapes(self.device), self.autocast():
            if members is None:
                return self.forward(batch.task, **batch.inputs)["loss"], self.weights[batch.task]
            losses = self.forward(members, **batch.inputs)["loss"]
            return sum(self.weights[m] * losses[m] for m in members), 1.0


def resolve_compile(requested: bool | str, device: torch.device, precision: str) -> bool:
    """'auto': compile bf16 steps on a CPU (``precision`` as accelerate runs it), the one case
    measured to pay. With scripts/bench.py on a 2-core AMX Xeon the compiled bf16 step ran
    1.2-1.3x the eager one, and its compiles (about 90 s for the main job's three tasks) were
    repaid within the main job; in fp32 the compiled step ran 1.02-1.09x there and 0.98x-1.035x
    on a 2-core AVX2 EPYC (medians of 3 rounds, two runs), which does not repay them. On a
    2-core AVX-512 EPYC it ran 1.10-1.27x eager in fp32 (median rounds, three runs); whether
    that repays the compiles over a whole run is not measured, so fp32 stays eager on every
    CPU. On GPUs it is not measured yet, so 'auto' leaves it off there (``true`` turns it on)."""
    if requested == "auto":
        return device.type == "cpu" and precision == "bf16"
    return bool(requested)


@dataclass
class Prepared:
    specs: list[TaskSpec]
    tasks: list[PreparedTask]
    tokenizer: Any
    model: MultiTaskModel


def prepare_run(config: ExperimentConfig, run: RunDir, accelerator: Any, resume: bool, overwrite: bool,
                say: Any, quiet: bool) -> Prepared:
    """Check everything a user can get wrong before anything is written, the model loads or
    anything tokenises; then load, tokenise and build the model."""
    main = accelerator.is_main_process
    if not resume:
        run.check_new(overwrite)
    resolve_backbone(config.backbone.name)
    specs: list[TaskSpec] = load_tasks(config) if not resume else run.read_experiment()[1]
    config.adapters.check_groups([s.name for s in specs], config.source or "config")
    datas = load_all(specs, data_root(config), config.data.limit, config.data.storage, cache_dir(config))
    encoder, tokenizer = load_backbone(config.backbone)
    check_max_length(specs, encoder.config)
    if main and not resume:
        run.prepare_new()
    accelerator.wait_for_everyone()
    tasks = encode_all(datas, tokenizer, quiet=quiet, cache_dir=cache_dir(config))
    for task in tasks:
        for split, enc in task.encoded.items():
            if enc.truncated:
                say(f"note: {task.name}/{split}: {enc.truncated} of {len(enc)} examples longer than "
                    f"max_length={task.spec.max_length} were truncated.")
    if main and not resume:
        run.write_experiment(config, specs)
    return Prepared(specs, tasks, tokenizer, build_model(config, encoder, tokenizer, tasks))


def standard_callbacks(config: ExperimentConfig, run: RunDir, accelerator: Any, tasks: list[PreparedTask],
                       units: list[TrainUnit], steps: int, log: JsonlLog, trackers: bool, quiet: bool, say: Any,
                       pad_id: int) -> list[Callback]:
    """Throughput first (so evaluation falls outside its timed span), then the loss log,
    evaluation, early stopping, checkpoints and the progress bar."""
    tc = config.training
    callbacks: list[Callback] = [ThroughputMeter(), LossLogger([u.name for u in units], tc.log_every, log, trackers)]
    has_validation = any("validation" in t.encoded for t in tasks)
    for t in tasks:
        if has_validation and "validation" not in t.encoded:
            say(f"note: {t.name} has no validation split; model selection uses the other tasks.")
    if has_validation:
        unwrap = accelerator.unwrap_model

        def save_best(model: Any) -> None:
            if accelerator.is_main_process:
                unwrap(model).save_pretrained(run.best_dir)
            accelerator.wait_for_everyone()

        validation = Validation(
            evaluate=lambda model: evaluate_tasks(unwrap(model), tasks, "validation", tc.eval_batch_size, pad_id,
                                                  accelerator.device, accelerator, quiet=quiet),
            metrics={t.name: t.metric for t in tasks}, save_best=save_best)
        callbacks.append(Evaluator(validation, tc.eval_every or max(1, math.ceil(steps / tc.evaluations)), log,
                                   trackers, say))
        if tc.early_stopping is not None:
            callbacks.append(EarlyStopping(tc.early_stopping.patience, tc.early_stopping.min_delta, say))
    callbacks.append(Checkpointer(run.last_dir, tc.checkpoint_every, accelerator.is_main_process))
    callbacks.append(ProgressBar(disabled=quiet))
    return callbacks


def train(config: ExperimentConfig, run: RunDir, quiet: bool = False, resume: bool = False,
          overwrite: bool = False, callbacks: list[Callback] | None = None) -> TrainResult:
    """Train ``config`` into ``run``; ``callbacks`` run after the standard ones of the same
    ``Callback.order`` (a throughput meter's is lower: it runs before all others)."""
    from accelerate.utils import set_seed

    started = time.perf_counter()
    tc = config.training
    trackers = resolve_trackers(tc.log_with)
    accelerator, precision_note = make_accelerator(tc.mixed_precision, tc.gradient_accumulation_steps,
                                                   run.logs_dir, trackers)
    main = accelerator.is_main_process
    quiet = quiet or not main
    say = (lambda *a: None) if quiet else accelerator.print
    set_seed(tc.seed)
    if precision_note:
        say(precision_note)
    checkpoint = find_checkpoint(run.last_dir) if resume else None
    if resume and checkpoint is None:
        raise UserError(f"{run.path}: no checkpoint to resume from (expected {run.last_dir}).")

    prepared = prepare_run(config, run, accelerator, resume, overwrite, say, quiet)
    tasks, model = prepared.tasks, prepared.model
    if checkpoint is not None:
        model.load_state_dict(MultiTaskModel.from_pretrained(checkpoint / "model").state_dict())
    for line in parameter_summary(model):
        say(line)

    pad_id = prepared.tokenizer.pad_token_id or 0
    units = train_units(tasks, tc.shared_pass, {t.name: model.tasks[t.name].adapter for t in tasks},
                        config.source or "config")
    source = TaskBatches(tasks, units, tc, accelerator, pad_id)
    per_epoch = source.batches_per_epoch()
    steps = count_steps(config, list(per_epoch.values()))
    source.sampler = sampler = unit_sampler(config, tasks, units, per_epoch, steps)
    say("sampling (" + config.sampler.strategy + "): " + ", ".join(
        f"{u.name} p={p:.3f} (~{p * steps * tc.gradient_accumulation_steps / per_epoch[u.name]:.2f} epochs)"
        for u, p in zip(units, sampler.probabilities(0))))

    optimizer = build_optimizer(model, tc, config.adapters)
    scheduler = build_scheduler(optimizer, steps, tc.warmup_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    log = JsonlLog(run.metrics_path, main)
    state = EngineState()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, optimizer, scheduler, accelerator.process_index)
        source.restore(state.cursors)
        log.truncate_after(state.step)
        say(f"resumed from {checkpoint} at step {state.step}")
    if trackers:
        # On resume, TensorBoard drops what was logged after the checkpoint, as metrics.jsonl does
        # (truncate_after): those steps are about to be redone, and would otherwise plot twice.
        accelerator.init_trackers(config.name, config=flat_hyperparameters(config),
                                  init_kwargs={"tensorboard": {"purge_step": state.step + 1}} if state.step else {})

    installed = standard_callbacks(config, run, accelerator, tasks, units, steps, log, bool(trackers), quiet, say, pad_id)
    engine = Engine(accelerator, model, optimizer, scheduler, source,
                    TaskLoss(model, {t.name: t.spec.loss_weight for t in tasks}, accelerator.device,
                             compiled=resolve_compile(tc.compile, accelerator.device, accelerator.mixed_precision),
                             units=units),
                    NonFiniteGuard(tc.on_nonfinite_loss, log, lambda: checkpoint_note(run), "training.lr"),
                    installed + list(callbacks or []), steps, tc.max_grad_norm, state)
    try:
        engine.fit()
    except BaseException:
        if trackers:  # what was logged before the failure reaches the tracker's files
            accelerator.end_training()
        raise
    return finish_run(config, run, accelerator, engine, tasks, log, bool(trackers), say, quiet, pad_id, started)


def finish_run(config: ExperimentConfig, run: RunDir, accelerator: Any, engine: Engine,
               tasks: list[PreparedTask], log: JsonlLog, trackers: bool, say: Any, quiet: bool, pad_id: int,
               started: float) -> TrainResult:
    """The best model by validation becomes the run's model, scored on validation and test."""
    tc, state, device, main = config.training, engine.state, accelerator.device, accelerator.is_main_process
    final = accelerator.unwrap_model(engine.model)
    if state.best_step is not None and state.best_step != state.step:
        say(f"restoring the best checkpoint (step {state.best_step}, mean validation {100 * state.best_score:.2f})")
        final = MultiTaskModel.from_pretrained(run.best_dir, device=device)
    if main:
        final.save_pretrained(run.model_dir)
    accelerator.wait_for_everyone()

    result = TrainResult(run.path, state.step, state.best_step, state.best_score)
    main_metrics = {t.name: t.metric for t in tasks}
    for split in ("validation", "test"):
        reports = evaluate_tasks(final, tasks, split, tc.eval_batch_size, pad_id, device, accelerator, quiet=quiet)
        if reports and main:
            summary = write_reports(run.path, reports, split, main_metrics)
            say(f"\n{split} results:\n{summary}")
        if split == "test":
            result.test_reports = reports
        if trackers and reports:
            accelerator.log(scalar_metrics(f"final_{split}", reports), step=state.step)
    result.seconds = time.perf_counter() - started
    log.write({"event": "end", "steps": state.step, "best_step": state.best_step, "seconds": round(result.seconds, 1)})
    if trackers:
        accelerator.end_training()
    if main:
        run.mark_finished(result.seconds)
        _write_plots(run)
    return result


def _write_plots(run: RunDir) -> None:
    """Plots are a convenience: a failure here must not cost a finished run (nlp-mtl report retries)."""
    try:
        from ..reporting import write_plots

        write_plots(run.path)
    except Exception as err:  # noqa: BLE001  (any plotting problem, matplotlib's included)
        logging.getLogger(__name__).warning("could not write plots into %s: %s (nlp-mtl report %s retries)",
                                            run.plots_dir, err, run.path)
