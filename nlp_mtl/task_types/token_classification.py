"""Token classification (NER, POS, chunking, slots): one label per word, scored by seqeval.

The label sits on the first sub-token of each word and -100 elsewhere, as in Hugging Face's
run_ner.py. Words cut off by max_length are predicted 'O' when scoring, so truncation costs
recall honestly instead of silently shrinking the gold standard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from seqeval.metrics import accuracy_score, classification_report
from seqeval.scheme import IOB2
from sklearn.metrics import accuracy_score as sk_accuracy
from sklearn.metrics import classification_report as sk_report
from sklearn.metrics import f1_score as sk_f1

from ..data.encoding import EncodedSplit, Ragged
from ..data.fast_tokenize import encode_batch, rust_tokenizer
from ..config import TaskSpec
from ..data.readers import Roles, Row
from ..registry import TASK_TYPES
from .base import HFExport, TaskReport


def align_labels(word_ids: list[int | None], tags: list[str], label2id: dict[str, int]) -> tuple[list[int], list[int]]:
    labels, words = [], []
    previous = None
    for word in word_ids:
        if word is None or word == previous:
            labels.append(-100)
        else:
            labels.append(label2id[tags[word]])
            words.append(word)
        previous = word
    return labels, words


def word_tags(n_words: int, words: np.ndarray, predicted: np.ndarray, labels: list[str]) -> list[str]:
    tags = ["O"] * n_words
    for word, label_id in zip(words.tolist(), predicted.tolist()):
        tags[word] = labels[label_id]
    return tags


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) for each entity in IOB2 tags; a stray I- starts one."""
    found: list[tuple[str, int, int]] = []
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        if kind is not None and not (prefix == "I" and label == kind):
            found.append((kind, start, i - 1))
            kind = None
        if prefix in ("B", "I") and kind is None:
            kind, start = label, i
    return found


def token_level_report(spec: TaskSpec, split: str, gold: list[list[str]], pred: list[list[str]],
                       labels: list[str], encoded: EncodedSplit) -> TaskReport:
    """Plain per-token labels (POS): scikit-learn's report over all tokens."""
    flat_gold = [t for sent in gold for t in sent]
    flat_pred = [t for sent in pred for t in sent]
    kwargs: dict[str, Any] = {"labels": labels, "zero_division": 0}
    text = sk_report(flat_gold, flat_pred, digits=4, **kwargs)
    details = sk_report(flat_gold, flat_pred, output_dict=True, **kwargs)
    accuracy = float(sk_accuracy(flat_gold, flat_pred))
    metrics = {
        "token_accuracy": accuracy,
        "accuracy": accuracy,
        "macro_f1": float(sk_f1(flat_gold, flat_pred, labels=labels, average="macro", zero_division=0)),
        "examples": len(gold),
        "truncated": int(encoded.truncated),
    }
    details = {k: ({m: float(v) for m, v in d.items()} if isinstance(d, dict) else float(d)) for k, d in details.items()}
    return TaskReport(task=spec.name, split=split, metrics=metrics, text=text, details=details)


class TokenClassification:
    roles = Roles(required=("tokens", "tags"), token_level=True)
    head = "token_classification"
    display_name = "token classification"
    plots: tuple[str, ...] = ("label_f1",)

    def metric_names(self, spec: TaskSpec) -> tuple[str, ...]:
        if spec.data.tag_scheme == "none":
            return ("accuracy", "token_accuracy", "macro_f1")
        return ("f1", "precision", "recall", "token_accuracy")

    def main_metric(self, spec: TaskSpec) -> str:
        return spec.metric or ("accuracy" if spec.data.tag_scheme == "none" else "f1")

    def encode(self, rows: list[Row], tokenizer: Any, labels: list[str], max_length: int) -> EncodedSplit:
        label2id = {label: i for i, label in enumerate(labels)}
        ids, label_rows, word_rows, truncated = [], [], [], 0
        backend = rust_tokenizer(tokenizer, max_length)
        for start in range(0, len(rows), 10000):
            chunk = rows[start : start + 10000]
            enc = encode_batch(backend, [r["tokens"] for r in chunk], words=True, with_word_ids=True)
            for i, row in enumerate(chunk):
                label_ids, words = align_labels(enc.word_ids[i], row["tags"], label2id)
                ids.append(enc.input_ids[i])
                label_rows.append(label_ids)
                word_rows.append(words)
                truncated += bool(words) and words[-1] + 1 < len(row["tokens"])
        return EncodedSplit(
            input_ids=Ragged.from_lists(ids),
            labels=Ragged.from_lists(label_rows, dtype=np.int16),
            word_index=Ragged.from_lists(word_rows),
            truncated=truncated,
        )

    def decode_batch(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        predicted = logits.argmax(-1).cpu().numpy()
        scored = (batch["labels"] != -100).cpu().numpy()
        return [predicted[i][scored[i]] for i in range(len(predicted))]

    def report(self, spec: TaskSpec, split: str, rows: list[Row], encoded: EncodedSplit,
               predictions: list[np.ndarray], labels: list[str]) -> TaskReport:
        assert encoded.word_index is not None
        gold = [r["tags"] for r in rows]
        pred = [word_tags(len(r["tags"]), encoded.word_index[i], predictions[i], labels) for i, r in enumerate(rows)]
        if spec.data.tag_scheme == "none":
            return token_level_report(spec, split, gold, pred, labels, encoded)
        kwargs: dict[str, Any] = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
        text = classification_report(gold, pred, digits=4, **kwargs)
        details = classification_report(gold, pred, output_dict=True, **kwargs)
        micro = details.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
        metrics = {
            "precision": float(micro["precision"]),
            "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]),
            "token_accuracy": float(accuracy_score(gold, pred)),
            "examples": len(rows),
            "truncated": int(encoded.truncated),
        }
        details = {k: {m: float(v) for m, v in d.items()} for k, d in details.items()}
        return TaskReport(task=spec.name, split=split, metrics=metrics, text=text, details=details)

    def predictions(self, logits: torch.Tensor, labels: list[str], words: list[Any],
                    word_ids: list[list[int | None]] | None, head_options: dict[str, Any]) -> list[dict[str, Any]]:
        assert word_ids is not None
        # Best label and its probability for every position at once: one tensor op per batch,
        # then plain Python lists (per-position tensor indexing cost more than the encoder).
        best_p, best = logits.float().softmax(-1).max(-1)
        best_p, best = best_p.tolist(), best.tolist()
        return [_entities(w, word_ids[i], best_p[i], best[i], labels) for i, w in enumerate(words)]

    def export(self, model: Any, head: Any, config: Any, directory: Path) -> HFExport:
        from ..export import token_model

        return HFExport(token_model(model, head, config), "token-classification")


def _entities(words: Any, word_ids: list[int | None], best_p: list[float], best: list[int],
              labels: list[str]) -> dict[str, Any]:
    """A sentence's entities with character offsets and mean word scores, plus its word tags."""
    tags, scores = ["O"] * len(words.words), [1.0] * len(words.words)
    previous = None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            tags[word], scores[word] = labels[best[position]], best_p[position]
        previous = word
    found = []
    for kind, first, last in entities(tags):
        start, end = words.spans[first][0], words.spans[last][1]
        score = sum(scores[first : last + 1]) / (last - first + 1)
        found.append({"type": kind, "text": words.text[start:end], "start": start, "end": end, "score": round(score, 4)})
    return {"entities": found, "tags": tags, "words": words.words}


TASK_TYPES.register("token_classification")(TokenClassification())
