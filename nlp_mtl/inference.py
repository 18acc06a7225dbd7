"""Predictions for raw text: every task from ONE encoder pass per batch.

Text is split into words (with character offsets) the way CoNLL-style corpora are tokenised;
the words are encoded once with ``is_split_into_words``, and that single encoding feeds every
head: token heads read the first sub-token of each word, sequence heads pool the whole input.
Where the raw text encodes differently from its words (byte-level BPE, SentencePiece: "movie,"
vs "movie ,"), sequence heads get a second pass on the raw text, as they were trained on it.
Sentence-pair tasks need a ``text_pair`` and get their own pass.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import torch

from .model import MultiTaskModel
from .task_types.token_classification import entities

WORD = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]", re.UNICODE)


@dataclass
class Words:
    text: str
    words: list[str]
    spans: list[tuple[int, int]]


def split_words(text: str) -> Words:
    matches = list(WORD.finditer(text))
    return Words(text, [m.group() for m in matches], [m.span() for m in matches])


class Predictor:
    def __init__(self, model: MultiTaskModel, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.single_tasks = [n for n, t in model.tasks.items() if not t.pair]
        self.pair_tasks = [n for n, t in model.tasks.items() if t.pair]
        # A fast tokenizer mutates its truncation/padding state on each call ("Already
        # borrowed" under concurrent use), so calls into it are serialised; the model runs freely.
        self._tokenizer_lock = threading.Lock()

    def predict(self, inputs: list[str | dict[str, str]], progress: bool = False) -> list[dict[str, Any]]:
        """``inputs``: strings, or {'text': ..., 'text_pair': ...} for sentence-pair tasks."""
        from tqdm.auto import tqdm

        out: list[dict[str, Any]] = []
        starts = range(0, len(inputs), self.batch_size)
        for start in tqdm(starts, desc="predicting", unit="batch", disable=not progress, leave=False):
            out.extend(self._predict_batch(inputs[start : start + self.batch_size]))
        return out

    @torch.inference_mode()
    def _predict_batch(self, inputs: list[str | dict[str, str]]) -> list[dict[str, Any]]:
        texts = [x if isinstance(x, str) else x["text"] for x in inputs]
        split = [split_words(t) for t in texts]
        max_length = max(t.max_length for t in self.model.tasks.values())
        with self._tokenizer_lock:
            enc = self.tokenizer([s.words or [""] for s in split], is_split_into_words=True, truncation=True,
                                 max_length=max_length, padding=True, return_tensors="pt")
            word_ids = [enc.word_ids(i) for i in range(len(split))]
        batch = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        # Sequence tasks were trained on the raw text, token tasks on words. WordPiece encodes both
        # alike; byte-level BPE and SentencePiece do not ("movie," vs "movie ,"), and then the
        # sequence tasks get their own pass on the raw text, so they see what training saw.
        token_tasks = [n for n in self.single_tasks if self.model.tasks[n].task_type == "token_classification"]
        text_tasks = [n for n in self.single_tasks if n not in token_tasks]
        text_batch = None
        if text_tasks:
            with self._tokenizer_lock:
                text_enc = self.tokenizer(texts, truncation=True, max_length=max_length, padding=True,
                                          return_tensors="pt")
            text_ids, word_ids_tensor = text_enc["input_ids"], enc["input_ids"]
            if text_ids.shape != word_ids_tensor.shape or not torch.equal(text_ids, word_ids_tensor):
                text_batch = {k: v.to(self.device) for k, v in text_enc.items() if k in ("input_ids", "attention_mask")}
        if text_batch is None:
            logits = self.model.encode_all(batch["input_ids"], batch["attention_mask"], tasks=self.single_tasks)
        else:
            logits = self.model.encode_all(batch["input_ids"], batch["attention_mask"], tasks=token_tasks)
            logits.update(self.model.encode_all(text_batch["input_ids"], text_batch["attention_mask"],
                                                tasks=text_tasks))
        pairs = [x.get("text_pair") if isinstance(x, dict) else None for x in inputs]
        if self.pair_tasks and all(pairs):
            with self._tokenizer_lock:
                pair_enc = self.tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True,
                                          return_tensors="pt")
            pair_batch = {k: v.to(self.device) for k, v in pair_enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            logits.update(self.model.encode_all(pair_batch.pop("input_ids"), pair_batch.pop("attention_mask"),
                                                tasks=self.pair_tasks, **pair_batch))
        results: list[dict[str, Any]] = [{"text": t, "tasks": {}} for t in texts]
        for name, task_logits in logits.items():
            info = self.model.tasks[name]
            # Best label and its probability for every position at once: one tensor op per batch,
            # then plain Python lists (per-position tensor indexing cost more than the encoder).
            best_p, best = task_logits.float().softmax(-1).max(-1)
            best_p, best = best_p.cpu().tolist(), best.cpu().tolist()
            for i, words in enumerate(split):
                if info.task_type == "token_classification":
                    results[i]["tasks"][name] = self._entities(words, word_ids[i], best_p[i], best[i], info.labels)
                else:
                    results[i]["tasks"][name] = {"label": info.labels[best[i]], "probability": round(best_p[i], 4)}
        return results

    @staticmethod
    def _entities(words: Words, word_ids: list[int | None], best_p: list[float], best: list[int],
                  labels: list[str]) -> dict[str, Any]:
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
