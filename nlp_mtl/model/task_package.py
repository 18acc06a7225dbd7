"""One task's adapter + head as a small stand-alone folder, loadable onto the shared encoder.

    DIR/task.json            task (labels, head, max_length), adapter type and options, and the
                             fingerprint of the base encoder it was trained on
    DIR/weights.safetensors  'adapter.<...>' and 'head.<...>' tensors

A few hundred kilobytes to a few megabytes per task instead of a copy of the encoder. Loading
checks the fingerprint, so an adapter is never silently applied to an encoder it was not
trained with.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..fileio import atomic_directory, check_format_version
from .multitask import AdapterSetup, MultiTaskModel, TaskHeadInfo

PACKAGE_FORMAT = "nlp-mtl-task"
PACKAGE_VERSION = 1


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """A hash of every encoder weight: equal only for the very same base encoder."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def save_task_package(model: MultiTaskModel, task: str, directory: str | Path, overwrite: bool = False) -> Path:
    if task not in model.tasks:
        raise UserError(f"task '{task}' is not in this model (it has: {', '.join(model.tasks)}).")
    info = model.tasks[task]
    if info.adapter is None or model.adapter_setup is None:
        raise UserError(f"task '{task}' has no adapter: it runs on the fine-tuned encoder itself, so it cannot be "
                        "saved apart from it. Use 'nlp-mtl export' for a full model instead.")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory}: is a file; give a directory for the task package.")
    if directory.exists() and any(directory.iterdir()):
        if not overwrite:
            raise UserError(f"{directory}: exists and is not empty; pass --overwrite to replace it.")
        if not (directory / "task.json").is_file():
            # --overwrite replaces a task package, never some other folder (a run, a model, a home).
            raise UserError(f"{directory}: is not a task package (no task.json); refusing to replace it.")
    with atomic_directory(directory) as tmp:
        tensors = {f"adapter.{k}": v for k, v in model.adapters[info.adapter].state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in model.heads[task].state_dict().items()})
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / "weights.safetensors")
        meta = {
            "format": PACKAGE_FORMAT, "format_version": PACKAGE_VERSION,
            "task": asdict(info),
            "adapter": {"type": model.adapter_setup.type, "options": model.adapter_setup.to_json()["options"]},
            "encoder": {"fingerprint": encoder_fingerprint(model.encoder),
                        "name_or_path": getattr(model.encoder.config, "_name_or_path", "")},
        }
        (tmp / "task.json").write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_task_package(model: MultiTaskModel, directory: str | Path) -> str:
    """Add the packaged task (its own adapter group, named after it) to ``model``; returns its name."""
    directory = Path(directory)
    meta_path = directory / "task.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != PACKAGE_FORMAT:
            raise KeyError("format")
        info = TaskHeadInfo(**meta["task"])
        setup = AdapterSetup(str(meta["adapter"]["type"]), dict(meta["adapter"]["options"]), [])
        fingerprint = meta["encoder"]["fingerprint"]
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{directory}: not a task package (no task.json); write one with "
                        "'nlp-mtl export RUN_DIR --task T --out DIR --adapter-only'.") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{meta_path}: unreadable task package description ({err}).") from None
    check_format_version(meta.get("format_version"), PACKAGE_VERSION, meta_path)
    if fingerprint != encoder_fingerprint(model.encoder):
        raise UserError(f"{directory}: this adapter was trained on a different base encoder "
                        f"({meta['encoder'].get('name_or_path') or 'unknown'}); load it onto that encoder.")
    if info.name in model.tasks or info.name in model.adapters:
        raise UserError(f"{directory}: task '{info.name}' is already in the model.")
    if model.adapter_setup is None:
        model.install_adapters(setup)
    elif not same_adapters(model.adapter_setup, setup):
        raise UserError(f"{directory}: a {setup.type} adapter {setup.options}; this model's adapters are "
                        f"{model.adapter_setup.type} {model.adapter_setup.options}, and one model holds one kind.")
    try:
        tensors = load_file(directory / "weights.safetensors")
    except (OSError, ValueError, SafetensorError) as err:
        raise UserError(f"{directory / 'weights.safetensors'}: unreadable weights ({err}).") from None
    group = info.name
    info = TaskHeadInfo(**{**asdict(info), "adapter": group})
    model.add_adapter_group(group)
    model.add_task(info)
    try:
        model.adapters[group].load_state_dict({k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")})
        model.heads[info.name].load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
    except RuntimeError as err:
        model.remove_task(info.name)  # nothing half-added stays behind
        raise UserError(f"{directory / 'weights.safetensors'}: weights do not fit ({str(err).splitlines()[0]}).") from None
    model.heads[info.name].to(next(model.encoder.parameters()).device)
    return info.name


def same_adapters(a: AdapterSetup, b: AdapterSetup) -> bool:
    return a.same_kind(b)
