"""One Accelerator per run, for the run's precision and accumulation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .precision import resolve_precision


def _forget_earlier_accelerator() -> None:
    """train() may run several times in one process (the Python API, benchmarks), each with its
    own mixed precision; accelerate keeps one process-wide state and refuses a second precision.
    A single process holds nothing else in that state, so it starts anew. Under a multi-process
    launch the state is the launch's and is left alone."""
    from accelerate.state import AcceleratorState, PartialState, is_initialized

    # accelerate offers no public reset; _reset_state is what its own tests use between runs.
    if is_initialized() and PartialState().num_processes == 1:
        AcceleratorState._reset_state()


def make_accelerator(mixed_precision: str, accumulation: int, project_dir: Path,
                     trackers: list[str]) -> tuple[Any, str | None]:
    """An Accelerator for a run's precision (training.mixed_precision) and micro-batches per
    optimizer step; and the note on the precision chosen, to print."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision, precision_note = resolve_precision(mixed_precision, torch.cuda.is_available())
    _forget_earlier_accelerator()
    accelerator = Accelerator(
        log_with=trackers or None,
        project_dir=str(project_dir),
        # Without a GPU, accelerate only forms a gloo process group (torchrun, accelerate launch)
        # when told it runs on CPU; otherwise each process would train alone.
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        gradient_accumulation_steps=accumulation,
        # Each step trains one task, so the other heads get no gradient that step.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    return accelerator, precision_note
