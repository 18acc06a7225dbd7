"""Multi-label classification: each text carries a set of zero or more labels.

One sigmoid per label, trained with binary cross-entropy on multi-hot targets; a label is
predicted where its probability reaches the head's ``threshold`` (default 0.5). Scored with
scikit-learn's multi-label classification report: micro F1 (the main metric), macro, weighted
and samples F1, subset accuracy (every label of an example right) and Hamming loss.

Data: the role ``labels`` holds the set, a JSON list of strings (``[]`` for none), or text split
at ``data.label_separator`` (csv, tsv, regex; a blank cell is no labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (accuracy_score, classification_report, f1_score, hamming_loss,
                             multilabel_confusion_matrix, precision_recall_fscore_support)

from ..config import TaskSpec
from ..data.encoding import EncodedSplit
from ..data.readers import Roles, Row
from ..registry import TASK_TYPES
from .base import HFExport, TaskReport
from .sequence_classification import encode_texts

DEFAULT_THRESHOLD = 0.5
# Hugging Face's name for it: config.problem_type, which makes the text-classification pipeline
# apply a sigmoid per label instead of a softmax.
HF_PROBLEM_TYPE = "multi_label_classification"


def threshold(head_options: dict[str, Any]) -> float:
    """The decision threshold in a task's head options (checked when the spec is read)."""
    return float(head_options.get("threshold", DEFAULT_THRESHOLD))


def multi_hot(rows: list[Row], labels: list[str]) -> np.ndarray:
    """(examples, labels) 0/1 targets."""
    label2id = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(rows), len(labels)), dtype=np.int8)
    for i, row in enumerate(rows):
        out[i, [label2id[label] for label in row["labels"]]] = 1
    return out


def _samples_avg(gold: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Per-example precision, recall and F1, averaged. An example with no gold and no predicted
    label was predicted perfectly and counts 1 (scikit-learn's zero_division=0 would count 0,
    which caps the score of a corpus with label-less examples below 1)."""
    p, r, f, _ = precision_recall_fscore_support(gold, pred, average="samples", zero_division=1.0)
    return {"precision": float(p), "recall": float(r), "f1-score": float(f), "support": float(gold.sum())}


def _report_text(gold: np.ndarray, pred: np.ndarray, labels: list[str]) -> str:
    kwargs: dict[str, Any] = {"labels": list(range(len(labels))), "target_names": labels, "digits": 4}
    lines = classification_report(gold, pred, zero_division=0, **kwargs).rstrip("\n").splitlines()
    # The samples row as _samples_avg scores it (zero_division=1 changes nothing else there).
    samples = [line for line in classification_report(gold, pred, zero_division=1.0, **kwargs).splitlines()
               if line.lstrip().startswith("samples avg")]
    lines = [samples[0] if line.lstrip().startswith("samples avg") and samples else line for line in lines]
    empty_gold, empty_pred = int((gold.sum(1) == 0).sum()), int((pred.sum(1) == 0).sum())
    lines += ["", f"examples without labels: {empty_gold} gold, {empty_pred} predicted "
                  "(samples avg counts an example right where both are empty)"]
    return "\n".join(lines) + "\n"


class MultiLabelClassification:
    roles = Roles(required=("text", "labels"), optional=("text_pair",))
    head = "multi_label_classification"
    display_name = "multi-label classification"
    # Per-label F1 bars; a confusion matrix has no meaning for label sets (per-label counts are
    # in the JSON report instead).
    plots: tuple[str, ...] = ("label_f1",)

    def metric_names(self, spec: TaskSpec) -> tuple[str, ...]:
        return ("micro_f1", "macro_f1", "weighted_f1", "samples_f1", "subset_accuracy")

    def main_metric(self, spec: TaskSpec) -> str:
        return spec.metric or "micro_f1"

    def encode(self, rows: list[Row], tokenizer: Any, labels: list[str], max_length: int) -> EncodedSplit:
        return encode_texts(rows, tokenizer, max_length, multi_hot(rows, labels))

    def decode_batch(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        # Probabilities, not decisions: the threshold is the spec's, and report() applies it.
        return list(logits.float().sigmoid().cpu().numpy())

    def report(self, spec: TaskSpec, split: str, rows: list[Row], encoded: EncodedSplit,
               predictions: list[np.ndarray], labels: list[str]) -> TaskReport:
        gold = np.asarray(encoded.labels).astype(np.int64).reshape(len(rows), len(labels))
        probabilities = np.asarray(predictions, dtype=np.float32).reshape(len(rows), len(labels))
        pred = (probabilities >= threshold(spec.head)).astype(np.int64)
        ids = list(range(len(labels)))
        samples = _samples_avg(gold, pred)
        details: dict[str, Any] = classification_report(gold, pred, labels=ids, target_names=labels,
                                                        zero_division=0, output_dict=True)
        details = {k: {m: float(v) for m, v in d.items()} for k, d in details.items()}
        details["samples avg"] = samples
        micro = details["micro avg"]
        metrics = {
            "micro_f1": micro["f1-score"],
            "micro_precision": micro["precision"],
            "micro_recall": micro["recall"],
            "macro_f1": float(f1_score(gold, pred, labels=ids, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(gold, pred, labels=ids, average="weighted", zero_division=0)),
            "samples_f1": samples["f1-score"],
            "subset_accuracy": float(accuracy_score(gold, pred)),
            "hamming_loss": float(hamming_loss(gold, pred)),
            "examples": len(rows),
            "truncated": int(encoded.truncated),
        }
        # Per label: true/false positives and negatives (what a confusion matrix would say).
        counts = multilabel_confusion_matrix(gold, pred, labels=ids)
        details["label_counts"] = {label: {"tp": int(c[1, 1]), "fp": int(c[0, 1]), "fn": int(c[1, 0]),
                                           "tn": int(c[0, 0])} for label, c in zip(labels, counts)}
        details["threshold"] = threshold(spec.head)
        details["examples_without_labels"] = {"gold": int((gold.sum(1) == 0).sum()),
                                              "predicted": int((pred.sum(1) == 0).sum())}
        return TaskReport(task=spec.name, split=split, metrics=metrics, text=_report_text(gold, pred, labels),
                          details=details)

    def predictions(self, logits: torch.Tensor, labels: list[str], words: list[Any],
                    word_ids: list[list[int | None]] | None, head_options: dict[str, Any]) -> list[dict[str, Any]]:
        cut = threshold(head_options)
        out = []
        for row in logits.float().sigmoid().tolist():
            ranked = sorted(zip(labels, row), key=lambda pair: -pair[1])
            out.append({"labels": [label for label, p in ranked if p >= cut],
                        "probabilities": {label: round(p, 4) for label, p in zip(labels, row)}})
        return out

    def export(self, model: Any, head: Any, config: Any, directory: Path) -> HFExport:
        from ..export import sequence_model

        config.problem_type = HF_PROBLEM_TYPE
        config.nlp_mtl_threshold = float(getattr(head, "threshold", DEFAULT_THRESHOLD))
        hf_model, remote = sequence_model(model, head, config, directory)
        return HFExport(hf_model, "text-classification", remote, {"top_k": None})


TASK_TYPES.register("multi_label_classification")(MultiLabelClassification())
