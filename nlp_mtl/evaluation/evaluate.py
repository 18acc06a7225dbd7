"""Run a model over a split and score it with the task type's report."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.encoding import EncodedSplit, collate
from ..data.pipeline import PreparedTask
from ..kernels import attention_for_varying_shapes
from ..task_types import TaskReport


def predict_split(model: Any, task: PreparedTask, split: EncodedSplit, batch_size: int, pad_token_id: int,
                  device: torch.device, autocast: Any = None, shard: int = 0, num_shards: int = 1,
                  quiet: bool = True, desc: str = "") -> dict[int, np.ndarray]:
    """Predictions for this shard's examples: {example index: predicted ids}.

    Examples run longest first in batches of similar length, so padding is minimal.
    """
    order = np.argsort(-split.lengths, kind="stable")[shard::num_shards]
    results: dict[int, np.ndarray] = {}
    was_training = model.training
    model.eval()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode(), (autocast() if autocast else contextlib.nullcontext()), \
            attention_for_varying_shapes(device):
        for indices in tqdm(batches, desc=desc or f"evaluating {task.name}", disable=quiet, leave=False):
            batch = {k: v.to(device) for k, v in collate(split, indices, pad_token_id).items()}
            labels = batch.pop("labels")
            logits = model(task.name, **batch)["logits"]
            for i, prediction in zip(indices.tolist(), task.task_type.decode_batch(logits.float(), {"labels": labels})):
                results[i] = prediction
    model.train(was_training)
    return results


def evaluate_tasks(model: Any, tasks: list[PreparedTask], split: str, batch_size: int, pad_token_id: int,
                   device: torch.device, accelerator: Any = None, quiet: bool = True) -> dict[str, TaskReport]:
    """Score every task that has ``split``; with an accelerator, each process scores a shard and
    the shards are gathered, so every example is counted exactly once."""
    reports = {}
    shard, num_shards = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    autocast = accelerator.autocast if accelerator else None
    for task in tasks:
        if split not in task.encoded:
            continue
        encoded = task.encoded[split]
        local = predict_split(model, task, encoded, batch_size, pad_token_id, device, autocast, shard, num_shards,
                              quiet=quiet, desc=f"{split} {task.name}")
        if num_shards > 1:
            from accelerate.utils import gather_object

            merged: dict[int, np.ndarray] = {}
            for part in gather_object([local]):
                merged.update(part)
            local = merged
        predictions = [local[i] for i in range(len(encoded))]
        reports[task.name] = task.task_type.report(task.spec, split, task.data.splits[split], encoded,
                                                   predictions, task.labels)
    return reports

