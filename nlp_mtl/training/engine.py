"""The training engine: one step loop, everything else a callback.

The loop knows four things: where the next batch comes from (a ``BatchSource``), how a batch
becomes a loss (a ``LossFn``), what to do with a non-finite loss (a ``LossGuard``), and the
optimizer step under accelerate (accumulation, clipping, scheduler). Logging, throughput,
evaluation and best-model keeping, early stopping, checkpoints, trackers and the progress bar
are ``Callback``s, so a caller (the benchmark, meta-training, a test) adds or swaps behaviour
without touching the loop.

Units: ``EngineState.step`` and every ``step`` a callback sees count *optimizer* steps; a step
is ``gradient_accumulation_steps`` micro-batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .clipping import GradientClipper


@dataclass
class EngineState:
    """Everything about the loop's progress that a resumed run needs; saved in checkpoints."""

    step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    # Evaluations in a row that did not beat the best by early stopping's min_delta.
    stale_evaluations: int = 0
    last_evaluation: int | None = None
    cursors: dict[str, list[int]] = field(default_factory=dict)
    running: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Batch:
    """One micro-step's input: the task it trains, what the loss function reads (a padded batch
    on the device; an episode for meta-training) and its size, for throughput."""

    task: str
    inputs: Any
    examples: int
    tokens: int


@dataclass
class MicroBatch:
    """What one micro-step trained on, for the callbacks: task, loss (detached), sizes."""

    task: str
    loss: torch.Tensor
    examples: int
    tokens: int
    skipped: bool = False


class BatchSource(Protocol):
    def batch_at(self, micro_step: int) -> Batch:
        """The batch of micro-step ``micro_step`` (counted from the start of training)."""
        ...

    def cursors(self) -> dict[str, list[int]]:
        """Where the source stands, for a checkpoint ({} for a source that is a function of the step)."""
        ...


class LossFn(Protocol):
    def __call__(self, batch: Batch) -> tuple[torch.Tensor, float]:
        """(loss, weight): ``loss * weight`` is what backward runs on; ``loss`` is what is logged."""
        ...


class LossGuard(Protocol):
    def rejects(self, engine: Engine, task: str, loss: torch.Tensor) -> bool:
        """True: skip this batch's update. May raise to stop training."""
        ...


class Callback:
    """Hooks around the loop; every one is optional. ``step`` counts optimizer steps.
    Callbacks run in ``order`` (lower first; the order given among equals)."""

    order = 0

    def on_train_start(self, engine: Engine) -> None: ...

    def on_step_begin(self, engine: Engine) -> None: ...

    def on_step_end(self, engine: Engine, micro_batches: list[MicroBatch]) -> None: ...

    def on_train_end(self, engine: Engine) -> None: ...


class Engine:
    def __init__(self, accelerator: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, source: BatchSource, loss_fn: LossFn, guard: LossGuard,
                 callbacks: Sequence[Callback], total_steps: int, max_grad_norm: float = 0.0,
                 state: EngineState | None = None) -> None:
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.source, self.loss_fn, self.guard = source, loss_fn, guard
        self.callbacks = sorted(callbacks, key=lambda c: c.order)
        self.total_steps = total_steps
        self.clipper = GradientClipper(accelerator, model, optimizer, max_grad_norm)
        self.accumulation = accelerator.gradient_accumulation_steps
        self.state = state or EngineState()
        self.should_stop = False  # set by a callback (early stopping) to end after this step

    def fit(self) -> EngineState:
        self._fire("on_train_start")
        self.model.train()
        while self.state.step < self.total_steps and not self.should_stop:
            self._fire("on_step_begin")
            first = self.state.step * self.accumulation
            micro_batches = [self._micro_step(first + i) for i in range(self.accumulation)]
            self.state.step += 1
            self._fire("on_step_end", micro_batches)
        self._fire("on_train_end")
        return self.state

    def _micro_step(self, micro_step: int) -> MicroBatch:
        batch = self.source.batch_at(micro_step)
        task, examples, tokens = batch.task, batch.examples, batch.tokens
        with self.accelerator.accumulate(self.model):
            loss, weight = self.loss_fn(batch)
            if self.guard.rejects(self, task, loss):
                # The bad loss never reaches backward (on a window's last micro-step the window's
                # gradients are dropped with it: accelerate zeroes them only there).
                self.optimizer.zero_grad(set_to_none=True)
                return MicroBatch(task, loss.detach(), examples, tokens, skipped=True)
            self.accelerator.backward(loss * weight)
            if self.accelerator.sync_gradients:
                self.clipper.clip()
            self.optimizer.step()  # a no-op on accumulation micro-steps (accelerate skips it)
            if self.accelerator.sync_gradients:
                self.clipper.release()
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return MicroBatch(task, loss.detach(), examples, tokens)

    def _fire(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def callback(self, kind: type) -> Any:
        """The first installed callback of class ``kind`` (or None): how callbacks find each other."""
        return next((c for c in self.callbacks if isinstance(c, kind)), None)
