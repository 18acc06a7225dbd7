"""What the engine does with a non-finite loss (training.on_nonfinite_loss)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import UserError
from .callbacks import JsonlLog
from .engine import Engine


class NonFiniteLoss(UserError):
    """Training diverged; the message names the task and step."""


class NonFiniteGuard:
    """training.on_nonfinite_loss: 'stop' raises NonFiniteLoss naming task and step; 'skip'
    drops the batch and logs it. Decided jointly, so that no process waits in an all-reduce the
    others skip; on CPU the check is free, and it keeps one bad batch from poisoning the weights."""

    def __init__(self, policy: str, log: JsonlLog, checkpoint_note: Callable[[], str], rate_setting: str) -> None:
        # checkpoint_note: what is left to resume from, said when stopping; rate_setting: the
        # learning rate to suggest lowering (training.lr, meta.outer_lr).
        self.policy, self.log, self.checkpoint_note, self.rate_setting = policy, log, checkpoint_note, rate_setting

    def rejects(self, engine: Engine, task: str, loss: torch.Tensor) -> bool:
        nonfinite = ~torch.isfinite(loss.detach())
        if engine.accelerator.num_processes > 1:
            nonfinite = engine.accelerator.reduce(nonfinite.float(), reduction="sum") > 0
        if not nonfinite:
            return False
        step = engine.state.step + 1
        if self.policy == "stop":
            raise NonFiniteLoss(f"training stopped: non-finite loss ({float(loss.detach())}) on task '{task}' at "
                                f"step {step}; {self.checkpoint_note()}. Lower {self.rate_setting} (or set training.on_nonfinite_loss: "
                                "skip) and train again.")
        self.log.write({"event": "skipped", "step": step, "task": task, "reason": "non-finite loss"})
        return True
