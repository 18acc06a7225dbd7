"""The shared encoder with one head per task, and its safetensors + JSON on-disk format.

On disk (``RUN_DIR/model`` or any directory written by ``save_pretrained``)::

    config.json, model.safetensors, tokenizer files   the encoder, loadable by AutoModel
    heads/<task>.safetensors                           head weights
    adapters/<group>.safetensors                       adapter weights (adapter runs only)
    multitask.json                                     tasks: type, head, options, labels, adapter

Nothing is pickled, so loading a directory never runs code from it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError, UserError
from ..fileio import atomic_directory, check_format_version
from ..registry import HEADS
from ..schema import to_mapping
from .adapters import FAMILY_LAYERS, AdapterHooks, AdapterSet, parse_options, resolve_targets, warp_layer_targets
from .heads import Head

FORMAT_VERSION = 1
MANIFEST = "multitask.json"


@dataclass
class TaskHeadInfo:
    """What inference needs to know about a task, saved in multitask.json."""

    name: str
    task_type: str
    head: str
    labels: list[str]
    head_options: dict[str, Any] = field(default_factory=dict)
    max_length: int = 128
    metric: str = "accuracy"
    # Sentence-pair classification: predictions need a text_pair and their own encoder pass.
    pair: bool = False
    # The adapter group this task runs through; None: the bare encoder.
    adapter: str | None = None


@dataclass
class AdapterSetup:
    """Which adapters the model carries: one type and its options, one set per group.
    ``options`` (as written in YAML or multitask.json) are parsed into the type's typed
    ``Options`` once, here; everything else reads ``parsed``."""

    type: str
    options: dict[str, Any]
    groups: list[str]
    train_backbone: bool = False
    parsed: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.parsed = parse_options(self.type, self.options, "adapters")

    def same_kind(self, other: AdapterSetup) -> bool:
        """Same type and the same options once defaults are filled in ({} == {reduction_factor: 16})."""
        return self.type == other.type and self.parsed == other.parsed

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "options": to_mapping(self.parsed), "groups": list(self.groups),
                "train_backbone": self.train_backbone}


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, tasks: list[TaskHeadInfo], tokenizer: Any = None,
                 adapters: AdapterSetup | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.tasks: dict[str, TaskHeadInfo] = {}
        self.heads = nn.ModuleDict()
        self.tokenizer = tokenizer
        # Encoders without segment embeddings (RoBERTa, DistilBERT) must not get token_type_ids.
        self._uses_token_types = getattr(encoder.config, "type_vocab_size", 0) > 1
        self.adapter_setup: AdapterSetup | None = None
        self.adapters = nn.ModuleDict()
        self._hooks: AdapterHooks | None = None
        if adapters is not None:
            self.install_adapters(adapters)
        for info in tasks:
            self.add_task(info)

    def install_adapters(self, setup: AdapterSetup) -> None:
        """Attach adapters of one type to the encoder, a set per group in ``setup.groups``."""
        if self.adapter_setup is not None:
            raise UserError("this model already has adapters; one model holds one kind.")
        self._adapter_targets = resolve_targets(self.encoder, setup.type, setup.parsed)
        self.adapter_setup = AdapterSetup(setup.type, dict(setup.options), [], setup.train_backbone)
        for group in setup.groups:
            self.add_adapter_group(group)
        # Hooks on the warp layers' places too, so a group with warp layers runs them wherever
        # it was made or loaded; on groups without them such a hook passes the output through.
        hooked = self._adapter_targets + [n for n in warp_layer_targets(self.encoder) if n not in self._adapter_targets]
        self._hooks = AdapterHooks(self.encoder, self.adapters, hooked)

    def add_warp_layers(self, group: str, reduction_factor: int = 16) -> nn.ModuleDict:
        """Give ``group`` warp layers (kept if it has them): one after every FFN output."""
        targets = warp_layer_targets(self.encoder)
        if not targets:
            raise ConfigError(f"meta.warp_layers: no FFN output layer found in this "
                              f"{getattr(self.encoder.config, 'model_type', '')} encoder to put warp layers after "
                              f"(known families: {', '.join(FAMILY_LAYERS)}).")
        modules = dict(self.encoder.named_modules())
        widths = {name: modules[name].out_features for name in targets}
        return self.adapters[group].add_warp_layers(widths, reduction_factor)

    def add_task(self, info: TaskHeadInfo) -> None:
        """A new head (fresh weights) for ``info``; its adapter group must exist."""
        if info.adapter is not None and info.adapter not in self.adapters:
            raise UserError(f"task '{info.name}': adapter group '{info.adapter}' is not in this model "
                            f"(it has: {', '.join(self.adapters) or 'none'}).")
        hidden = self.encoder.config.hidden_size
        self.tasks[info.name] = info
        self.heads[info.name] = HEADS.get(info.head).build(hidden, len(info.labels), info.head_options,
                                                           f"{info.name}.head")

    def remove_task(self, name: str) -> None:
        """Drop a task's head, and its adapter group when no other task uses it."""
        info = self.tasks.pop(name)
        del self.heads[name]
        if info.adapter is not None and all(t.adapter != info.adapter for t in self.tasks.values()):
            del self.adapters[info.adapter]
            self.adapter_setup.groups.remove(info.adapter)

    def add_adapter_group(self, group: str, copy_from: str | None = None) -> nn.Module:
        """A new adapter set: fresh (the adapter type's own initialisation) or a copy of another."""
        if self.adapter_setup is None:
            raise UserError("this model has no adapters; train with an 'adapters:' section to use them.")
        adapter_set = AdapterSet(self.encoder, self.adapter_setup.type, self.adapter_setup.parsed, self._adapter_targets)
        if copy_from is not None:
            adapter_set.load_state_dict(self.adapters[copy_from].state_dict())
        device = next(self.encoder.parameters()).device
        self.adapters[group] = adapter_set.to(device)
        if group not in self.adapter_setup.groups:
            self.adapter_setup.groups.append(group)
        return self.adapters[group]

    @contextlib.contextmanager
    def routed(self, group: str | None) -> Iterator[None]:
        """Encoder passes inside run through ``group``'s adapters (None: the bare encoder); the
        routing is this thread's (context's) own, so concurrent passes never see each other's."""
        self._check_group(group)
        if self._hooks is None:
            yield
            return
        with self._hooks.routed(group):
            yield

    def detach_adapters(self) -> nn.Module:
        """Remove the adapter hooks from the encoder and return it (bare) for another model."""
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None
        return self.encoder

    def _check_group(self, group: str | None) -> None:
        if group is not None and group not in self.adapters:
            raise KeyError(f"no adapter group '{group}' (this model has: {', '.join(self.adapters) or 'none'})")

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """What one task adds to the shared encoder: its head and its adapter group."""
        params = list(self.heads[task].parameters())
        group = self.tasks[task].adapter
        if group is not None:
            params += list(self.adapters[group].parameters())
        return params

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._uses_token_types:
            kwargs["token_type_ids"] = token_type_ids
        return self.encoder(**kwargs).last_hidden_state

    def encode_through(self, group: str | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """One encoder pass through ``group``'s adapters; safe beside passes in other threads."""
        with self.routed(group):
            return self.encode(input_ids, attention_mask, token_type_ids)

    def forward(self, task: str | tuple[str, ...], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, labels: Any = None) -> dict[str, Any]:
        """One task: its logits (and loss, given labels). Several tasks that label the same
        examples and share an adapter (a shared pass): one encoder pass, and {task: logits},
        {task: loss} for labels given as {task: labels}."""
        if isinstance(task, tuple):
            return self._forward_shared(task, input_ids, attention_mask, token_type_ids, labels)
        hidden = self.encode_through(self.tasks[task].adapter, input_ids, attention_mask, token_type_ids)
        head: Head = self.heads[task]
        logits = head(hidden, attention_mask)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = head.loss(logits, labels)
        return out

    def _forward_shared(self, tasks: tuple[str, ...], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        token_type_ids: torch.Tensor | None, labels: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        hidden = self.encode_through(self.tasks[tasks[0]].adapter, input_ids, attention_mask, token_type_ids)
        logits = {name: self.heads[name](hidden, attention_mask) for name in tasks}
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            out["loss"] = {name: self.heads[name].loss(logits[name], labels[name]) for name in tasks}
        return out

    def encode_all(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   tasks: list[str] | None = None, token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One encoder pass per adapter group (one in all without adapters), every requested head
        applied to its group's pass: {task: logits}."""
        names = list(self.heads) if tasks is None else tasks
        by_group: dict[str | None, list[str]] = {}
        for name in names:
            by_group.setdefault(self.tasks[name].adapter, []).append(name)
        out = {}
        for group, members in by_group.items():
            hidden = self.encode_through(group, input_ids, attention_mask, token_type_ids)
            out.update({name: self.heads[name](hidden, attention_mask) for name in members})
        return out

    def predict(self, inputs: str | dict[str, str] | list[str | dict[str, str]], batch_size: int = 32) -> Any:
        """Every task's prediction for raw text: entities for token tasks, label and probability
        for sequence tasks. A list in, a list out; one text in, one result out. Puts the model in
        eval mode. For many calls, keep a :class:`nlp_mtl.inference.Predictor` instead."""
        from ..inference import Predictor

        single = not isinstance(inputs, list)
        results = Predictor(self, batch_size).predict([inputs] if single else inputs)
        return results[0] if single else results

    # ---- saving and loading -------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model to ``directory`` atomically: a temp dir renamed into place."""
        from ..backbone import weight_digests

        with atomic_directory(Path(directory)) as tmp:
            self.encoder.save_pretrained(tmp, safe_serialization=True)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            (tmp / "heads").mkdir()
            for name, head in self.heads.items():
                save_file(_cpu_state(head), tmp / "heads" / f"{name}.safetensors")
            manifest: dict[str, Any] = {"format_version": FORMAT_VERSION, "tasks": [asdict(t) for t in self.tasks.values()]}
            if self.adapter_setup is not None:
                (tmp / "adapters").mkdir()
                for group, adapter_set in self.adapters.items():
                    save_file(_cpu_state(adapter_set), tmp / "adapters" / f"{group}.safetensors")
                manifest["adapters"] = self.adapter_setup.to_json()
            manifest["files"] = weight_digests(tmp)  # checked on load: a truncated or corrupt file is named
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> MultiTaskModel:
        """Load a model saved by ``save_pretrained``; a run directory works too (its ``model/``)."""
        from ..backbone import load_encoder, load_tokenizer, verify_model_folder

        directory = Path(directory)
        if not (directory / MANIFEST).is_file() and (directory / "model" / MANIFEST).is_file():
            directory = directory / "model"
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise UserError(f"{directory}: not an nlp-mtl model or run directory (no {MANIFEST}).")
        try:
            manifest = json.loads(manifest_path.read_text())
            tasks = [TaskHeadInfo(**t) for t in manifest["tasks"]]
            adapters = AdapterSetup(**manifest["adapters"]) if manifest.get("adapters") else None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{manifest_path}: unreadable model manifest ({err}).") from None
        check_format_version(manifest.get("format_version"), FORMAT_VERSION, manifest_path)
        if not (directory / "model.safetensors").is_file() and not any(directory.glob("model-*.safetensors")):
            raise UserError(f"{directory}: no model.safetensors; nlp-mtl loads weights from safetensors only.")
        verify_model_folder(directory, manifest, [t.name for t in tasks], adapters.groups if adapters else [])
        encoder = load_encoder(str(directory), safetensors_only=True)
        tokenizer = load_tokenizer(str(directory))
        model = cls(encoder, tasks, tokenizer, adapters)
        for name, head in model.heads.items():
            load_weights(head, directory / "heads" / f"{name}.safetensors", "head")
        for group, adapter_set in model.adapters.items():
            load_weights(adapter_set, directory / "adapters" / f"{group}.safetensors", "adapter")
        return model.to(device).eval()


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def load_weights(module: nn.Module, path: Path, what: str) -> None:
    try:
        state = load_file(path)
        module.load_state_dict(state)
    except (OSError, ValueError, SafetensorError) as err:
        raise UserError(f"{path}: unreadable {what} weights ({err}).") from None
    except RuntimeError as err:  # shapes or names that do not fit this model
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: {what} weights do not fit this model ({first}).") from None


