"""What the engine does with a non-finite loss (training.on_nonfinite_loss)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .callbacks import JsonlLog
from .checkpoint import find_checkpoint
from .engine import Engine


class NonFiniteLoss(UserError):
    """Training diverged; the message names the task and step."""


class NonFiniteGuard:
    """training.on_nonfinite_loss: 'stop' raises NonFiniteLoss naming task and step; 'skip'
    drops the batch and logs it. Decided jointly, so that no process waits in an all-reduce the
    others skip; on CPU the check is free, and it keeps one bad batch from poisoning the weights."""

    def __init__(self, policy: str, log: JsonlLog, checkpoints: Path, rate_setting: str) -> None:
        # rate_setting: the learning rate to suggest lowering (training.lr, meta.outer_lr).
        self.policy, self.log, self.checkpoints, self.rate_setting = policy, log, checkpoints, rate_setting

    def rejects(self, engine: Engine, task: str, loss: torch.Tensor) -> bool:
        nonfinite = ~torch.isfinite(loss.detach())
        if engine.accelerator.num_processes > 1:
            nonfinite = engine.accelerator.reduce(nonfinite.float(), reduction="sum") > 0
        if not nonfinite:
            return False
        step = engine.state.step + 1
        if self.policy == "stop":
            kept = (f"the last good checkpoint in {self.checkpoints} is intact" if find_checkpoint(self.checkpoints)
                    else "no checkpoint had been written yet")
            raise NonFiniteLoss(f"training stopped: non-finite loss ({float(loss.detach())}) on task '{task}' at "
                                f"step {step}; {kept}. Lower {self.rate_setting} (or set training.on_nonfinite_loss: "
                                "skip) and train again.")
        self.log.write({"event": "skipped", "step": step, "task": task, "reason": "non-finite loss"})
        return True
