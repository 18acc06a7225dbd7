"""The interface every task type implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass
class HFExport:
    """A task as a stock (or remote-code) Hugging Face model, and the pipeline that serves it."""

    model: Any
    pipeline_task: str
    remote_code: bool = False
    # Arguments the pipeline needs to serve the task as trained, e.g. {"top_k": None} to get
    # every label's score (multi-label); shown in the usage line and the model card.
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)


class TaskType(Protocol):
    """Everything that differs between kinds of task; nothing outside ``task_types/`` asks
    which kind a task is."""

    # What a row holds (text, tokens, tags, one label or a label set: Roles.labels_of).
    roles: Roles
    head: str
    display_name: str
    # Plot kinds (nlp_mtl.reporting.plots.TASK_PLOTS) drawn for this type beyond the generic ones.
    plots: tuple[str, ...]

    def metric_names(self, spec: TaskSpec) -> tuple[str, ...]:
        """Metrics a spec may name as its model-selection ``metric``."""
        ...

    def main_metric(self, spec: TaskSpec) -> str: ...

    def encode(self, rows: list[Row], tokenizer: Any, labels: list[str], max_length: int) -> EncodedSplit: ...

    def decode_batch(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """Per example, what ``report`` scores: predicted label ids (token tasks: at scored
        positions only), or per-label probabilities where the decision is the report's (label sets)."""
        ...

    def report(self, spec: TaskSpec, split: str, rows: list[Row], encoded: EncodedSplit,
               predictions: list[np.ndarray], labels: list[str]) -> TaskReport: ...

    def predictions(self, logits: torch.Tensor, labels: list[str], words: list[Any],
                    word_ids: list[list[int | None]] | None, head_options: dict[str, Any]) -> list[dict[str, Any]]:
        """``predict``'s output per example of a batch. ``words``: each input split into words
        (``inference.Words``); ``word_ids``: sub-token -> word, for types that read words;
        ``head_options``: the task's saved head options (a decision threshold, say)."""
        ...

    def export(self, model: Any, head: Any, config: Any, directory: Path) -> HFExport:
        """The task's Hugging Face model; raises UserError where the head has no export."""
        ...
