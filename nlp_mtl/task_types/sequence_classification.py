"""Sequence classification, single sentence or sentence pair, scored by scikit-learn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, classification_report, f1_score

from ..data.encoding import EncodedSplit, Ragged
from ..data.fast_tokenize import encode_batch, rust_tokenizer
from ..data.loading import has_text_pairs
from ..config import TaskSpec
from ..data.readers import Roles, Row
from ..registry import TASK_TYPES
from .base import HFExport, TaskReport


def encode_texts(rows: list[Row], tokenizer: Any, max_length: int, labels: np.ndarray) -> EncodedSplit:
    """Text (and text pair) of each row, tokenised in large batches, with the given label array."""
    pairs = has_text_pairs(rows)
    backend = rust_tokenizer(tokenizer, max_length)
    ids, types, truncated = [], [], 0
    for start in range(0, len(rows), 10000):
        chunk = rows[start : start + 10000]
        enc = encode_batch(backend, [r["text"] for r in chunk],
                           [r.get("text_pair", "") for r in chunk] if pairs else None)
        ids.extend(enc.input_ids)
        types.extend(enc.type_ids)
        truncated += sum(enc.truncated)
    return EncodedSplit(
        input_ids=Ragged.from_lists(ids),
        labels=labels,
        # Only encoders with segment embeddings use them, and only pairs have a segment 1.
        token_type_ids=Ragged.from_lists(types) if pairs and "token_type_ids" in tokenizer.model_input_names else None,
        truncated=truncated,
        pairs=pairs,
    )


class SequenceClassification:
    roles = Roles(required=("text", "label"), optional=("text_pair",))
    head = "sequence_classification"
    display_name = "sequence classification"
    plots: tuple[str, ...] = ()

    def metric_names(self, spec: TaskSpec) -> tuple[str, ...]:
        return ("accuracy", "macro_f1", "weighted_f1")

    def main_metric(self, spec: TaskSpec) -> str:
        return spec.metric or "accuracy"

    def encode(self, rows: list[Row], tokenizer: Any, labels: list[str], max_length: int) -> EncodedSplit:
        label2id = {label: i for i, label in enumerate(labels)}
        return encode_texts(rows, tokenizer, max_length, np.array([label2id[r["label"]] for r in rows], dtype=np.int64))

    def decode_batch(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        return list(logits.argmax(-1).cpu().numpy()[:, None])

    def report(self, spec: TaskSpec, split: str, rows: list[Row], encoded: EncodedSplit,
               predictions: list[np.ndarray], labels: list[str]) -> TaskReport:
        gold = np.asarray(encoded.labels)
        pred = np.array([int(p[0]) for p in predictions])
        ids = list(range(len(labels)))
        kwargs: dict[str, Any] = {"labels": ids, "target_names": labels, "zero_division": 0}
        text = classification_report(gold, pred, digits=4, **kwargs)
        details = classification_report(gold, pred, output_dict=True, **kwargs)
        metrics = {
            "accuracy": float(accuracy_score(gold, pred)),
            "macro_f1": float(f1_score(gold, pred, labels=ids, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(gold, pred, labels=ids, average="weighted", zero_division=0)),
            "examples": len(rows),
            "truncated": int(encoded.truncated),
        }
        confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
        np.add.at(confusion, (gold, pred), 1)
        details = {k: ({m: float(v) for m, v in d.items()} if isinstance(d, dict) else float(d)) for k, d in details.items()}
        details["confusion_matrix"] = {"labels": labels, "matrix": confusion.tolist()}
        return TaskReport(task=spec.name, split=split, metrics=metrics, text=text, details=details)

    def predictions(self, logits: torch.Tensor, labels: list[str], words: list[Any],
                    word_ids: list[list[int | None]] | None, head_options: dict[str, Any]) -> list[dict[str, Any]]:
        best_p, best = logits.float().softmax(-1).max(-1)
        return [{"label": labels[b], "probability": round(p, 4)} for p, b in zip(best_p.tolist(), best.tolist())]

    def export(self, model: Any, head: Any, config: Any, directory: Path) -> HFExport:
        from ..export import sequence_model

        hf_model, remote = sequence_model(model, head, config, directory)
        return HFExport(hf_model, "text-classification", remote)


TASK_TYPES.register("sequence_classification")(SequenceClassification())
