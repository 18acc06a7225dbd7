"""From task specs to tokenised splits ready for the sampler and the evaluator."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import TaskSpec
from ..registry import TASK_TYPES
from .disk_store import default_cache_dir, encode_to_disk
from .encoding import EncodedSplit
from .loading import StreamedRows, TaskData, load_task_data


@dataclass
class PreparedTask:
    spec: TaskSpec
    task_type: Any
    data: TaskData
    encoded: dict[str, EncodedSplit] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def labels(self) -> list[str]:
        return self.data.labels

    @property
    def metric(self) -> str:
        return self.task_type.main_metric(self.spec)


def check_spec(spec: TaskSpec) -> None:
    """Metric, head type and head options are checked with the spec, not mid-training."""
    from ..errors import ConfigError
    from ..model.heads import HEADS  # registers the built-in heads
    from ..schema import from_mapping

    task_type = TASK_TYPES.get(spec.type, f"{spec.source}: type")
    allowed = task_type.metric_names(spec)
    if spec.metric is not None and spec.metric not in allowed:
        raise ConfigError(f"{spec.source}: metric '{spec.metric}' is not reported for this task; "
                          f"expected one of: {', '.join(allowed)}.")
    head_name = spec.head.get("type", task_type.head)
    head = HEADS.get(str(head_name), f"{spec.source}: head.type")
    from_mapping(head.Options, spec.head, f"{spec.source}: head")


def load_all(specs: list[TaskSpec], root: Path, limit: dict[str, int] | None = None,
             storage: str = "memory", cache_dir: Path | None = None) -> list[TaskData]:
    """Read and check every task's data before anything heavy (tokenising, model loading).

    ``storage="disk"``: train splits stay in their files (one checking pass now, tokenised into a
    memory-mapped cache by ``encode_all``); validation and test are read into memory, because
    their reports need the words.
    """
    for spec in specs:
        check_spec(spec)
    if storage != "disk":
        return [load_task_data(spec, root, limit) for spec in specs]
    return [load_task_data(spec, root, limit, stream_train=True, cache_dir=cache_dir or default_cache_dir())
            for spec in specs]


def encode_all(datas: list[TaskData], tokenizer: Any, splits: tuple[str, ...] = ("train", "validation", "test"),
               quiet: bool = False, cache_dir: Path | None = None) -> list[PreparedTask]:
    """Tokenise every split; a streamed train split goes to ``cache_dir`` (default: the user cache)."""
    prepared = []
    jobs = [(d, s) for d in datas for s in splits if s in d.splits]
    bar = tqdm(jobs, desc="tokenising", disable=quiet, unit="split")
    by_task: dict[str, PreparedTask] = {}
    for data, split in bar:
        bar.set_postfix_str(f"{data.spec.name}/{split}")
        task_type = TASK_TYPES.get(data.spec.type)
        task = by_task.get(data.spec.name)
        if task is None:
            task = by_task[data.spec.name] = PreparedTask(data.spec, task_type, data)
            prepared.append(task)
        rows = data.splits[split]
        if isinstance(rows, StreamedRows):
            with tqdm(total=len(rows), desc=f"  {data.spec.name}/{split} to disk", unit="ex", disable=quiet,
                      leave=False, unit_scale=True) as examples:
                task.encoded[split] = encode_to_disk(task_type, rows, tokenizer, data.labels, data.spec.max_length,
                                                     cache_dir or default_cache_dir(), examples.update)
        else:
            task.encoded[split] = task_type.encode(rows, tokenizer, data.labels, data.spec.max_length)
    for data in datas:
        if data.spec.name not in by_task:
            prepared.append(PreparedTask(data.spec, TASK_TYPES.get(data.spec.type), data))
    return prepared
