"""The interface every task type implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..data.encoding import EncodedSplit
from ..config import TaskSpec
from ..data.readers import Roles, Row


@dataclass
class TaskReport:
    task: str
    split: str
    metrics: dict[str, float]
    text: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "split": self.split, "metrics": self.metrics, "report": self.details}


class TaskType(Protocol):
    roles: Roles
    head: str

    def metric_names(self, spec: TaskSpec) -> tuple[str, ...]:
        """Metrics a spec may name as its model-selection ``metric``."""
        ...

    def main_metric(self, spec: TaskSpec) -> str: ...

    def encode(self, rows: list[Row], tokenizer: Any, labels: list[str], max_length: int) -> EncodedSplit: ...

    def decode_batch(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """Per example, predicted label ids (token tasks: at scored positions only)."""
        ...

    def report(self, spec: TaskSpec, split: str, rows: list[Row], encoded: EncodedSplit,
               predictions: list[np.ndarray], labels: list[str]) -> TaskReport: ...
