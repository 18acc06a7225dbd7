"""The shared encoder with one head per task, and its safetensors + JSON on-disk format.

On disk (``RUN_DIR/model`` or any directory written by ``save_pretrained``)::

    config.json, model.safetensors, tokenizer files   the encoder, loadable by AutoModel
    heads/<task>.safetensors                           head weights
    multitask.json                                     tasks: type, head, options, labels

Nothing is pickled, so loading a directory never runs code from it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UserError
from ..registry import HEADS
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


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, tasks: list[TaskHeadInfo], tokenizer: Any = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.tasks = {t.name: t for t in tasks}
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict(
            {t.name: HEADS.get(t.head).build(hidden, len(t.labels), t.head_options, f"{t.name}.head") for t in tasks}
        )
        self.tokenizer = tokenizer
        # Encoders without segment embeddings (RoBERTa, DistilBERT) must not get token_type_ids.
        self._uses_token_types = getattr(encoder.config, "type_vocab_size", 0) > 1

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._uses_token_types:
            kwargs["token_type_ids"] = token_type_ids
        return self.encoder(**kwargs).last_hidden_state

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        head: Head = self.heads[task]
        logits = head(hidden, attention_mask)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = head.loss(logits, labels)
        return out

    def encode_all(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   tasks: list[str] | None = None, token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One encoder pass, every requested head applied to it: {task: logits}."""
        names = list(self.heads) if tasks is None else tasks
        if not names:
            return {}
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        return {name: self.heads[name](hidden, attention_mask) for name in names}

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
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        try:
            self.encoder.save_pretrained(tmp, safe_serialization=True)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            (tmp / "heads").mkdir()
            for name, head in self.heads.items():
                state = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
                save_file(state, tmp / "heads" / f"{name}.safetensors")
            manifest = {"format_version": FORMAT_VERSION, "tasks": [asdict(t) for t in self.tasks.values()]}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            replace_dir(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> MultiTaskModel:
        """Load a model saved by ``save_pretrained``; a run directory works too (its ``model/``)."""
        from ..backbone import load_encoder, load_tokenizer

        directory = Path(directory)
        if not (directory / MANIFEST).is_file() and (directory / "model" / MANIFEST).is_file():
            directory = directory / "model"
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise UserError(f"{directory}: not an nlp-mtl model or run directory (no {MANIFEST}).")
        try:
            manifest = json.loads(manifest_path.read_text())
            tasks = [TaskHeadInfo(**t) for t in manifest["tasks"]]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{manifest_path}: unreadable model manifest ({err}).") from None
        if not (directory / "model.safetensors").is_file() and not any(directory.glob("model-*.safetensors")):
            raise UserError(f"{directory}: no model.safetensors; nlp-mtl loads weights from safetensors only.")
        encoder = load_encoder(str(directory), safetensors_only=True)
        tokenizer = load_tokenizer(str(directory))
        model = cls(encoder, tasks, tokenizer)
        for name, head in model.heads.items():
            try:
                state = load_file(directory / "heads" / f"{name}.safetensors")
            except (OSError, ValueError, SafetensorError) as err:
                raise UserError(f"{directory / 'heads' / name}.safetensors: unreadable head weights ({err}).") from None
            head.load_state_dict(state)
        return model.to(device).eval()


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is swapped out only once ``src`` is complete.

    Leftovers of earlier kills (half-written temp folders, folders set aside) are removed once
    the new folder is in place.
    """
    if dst.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, aside / dst.name)
    os.replace(src, dst)
    for leftover in list(dst.parent.glob(f".{dst.name}.old-*")) + list(dst.parent.glob(f".{dst.name}.tmp-*")):
        if leftover != src:
            shutil.rmtree(leftover, ignore_errors=True)
