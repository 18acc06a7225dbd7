"""The engine's standard callbacks: progress, throughput, the metrics log, evaluation with
best-model keeping, early stopping and checkpoints. Each does one job; ``train`` installs them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..fileio import atomic_write
from ..task_types import TaskReport
from .checkpoint import gather_rng_states, save_checkpoint
from .engine import Callback, Engine, MicroBatch
from .tracking import scalar_metrics

Say = Callable[[str], None]


class JsonlLog:
    """``metrics.jsonl``: one JSON record per event, appended by the main process only."""

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


class RecordList(JsonlLog):
    """A metrics log kept in memory (a few-shot seed's loss curve goes into its summary)."""

    def __init__(self) -> None:
        super().__init__(Path("."), enabled=True)
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)


class ProgressBar(Callback):
    def __init__(self, disabled: bool, desc: str = "training") -> None:
        self.disabled, self.desc = disabled, desc
        self.postfix: dict[str, str] = {}

    def on_train_start(self, engine: Engine) -> None:
        self.bar = tqdm(total=engine.total_steps, initial=engine.state.step, desc=self.desc,
                        disable=self.disabled, dynamic_ncols=True)

    def on_step_end(self, engine: Engine, micro_batches: list[MicroBatch]) -> None:
        self.bar.update(1)

    def show(self, values: dict[str, float]) -> None:
        self.postfix.update({k: f"{v:.3f}" for k, v in values.items()})
        self.bar.set_postfix(self.postfix)

    def on_train_end(self, engine: Engine) -> None:
        self.bar.close()


