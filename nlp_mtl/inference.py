"""Predictions for raw text: every task from ONE encoder pass per batch.

Text is split into words (with character offsets) the way CoNLL-style corpora are tokenised;
the words are encoded once with ``is_split_into_words``, and that single encoding feeds every
head: token heads read the first sub-token of each word, sequence heads pool the whole input.
Where the raw text encodes differently from its words (byte-level BPE, SentencePiece: "movie,"
vs "movie ,"), sequence heads get a second pass on the raw text, as they were trained on it.
Sentence-pair tasks need a ``text_pair`` and get their own pass. Each task sees its input cut at
its own ``max_length``, as in training; tasks with different lengths share a pass unless an input
in the batch is longer than the shorter one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .registry import TASK_TYPES

if TYPE_CHECKING:  # the model imports this module for predict(): no import cycle
    from .model import MultiTaskModel

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
        # borrowed" under concurrent use), so calls into it are serialised; the model's passes
        # take care of themselves (encode_through).
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
        tasks = self.model.tasks
        task_types = {n: TASK_TYPES.get(t.task_type) for n, t in tasks.items()}
        logits: dict[str, torch.Tensor] = {}
        word_ids: dict[str, list[list[int | None]]] = {}
        for enc, names, max_length in self._passes(self.single_tasks, lambda n: self._tokenize(
                [s.words or [""] for s in split], is_split_into_words=True, max_length=n)):
            on_words = [n for n in names if task_types[n].roles.token_level]
            if on_words:
                ids = [enc.word_ids(i) for i in range(len(split))]
                word_ids.update(dict.fromkeys(on_words, ids))
            # Sequence tasks were trained on the raw text, token tasks on words. WordPiece encodes
            # both alike; byte-level BPE and SentencePiece do not ("movie," vs "movie ,"), and then
            # the sequence tasks get their own pass on the raw text, so they see what training saw.
            on_text = [n for n in names if n not in on_words]
            if on_text:
                made = {max_length: self._tokenize(texts, max_length=max_length)}
                if _same_ids(made[max_length], enc):
                    on_words, on_text = on_words + on_text, []
                for text_enc, group, _ in self._passes(on_text, lambda n: made[n] if n in made else
                                                       self._tokenize(texts, max_length=n)):
                    logits.update(self._run(text_enc, group))
            logits.update(self._run(enc, on_words))
        pairs = [x.get("text_pair") if isinstance(x, dict) else None for x in inputs]
        if self.pair_tasks and all(pairs):
            for enc, group, _ in self._passes(self.pair_tasks, lambda n: self._tokenize(texts, pairs, max_length=n)):
                logits.update(self._run(enc, group, pair=True))
        results: list[dict[str, Any]] = [{"text": t, "tasks": {}} for t in texts]
        for name, task_logits in logits.items():
            outputs = task_types[name].predictions(task_logits, tasks[name].labels, split, word_ids.get(name),
                                                   tasks[name].head_options)
            for result, output in zip(results, outputs):
                result["tasks"][name] = output
        return results

    def _passes(self, names: list[str], tokenize: Callable[[int], Any]) -> Iterator[tuple[Any, list[str], int]]:
        """(encoding, tasks, max_length) per encoder pass. Every task sees its input truncated at
        its own max_length, as in training and evaluation. Tokenised at the largest first, tasks
        with a smaller max_length share that pass when no input in the batch reaches it (their
        truncation would change nothing), and otherwise get a pass of their own."""
        pending: dict[int, list[str]] = {}
        for name in names:
            pending.setdefault(self.model.tasks[name].max_length, []).append(name)
        lengths = sorted(pending, reverse=True)
        while lengths:
            max_length = lengths.pop(0)
            enc, group = tokenize(max_length), pending[max_length]
            longest = enc["input_ids"].shape[1]  # padded to the longest input
            while lengths and lengths[0] >= longest:
                group = group + pending[lengths.pop(0)]
            yield enc, group, max_length

    def _tokenize(self, *args: Any, max_length: int, **kwargs: Any) -> Any:
        with self._tokenizer_lock:
            return self.tokenizer(*args, truncation=True, max_length=max_length, padding=True,
                                  return_tensors="pt", **kwargs)

    def _run(self, enc: Any, names: list[str], pair: bool = False) -> dict[str, torch.Tensor]:
        if not names:
            return {}
        # Single-sentence tasks were trained without token types (all zero, the encoder's default).
        fields = ("input_ids", "attention_mask", "token_type_ids") if pair else ("input_ids", "attention_mask")
        batch = {k: v.to(self.device) for k, v in enc.items() if k in fields}
        return self.model.encode_all(batch["input_ids"], batch["attention_mask"], tasks=names,
                                     token_type_ids=batch.get("token_type_ids"))


def _same_ids(a: Any, b: Any) -> bool:
    return a["input_ids"].shape == b["input_ids"].shape and bool(torch.equal(a["input_ids"], b["input_ids"]))
