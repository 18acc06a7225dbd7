"""Resumable training checkpoints: safetensors + JSON only, written atomically.

    checkpoints/last/
      model/                 MultiTaskModel.save_pretrained
      optimizer.safetensors  every optimizer state tensor, keyed 'state.<param>.<name>'
      rng.safetensors        every process's torch CPU (and its own CUDA device's) generator state
      trainer_state.json     step, best score, batch cursors, scheduler, param groups, running losses

The folder is assembled under a temporary name and renamed into place, so a process killed at
any moment leaves either the previous checkpoint or the new one, never a half-written one.
Nothing is unpickled when loading.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..fileio import atomic_directory, writing
from .engine import EngineState

STATE_FILE = "trainer_state.json"
# 2: steps count optimizer steps (1 counted micro-batches).
FORMAT_VERSION = 2


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups}


def gather_rng_states(accelerator: Any) -> dict[str, torch.Tensor]:
    """Every process's generator states, keyed by rank, collected on all processes."""
    local = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        local["cuda"] = torch.cuda.get_rng_state()
    if accelerator.num_processes == 1:
        parts = [local]
    else:
        from accelerate.utils import gather_object

        parts = gather_object([{k: v.tolist() for k, v in local.items()}])
        parts = [{k: torch.tensor(v, dtype=torch.uint8) for k, v in p.items()} for p in parts]
    return {f"{rank}.{name}": value for rank, part in enumerate(parts) for name, value in part.items()}


def save_checkpoint(directory: Path, model: Any, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: EngineState,
                    rng_states: dict[str, torch.Tensor]) -> None:
    """A failed write (a full disk) leaves the previous checkpoint in place and raises a
    FileSystemError naming ``directory``."""
    with writing(directory), atomic_directory(directory) as tmp:
        model.save_pretrained(tmp / "model")
        tensors, meta = _optimizer_tensors(optimizer)
        save_file(tensors, tmp / "optimizer.safetensors")
        save_file(rng_states, tmp / "rng.safetensors")
        scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        payload = {"trainer": dataclasses.asdict(state), "optimizer": meta, "scheduler": scheduler_state,
                   "format_version": FORMAT_VERSION}
        (tmp / STATE_FILE).write_text(json.dumps(payload, indent=1))


def find_checkpoint(directory: Path) -> Path | None:
    """The checkpoint folder, or the newest one moved aside if a kill hit between two renames."""
    if (directory / STATE_FILE).is_file():
        return directory
    aside = [p / directory.name for p in directory.parent.glob(f".{directory.name}.old-*")]
    aside = [p for p in aside if (p / STATE_FILE).is_file()]
    return max(aside, key=lambda p: (p / STATE_FILE).stat().st_mtime) if aside else None


def checkpoint_note(run: Any, command: str = "train") -> str:
    """What a stopped run has to continue from, for messages: its checkpoint and step, or nothing."""
    found = find_checkpoint(run.last_dir)
    if found is None:
        return "no checkpoint had been written yet, so there is nothing to resume from"
    try:
        step = json.loads((found / STATE_FILE).read_text())["trainer"]["step"]
    except (OSError, ValueError, KeyError, TypeError):
        step = "?"
    return f"the last good checkpoint ({found}, step {step}) is intact; continue with: nlp-mtl {command} --resume {run.path}"


def load_checkpoint(directory: Path, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, rank: int = 0) -> EngineState:
    """Restore optimizer, scheduler and RNG in place; return the trainer state."""
    try:
        payload = json.loads((directory / STATE_FILE).read_text())
        tensors = load_file(directory / "optimizer.safetensors")
        rng = load_file(directory / "rng.safetensors")
    except (OSError, json.JSONDecodeError, ValueError, SafetensorError) as err:
        raise UserError(f"{directory}: unreadable checkpoint ({err}).") from None
    if payload.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{directory}: checkpoint format {payload.get('format_version')} is not the "
                        f"{FORMAT_VERSION} this version of nlp-mtl resumes; train again.")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in payload["optimizer"]["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict({**payload["scheduler"], "lr_lambdas": [None] * len(groups)})
    if f"{rank}.torch" not in rng:
        raise UserError(f"{directory}: checkpoint holds no RNG state for process {rank}; "
                        "resume with the number of processes it was written with.")
    torch.set_rng_state(rng[f"{rank}.torch"])
    if torch.cuda.is_available() and f"{rank}.cuda" in rng:
        torch.cuda.set_rng_state(rng[f"{rank}.cuda"])
    return EngineState(**payload["trainer"])