class ThroughputMeter(Callback):
    """Examples and real tokens per second of training steps alone: evaluation and checkpoints
    (later callbacks) fall outside the timed span. ``take()`` reads and restarts the interval."""

    order = -1  # before every other callback, whoever installs it

    def __init__(self) -> None:
        self.seconds, self.examples, self.tokens = 0.0, 0, 0
        self._started = 0.0

    def on_step_begin(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def on_step_end(self, engine: Engine, micro_batches: list[MicroBatch]) -> None:
        self.seconds += time.perf_counter() - self._started
        self.examples += sum(m.examples for m in micro_batches)
        self.tokens += sum(m.tokens for m in micro_batches)

    def take(self) -> tuple[float, int, int]:
        reading = (self.seconds, self.examples, self.tokens)
        self.seconds, self.examples, self.tokens = 0.0, 0, 0
        return reading


class LossLogger(Callback):
    """Per-task mean training loss every ``every`` steps (and at the end), to ``metrics.jsonl``,
    the trackers and the progress bar. Losses add up on the device and are read back only when
    logging: no host sync per step."""

    def __init__(self, tasks: list[str], every: int, log: JsonlLog, trackers: bool) -> None:
        self.tasks, self.every, self.log, self.trackers = tasks, every, log, trackers

    def on_train_start(self, engine: Engine) -> None:
        device = engine.accelerator.device
        saved = engine.state.running
        self.running = {n: torch.tensor(saved.get(n, [0.0, 0])[0], device=device) for n in self.tasks}
        self.counts = {n: int(saved.get(n, [0.0, 0])[1]) for n in self.tasks}

    def on_step_end(self, engine: Engine, micro_batches: list[MicroBatch]) -> None:
        for m in micro_batches:
            if not m.skipped:
                self.running[m.task] += m.loss
                self.counts[m.task] += 1
        if engine.state.step % self.every == 0 or engine.state.step == engine.total_steps:
            self.flush(engine)

    def on_train_end(self, engine: Engine) -> None:
        if any(self.counts.values()):  # stopped early between two log points
            self.flush(engine)

    def save_into(self, engine: Engine) -> None:
        engine.state.running = {n: [float(self.running[n]), self.counts[n]] for n in self.tasks}

    def flush(self, engine: Engine) -> None:
        accelerator, step = engine.accelerator, engine.state.step
        # Every process saw a different shard of the same batches: log their mean.
        totals = accelerator.reduce(torch.stack([self.running[n] for n in self.tasks]), reduction="mean").tolist()
        losses = {n: totals[i] / self.counts[n] for i, n in enumerate(self.tasks) if self.counts[n]}
        lr = engine.scheduler.get_last_lr()[0]
        record = {"event": "train", "step": step, "lr": lr, "loss": losses,
                  "batches": {n: c for n, c in self.counts.items() if c}}
        meter = engine.callback(ThroughputMeter)
        if meter is not None:
            record.update(_throughput(accelerator, *meter.take()))
        self.log.write(record)
        bar = engine.callback(ProgressBar)
        if bar is not None:
            bar.show(losses)
        if self.trackers:
            accelerator.log({"lr": lr, **{f"loss/{n}": v for n, v in losses.items()}}, step=step)
        self.running = {n: torch.zeros((), device=accelerator.device) for n in self.tasks}
        self.counts = dict.fromkeys(self.tasks, 0)


def _throughput(accelerator: Any, seconds: float, examples: int, tokens: int) -> dict[str, float]:
    world = accelerator.num_processes
    if world > 1:  # length-sorted shards differ in length: count every process's tokens
        tokens = int(accelerator.reduce(torch.tensor(float(tokens), device=accelerator.device), reduction="sum").item())
    seconds = max(seconds, 1e-9)
    # examples: this process's share; every process trains on as many
    return {"seconds": round(seconds, 4), "examples_per_s": round(examples * world / seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1)}


@dataclass
class Validation:
    """How a validation pass is run and scored; built by ``train``."""

    evaluate: Callable[[Any], dict[str, TaskReport]]   # the engine's model -> reports
    metrics: dict[str, str]                            # task -> its main metric
    save_best: Callable[[Any], None]                   # writes the engine's model as the best one

    def score(self, reports: dict[str, TaskReport]) -> float:
        return float(np.mean([r.metrics[self.metrics[name]] for name, r in reports.items()]))


class Evaluator(Callback):
    """Validation every ``every`` steps and after the last one; keeps the best model by the mean
    of the tasks' main metrics. ``gain`` is how much the last evaluation beat the best before it."""

    def __init__(self, validation: Validation, every: int, log: JsonlLog, trackers: bool, say: Say) -> None:
        self.validation, self.every, self.log, self.trackers, self.say = validation, every, log, trackers, say
        self.gain = float("inf")

    def on_step_end(self, engine: Engine, micro_batches: list[MicroBatch]) -> None:
        if engine.state.step % self.every == 0:
            self.evaluate(engine)

    def on_train_end(self, engine: Engine) -> None:
        if engine.state.last_evaluation != engine.state.step:
            self.evaluate(engine)

    def evaluate(self, engine: Engine) -> None:
        state, step = engine.state, engine.state.step
        reports = self.validation.evaluate(engine.model)
        score = self.validation.score(reports)
        self.gain = float("inf") if state.best_score is None else score - state.best_score
        improved = self.gain > 0
        state.last_evaluation = step
        self.log.write({"event": "validation", "step": step, "score": score,
                        "metrics": {n: r.metrics for n, r in reports.items()}})
        if self.trackers:
            engine.accelerator.log({"validation/mean_main_metric": score, **scalar_metrics("validation", reports)},
                                   step=step)
        self.say(f"\nstep {step}: validation " + ", ".join(
            f"{n} {m}={100 * reports[n].metrics[m]:.2f}" for n, m in self.validation.metrics.items() if n in reports) +
            f" | mean {100 * score:.2f}" + (" (best)" if improved else ""))
        if improved:
            state.best_score, state.best_step = score, step
            self.validation.save_best(engine.model)


class EarlyStopping(Callback):
    """Ends training once ``patience`` evaluations in a row have not beaten the best so far by
    more than ``min_delta``; the step budget stays the cap. Counted in the engine state, so a
    resumed run stops where the uninterrupted one would."""

    def __init__(self, patience: int, min_delta: float, say: Say) -> None:
        self.patience, self.min_delta, self.say = patience, min_delta, say

    def on_train_start(self, engine: Engine) -> None:
        self._seen = engine.state.last_evaluation
        engine.should_stop = engine.state.stale_evaluations >= self.patience

    def on_step_end(self, engine: Engine, micro_batches: list[MicroBatch]) -> None:
        state = engine.state
        if state.last_evaluation is None or state.last_evaluation == self._seen:
            return
        self._seen = state.last_evaluation
        evaluator = engine.callback(Evaluator)
        state.stale_evaluations = 0 if evaluator.gain > self.min_delta else state.stale_evaluations + 1
        if state.stale_evaluations >= self.patience and state.step < engine.total_steps:
            engine.should_stop = True
            self.say(f"early stopping at step {state.step}: {state.stale_evaluations} evaluations without a gain "
                     f"over {self.min_delta} (best: step {state.best_step})")


class Checkpointer(Callback):
    """A resumable checkpoint at every validation, every ``every`` steps (0: only at
    validations) and after the last step: a failure while saving the final model (a full disk)
    then leaves a run that resumes straight to that save."""

    def __init__(self, directory: Path, every: int, is_main: bool) -> None:
        self.directory, self.every, self.is_main = directory, every, is_main

    def on_step_end(self, engine: Engine, micro_batches: list[MicroBatch]) -> None:
        state = engine.state
        periodic = self.every and state.step % self.every == 0
        last = state.step == engine.total_steps or engine.should_stop
        if periodic or last or state.last_evaluation == state.step:
            self.save(engine)

    def save(self, engine: Engine) -> None:
        accelerator = engine.accelerator
        engine.state.cursors = engine.source.cursors()
        for callback in engine.callbacks:  # callbacks with state of their own put it in the engine state
            if hasattr(callback, "save_into"):
                callback.save_into(engine)
        rng_states = gather_rng_states(accelerator)
        if self.is_main:
            save_checkpoint(self.directory, accelerator.unwrap_model(engine.model), engine.optimizer,
                            engine.scheduler, engine.state, rng_states)
        accelerator.wait_for_everyone()
