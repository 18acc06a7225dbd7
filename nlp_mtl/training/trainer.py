"""The multi-task training loop, on accelerate.

One loop for CPU, one GPU or many processes: at each step the task sampler names a task (the
same on every process), that task's next length-grouped batch is padded and fed through the
shared encoder and the task's head. Validation runs a few times; the best checkpoint by the mean
of the tasks' main metrics is kept and becomes the final model, which is then scored on test.
A resumable checkpoint is written periodically; ``resume=True`` continues from it exactly.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..backbone import load_backbone, resolve_backbone
from ..config import AdapterConfig, ExperimentConfig, TaskSpec, cache_dir, data_root, load_tasks
from ..data.encoding import collate
from ..data.loading import has_text_pairs
from ..data.pipeline import PreparedTask, encode_all, load_all
from ..data.sampler import BatchCursor, LengthGroupedBatches, TaskSampler
from ..errors import UserError
from ..evaluation import evaluate_tasks, write_reports
from ..fileio import atomic_write
from ..kernels import attention_for_varying_shapes
from ..model import AdapterSetup, MultiTaskModel, TaskHeadInfo
from ..run_dir import RunDir
from ..task_types import TaskReport
from .checkpoint import TrainerState, checkpoint_note, find_checkpoint, gather_rng_states, load_checkpoint, save_checkpoint
from .optim import build_optimizer, build_scheduler
from .precision import resolve_precision
from .tracking import flat_hyperparameters, resolve_trackers, scalar_metrics


class NonFiniteLoss(UserError):
    """Training diverged; the message names the task and step."""


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
            pair=has_text_pairs(t.data.splits["train"]),
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
    return MultiTaskModel(encoder, infos, tokenizer, setup)


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


def count_steps(config: ExperimentConfig, train_sizes: list[int], global_batch: int) -> int:
    """'steps' when set; otherwise epochs x (batches in all tasks' train splits), in optimizer steps."""
    if config.training.steps:
        return config.training.steps
    batches = sum(math.ceil(n / global_batch) for n in train_sizes)
    return max(1, math.ceil(config.training.epochs * batches / config.training.gradient_accumulation_steps))


def check_max_length(specs: list[TaskSpec], encoder_config: Any) -> None:
    limit = getattr(encoder_config, "max_position_embeddings", None)
    if limit and encoder_config.model_type in ("roberta", "xlm-roberta", "camembert"):
        # Their position ids start after the padding index: 514 positions hold 512 tokens.
        limit -= (encoder_config.pad_token_id or 0) + 1
    for spec in specs:
        if limit and spec.max_length > limit:
            raise UserError(f"{spec.source}: max_length {spec.max_length} exceeds the backbone's "
                            f"{limit} positions (max_position_embeddings).")


def _score(reports: dict[str, TaskReport], tasks: list[PreparedTask]) -> float:
    metrics = {t.name: t.metric for t in tasks}
    return float(np.mean([r.metrics[metrics[name]] for name, r in reports.items()]))


class JsonlLog:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume, drop what was logged after the checkpoint: it is about to be redone."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line a kill cut in half
            if record.get("event") != "end" and record.get("step", 0) <= step:
                kept.append(line)
        atomic_write(self.path, "".join(line + "\n" for line in kept))


def _forget_earlier_accelerator() -> None:
    """train() may run several times in one process (the Python API, benchmarks), each with its
    own mixed precision; accelerate keeps one process-wide state and refuses a second precision.
    A single process holds nothing else in that state, so it starts anew. Under a multi-process
    launch the state is the launch's and is left alone."""
    from accelerate.state import AcceleratorState, PartialState

    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state()


def train(config: ExperimentConfig, run: RunDir, quiet: bool = False, resume: bool = False,
          overwrite: bool = False) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    started = time.perf_counter()
    tc = config.training
    trackers = resolve_trackers(tc.log_with)
    precision, precision_note = resolve_precision(tc.mixed_precision, torch.cuda.is_available())
    _forget_earlier_accelerator()
    accelerator = Accelerator(
        log_with=trackers or None,
        project_dir=str(run.path / "logs"),
        # Without a GPU, accelerate only forms a gloo process group (torchrun, accelerate launch)
        # when told it runs on CPU; otherwise each process would train alone.
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        # Each step trains one task, so the other heads get no gradient that step.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    main = accelerator.is_main_process
    quiet = quiet or not main
    say = (lambda *a: None) if quiet else accelerator.print
    set_seed(tc.seed)
    if precision_note:
        say(precision_note)

    checkpoint = find_checkpoint(run.last_dir) if resume else None
    if resume and checkpoint is None:
        raise UserError(f"{run.path}: no checkpoint to resume from (expected {run.last_dir}).")

    # Everything a user can get wrong is checked before anything is written, the model loads
    # or anything tokenises.
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

    model = build_model(config, encoder, tokenizer, tasks)
    if checkpoint is not None:
        model.load_state_dict(MultiTaskModel.from_pretrained(checkpoint / "model").state_dict())
    for line in parameter_summary(model):
        say(line)

    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = tc.batch_size * world
    steps = count_steps(config, [len(t.encoded["train"]) for t in tasks], global_batch)
    micro_steps = steps * tc.gradient_accumulation_steps
    sampler = TaskSampler([t.name for t in tasks], [len(t.encoded["train"]) for t in tasks],
                          [t.spec.sampling_weight for t in tasks], config.sampler, micro_steps, tc.seed)
    batches = {
        t.name: LengthGroupedBatches(t.encoded["train"].lengths, global_batch, seed=tc.seed + 1000 * i,
                                     group_by_length=tc.group_by_length, num_shards=world)
        for i, t in enumerate(tasks)
    }
    by_name = {t.name: t for t in tasks}
    say("sampling (" + config.sampler.strategy + "): " + ", ".join(
        f"{t.name} p={p:.3f} (~{p * micro_steps * global_batch / len(t.encoded['train']):.2f} epochs)"
        for t, p in zip(tasks, sampler.probabilities(0))))

    optimizer = build_optimizer(model, tc, config.adapters)
    scheduler = build_scheduler(optimizer, steps, tc.warmup_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    pad_id = tokenizer.pad_token_id or 0
    log = JsonlLog(run.metrics_path, main)

    state = TrainerState()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, optimizer, scheduler, rank)
        for name, cursor in state.cursors.items():
            batches[name].cursor = BatchCursor(*cursor)
        log.truncate_after(state.step)
        say(f"resumed from {checkpoint} at step {state.step}")
    if trackers:
        # On resume, TensorBoard drops what was logged after the checkpoint, as metrics.jsonl does
        # (truncate_after): those steps are about to be redone, and would otherwise plot twice.
        accelerator.init_trackers(config.name, config=flat_hyperparameters(config),
                                  init_kwargs={"tensorboard": {"purge_step": state.step + 1}} if state.step else {})
    running = {n: torch.tensor(state.running.get(n, [0.0, 0])[0], device=device) for n in by_name}
    counts = {n: int(state.running.get(n, [0.0, 0])[1]) for n in by_name}

    def snapshot(step: int) -> None:
        state.step = step
        state.cursors = {n: [b.cursor.pass_index, b.cursor.position] for n, b in batches.items()}
        state.running = {n: [float(running[n]), counts[n]] for n in by_name}
        rng_states = gather_rng_states(accelerator)
        if main:
            save_checkpoint(run.last_dir, accelerator.unwrap_model(model), optimizer, scheduler, state, rng_states)
        accelerator.wait_for_everyone()

    # Intervals count optimizer steps, so evaluations and snapshots land on update boundaries.
    accum = tc.gradient_accumulation_steps
    eval_every = (tc.eval_every or max(1, math.ceil(steps / tc.evaluations))) * accum
    has_validation = any("validation" in t.encoded for t in tasks)
    for t in tasks:
        if has_validation and "validation" not in t.encoded:
            say(f"note: {t.name} has no validation split; model selection uses the other tasks.")
    shown: dict[str, float] = {}
    bar = tqdm(total=micro_steps, initial=state.step, desc="training", disable=quiet, dynamic_ncols=True)
    # Throughput per logging interval, evaluation time left out: what scripts/bench.py reads.
    interval_start, interval_examples, interval_tokens, paused = time.perf_counter(), 0, 0, 0.0
    model.train()
    for step in range(state.step, micro_steps):
        name = sampler.task_at(step)
        task = by_name[name]
        indices = batches[name].next_shard(rank)
        interval_examples += len(indices)
        interval_tokens += int(task.encoded["train"].lengths[indices].sum())
        batch = {k: v.to(device, non_blocking=True) for k, v in collate(task.encoded["train"], indices, pad_id).items()}
        with accelerator.accumulate(model):
            with attention_for_varying_shapes(device):
                out = model(name, **batch)
            loss = out["loss"]
            # Decided jointly, so that no process waits in an all-reduce the others skip. On CPU
            # the check is free; it keeps one bad batch from poisoning the weights.
            nonfinite = ~torch.isfinite(loss.detach())
            if world > 1:
                nonfinite = accelerator.reduce(nonfinite.float(), reduction="sum") > 0
            if nonfinite:
                if tc.on_nonfinite_loss == "stop":
                    raise NonFiniteLoss(
                        f"training stopped: non-finite loss ({float(loss.detach())}) on task '{name}' at step "
                        f"{step + 1}; {checkpoint_note(run)}. Lower training.lr "
                        "(or set training.on_nonfinite_loss: skip) and train again.")
                log.write({"event": "skipped", "step": step + 1, "task": name, "reason": "non-finite loss"})
                optimizer.zero_grad(set_to_none=True)
            else:
                accelerator.backward(loss * task.spec.loss_weight)
                if accelerator.sync_gradients and tc.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                optimizer.step()  # a no-op on accumulation micro-steps (accelerate skips it)
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                # Accumulated on the device; read back only when logging: no host sync per step.
                running[name] += loss.detach()
                counts[name] += 1
        bar.update(1)
        done = step + 1
        if done % (tc.log_every * accum) == 0 or done == micro_steps:
            # Every process saw a different shard of the same batches: log their mean.
            totals = accelerator.reduce(torch.stack([running[n] for n in by_name]), reduction="mean").tolist()
            losses = {n: totals[i] / counts[n] for i, n in enumerate(by_name) if counts[n]}
            shown.update(losses)
            bar.set_postfix({n: f"{v:.3f}" for n, v in shown.items()})
            seconds = time.perf_counter() - interval_start - paused
            if world > 1:  # length-sorted shards differ in length: count every process's tokens
                interval_tokens = int(accelerator.reduce(torch.tensor(float(interval_tokens), device=device),
                                                         reduction="sum").item())
            log.write({"event": "train", "step": done, "lr": scheduler.get_last_lr()[0], "loss": losses,
                       "batches": {n: c for n, c in counts.items() if c}, "seconds": round(seconds, 4),
                       # this process's share; every process trains on as many
                       "examples_per_s": round(interval_examples * world / seconds, 2),
                       "tokens_per_s": round(interval_tokens / seconds, 1)})
            interval_examples = interval_tokens = 0
            if trackers:
                accelerator.log({"lr": scheduler.get_last_lr()[0], **{f"loss/{n}": v for n, v in losses.items()}},
                                step=done)
            running = {n: torch.zeros((), device=device) for n in by_name}
            counts = dict.fromkeys(by_name, 0)
            interval_start, paused = time.perf_counter(), 0.0
        pause_start = time.perf_counter()
        evaluated = False
        if has_validation and (done % eval_every == 0 or done == micro_steps):
            evaluated = True
            reports = evaluate_tasks(accelerator.unwrap_model(model), tasks, "validation", tc.eval_batch_size,
                                     pad_id, device, accelerator, quiet=quiet)
            score = _score(reports, tasks)
            improved = state.best_score is None or score > state.best_score
            log.write({"event": "validation", "step": done, "score": score,
                       "metrics": {n: r.metrics for n, r in reports.items()}})
            if trackers:
                accelerator.log({"validation/mean_main_metric": score, **scalar_metrics("validation", reports)},
                                step=done)
            say(f"\nstep {done}: validation " + ", ".join(
                f"{n} {t.metric}={100 * reports[n].metrics[t.metric]:.2f}" for n, t in by_name.items()) +
                f" | mean {100 * score:.2f}" + (" (best)" if improved else ""))
            if improved:
                state.best_score, state.best_step = score, done
                if main:
                    accelerator.unwrap_model(model).save_pretrained(run.best_dir)
                accelerator.wait_for_everyone()
        # Only at optimizer-step boundaries: a snapshot inside an accumulation window would lose
        # the gradients accumulated so far.
        at_boundary = done % accum == 0
        periodic = tc.checkpoint_every and (done // accum) % tc.checkpoint_every == 0
        # The last step too: a failure while saving the final model (a full disk) leaves a run that
        # resumes straight to the final save instead of one with no checkpoint at all.
        if at_boundary and (evaluated or periodic or done == micro_steps):
            snapshot(done)
        paused += time.perf_counter() - pause_start  # evaluation and snapshots are not training time
    bar.close()

    final = accelerator.unwrap_model(model)
    if state.best_step is not None and state.best_step != micro_steps:
        say(f"restoring the best checkpoint (step {state.best_step}, mean validation {100 * state.best_score:.2f})")
        final = MultiTaskModel.from_pretrained(run.best_dir, device=device)
    if main:
        final.save_pretrained(run.model_dir)
    accelerator.wait_for_everyone()

    result = TrainResult(run.path, micro_steps, state.best_step, state.best_score)
    main_metrics = {t.name: t.metric for t in tasks}
    for split in ("validation", "test"):
        reports = evaluate_tasks(final, tasks, split, tc.eval_batch_size, pad_id, device, accelerator, quiet=quiet)
        if reports and main:
            summary = write_reports(run.path, reports, split, main_metrics)
            say(f"\n{split} results:\n{summary}")
        if split == "test":
            result.test_reports = reports
        if trackers and reports:
            accelerator.log(scalar_metrics(f"final_{split}", reports), step=micro_steps)
    result.seconds = time.perf_counter() - started
    log.write({"event": "end", "steps": micro_steps, "best_step": state.best_step, "seconds": round(result.seconds, 1)})
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
                                            run.path / "plots", err, run.path)
