"""The multi-task training loop, on accelerate.

One loop for CPU, one GPU or many processes: at each step the task sampler names a task (the
same on every process), that task's next length-grouped batch is padded and fed through the
shared encoder and the task's head. Validation runs a few times; the best checkpoint by the mean
of the tasks' main metrics is kept and becomes the final model, which is then scored on test.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..backbone import load_backbone
from ..config import ExperimentConfig, TaskSpec, data_root, load_tasks
from ..data.encoding import collate
from ..data.pipeline import PreparedTask, encode_all, load_all
from ..data.sampler import LengthGroupedBatches, TaskSampler
from ..evaluation import evaluate_tasks, write_reports
from ..model import MultiTaskModel, TaskHeadInfo
from ..run_dir import RunDir
from ..task_types import TaskReport
from .optim import build_optimizer, build_scheduler


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_step: int | None
    best_score: float | None
    test_reports: dict[str, TaskReport] = field(default_factory=dict)
    seconds: float = 0.0


def head_infos(tasks: list[PreparedTask]) -> list[TaskHeadInfo]:
    return [
        TaskHeadInfo(
            name=t.name,
            task_type=t.spec.type,
            head=t.spec.head.get("type", t.task_type.head),
            labels=t.labels,
            head_options=dict(t.spec.head),
            max_length=t.spec.max_length,
            metric=t.metric,
            pair=any("text_pair" in row for row in t.data.splits["train"][:100]),
        )
        for t in tasks
    ]


def count_steps(config: ExperimentConfig, train_sizes: list[int], global_batch: int) -> int:
    """'steps' when set; otherwise epochs x (batches in all tasks' train splits), in optimizer steps."""
    if config.training.steps:
        return config.training.steps
    batches = sum(math.ceil(n / global_batch) for n in train_sizes)
    return max(1, math.ceil(config.training.epochs * batches / config.training.gradient_accumulation_steps))


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


def train(config: ExperimentConfig, run: RunDir, quiet: bool = False) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    started = time.perf_counter()
    tc = config.training
    accelerator = Accelerator(
        mixed_precision=tc.mixed_precision,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        # Each step trains one task, so the other heads get no gradient that step.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    main = accelerator.is_main_process
    quiet = quiet or not main
    say = (lambda *a: None) if quiet else accelerator.print
    set_seed(tc.seed)

    # Everything a user can get wrong is checked before the model loads or anything tokenises.
    specs: list[TaskSpec] = load_tasks(config)
    datas = load_all(specs, data_root(config), config.data.limit)
    encoder, tokenizer = load_backbone(config.backbone)
    tasks = encode_all(datas, tokenizer, quiet=quiet)
    for task in tasks:
        for split, enc in task.encoded.items():
            if enc.truncated:
                say(f"note: {task.name}/{split}: {enc.truncated} of {len(enc)} examples longer than "
                    f"max_length={task.spec.max_length} were truncated.")
    if main:
        run.write_experiment(config, specs)

    model = MultiTaskModel(encoder, head_infos(tasks), tokenizer)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    say(f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%)")

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
    probs = sampler.probabilities(0)
    say("sampling (" + config.sampler.strategy + "): " + ", ".join(
        f"{t.name} p={p:.3f} (~{p * micro_steps * global_batch / len(t.encoded['train']):.2f} epochs)"
        for t, p in zip(tasks, probs)))

    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, steps, tc.warmup_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    pad_id = tokenizer.pad_token_id or 0

    eval_every = tc.eval_every or max(1, math.ceil(micro_steps / tc.evaluations))
    has_validation = all("validation" in t.encoded for t in tasks)
    log = JsonlLog(run.metrics_path, main)
    best_score, best_step = None, None

    running = {t.name: torch.zeros((), device=device) for t in tasks}
    counts = dict.fromkeys(by_name, 0)
    shown: dict[str, float] = {}
    bar = tqdm(total=micro_steps, desc="training", disable=quiet, dynamic_ncols=True)
    model.train()
    for step in range(micro_steps):
        name = sampler.task_at(step)
        task = by_name[name]
        indices = batches[name].next_shard(rank)
        batch = {k: v.to(device, non_blocking=True) for k, v in collate(task.encoded["train"], indices, pad_id).items()}
        with accelerator.accumulate(model):
            out = model(name, **batch)
            accelerator.backward(out["loss"] * task.spec.loss_weight)
            if accelerator.sync_gradients and tc.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            optimizer.step()  # a no-op on accumulation micro-steps (accelerate skips it)
            if accelerator.sync_gradients:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        # Accumulated on the device; read back only when logging, so no host sync per step.
        running[name] += out["loss"].detach()
        counts[name] += 1
        bar.update(1)
        done = step + 1
        if done % tc.log_every == 0 or done == micro_steps:
            losses = {n: float(running[n]) / c for n, c in counts.items() if c}
            shown.update(losses)
            bar.set_postfix({n: f"{v:.3f}" for n, v in shown.items()})
            log.write({"event": "train", "step": done, "lr": scheduler.get_last_lr()[0], "loss": losses,
                       "batches": {n: c for n, c in counts.items() if c}})
            running = {n: torch.zeros((), device=device) for n in by_name}
            counts = dict.fromkeys(by_name, 0)
        if has_validation and (done % eval_every == 0 or done == micro_steps):
            reports = evaluate_tasks(accelerator.unwrap_model(model), tasks, "validation", tc.eval_batch_size, pad_id, device, accelerator)
            score = _score(reports, tasks)
            log.write({"event": "validation", "step": done, "score": score,
                       "metrics": {n: r.metrics for n, r in reports.items()}})
            say(f"\nstep {done}: validation " + ", ".join(
                f"{n} {t.metric}={100 * reports[n].metrics[t.metric]:.2f}" for n, t in by_name.items()) +
                f" | mean {100 * score:.2f}" + (" (best)" if best_score is None or score > best_score else ""))
            if best_score is None or score > best_score:
                best_score, best_step = score, done
                if main:
                    accelerator.unwrap_model(model).save_pretrained(run.best_dir)
                accelerator.wait_for_everyone()
    bar.close()

    final = accelerator.unwrap_model(model)
    if best_step is not None and best_step != micro_steps:
        say(f"restoring the best checkpoint (step {best_step}, mean validation {100 * best_score:.2f})")
        final = MultiTaskModel.from_pretrained(run.best_dir, device=device)
    if main:
        final.save_pretrained(run.model_dir)
    accelerator.wait_for_everyone()

    result = TrainResult(run.path, micro_steps, best_step, best_score)
    main_metrics = {t.name: t.metric for t in tasks}
    for split in ("validation", "test"):
        reports = evaluate_tasks(final, tasks, split, tc.eval_batch_size, pad_id, device, accelerator, quiet)
        if reports and main:
            summary = write_reports(run.path, reports, split, main_metrics)
            say(f"\n{split} results:\n{summary}")
        if split == "test":
            result.test_reports = reports
    result.seconds = time.perf_counter() - started
    log.write({"event": "end", "steps": micro_steps, "best_step": best_step, "seconds": round(result.seconds, 1)})
    if main:
        run.mark_finished(result.seconds)
    return result
