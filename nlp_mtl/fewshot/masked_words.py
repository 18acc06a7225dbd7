"""Self-supervised episodes from the training tasks' own text: which word was masked?

Three training tasks make few distinct label sets, and an adapter that multi-task training has
already fitted to them has little left to learn from their episodes: meta-training then ties the
multi-task initialisation instead of beating it. Masked-word episodes (SMLMT, Bansal et al.
2020, "Self-Supervised Meta-Learning for Few-Shot Natural Language Classification Tasks") give
an unbounded supply of new label sets: draw N words, take sentences that contain them, replace
the words by the mask token, and the classes are the hidden words. Any encoder with a mask
token serves, and the text is the one the training tasks already read, so no extra data.

Two levels, so that sequence and token heads both meet unseen label sets:

    sentence  one hidden word per sentence (sentences holding another drawn word are skipped);
              a sequence head says which word it was
    token     every occurrence of every drawn word is masked; a token head labels each masked
              position with its word, other positions are not scored
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.encoding import collate
from ..data.loading import TaskData
from ..registry import TASK_TYPES
from .episodes import EpisodeBatches

LEVELS = ("sentence", "token")
HEAD_OF_LEVEL = {"sentence": "sequence_classification", "token": "token_classification"}
MAX_WORDS = 64           # longer sentences are cut: episodes stay cheap
MAX_LENGTH = 128         # sub-word tokens


def sentence_words(row: dict) -> list[str]:
    return list(row["tokens"]) if "tokens" in row else str(row.get("text", "")).split()


@dataclass
class MaskedWordCorpus:
    """Sentences (as words) and, for every word that is eligible as a class, the sentences
    that contain it."""

    sentences: list[list[str]]
    lowered: list[list[str]]
    containing: dict[str, np.ndarray]    # word (lower case) -> sentence ids
    words: list[str]                     # eligible words, in a fixed order
    weights: np.ndarray                  # draw probability of each eligible word

    @classmethod
    def build(cls, datas: Sequence[TaskData], min_sentences: int, per_task: int = 20000,
              seed: int = 0) -> MaskedWordCorpus:
        """Up to ``per_task`` training sentences of each task. A word is a class candidate when
        it is alphabetic and at least ``min_sentences`` sentences hold it."""
        rng = np.random.default_rng(seed)
        sentences: list[list[str]] = []
        for data in datas:
            rows = data.splits.get("train", [])
            picked = rng.permutation(len(rows))[:per_task] if len(rows) > per_task else range(len(rows))
            for i in picked:
                words = sentence_words(rows[int(i)])[:MAX_WORDS]
                if len(words) >= 3:
                    sentences.append(words)
        lowered = [[w.lower() for w in s] for s in sentences]
        found: dict[str, list[int]] = {}
        for i, words in enumerate(lowered):
            for w in set(words):
                if w.isalpha():
                    found.setdefault(w, []).append(i)
        containing = {w: np.asarray(ids) for w, ids in found.items() if len(ids) >= min_sentences}
        words = sorted(containing)
        # Square-root damping: frequent (function) words, which carry syntax, are drawn more often
        # than in a uniform draw over the vocabulary, but do not crowd out the content words.
        weights = np.sqrt(np.array([len(containing[w]) for w in words], dtype=np.float64))
        weights = weights / weights.sum() if len(words) else weights
        return cls(sentences, lowered, containing, words, weights)


class MaskedWordEpisodes:
    """N-way K-shot masked-word episodes at one level, reproducible from a seed."""

    def __init__(self, corpus: MaskedWordCorpus, tokenizer: object, level: str, ways: int, shots: int,
                 query_shots: int, seed: int = 0, min_ways: int | None = None) -> None:
        if level not in LEVELS:
            raise ValueError(f"masked-word level: expected one of {', '.join(LEVELS)}, got {level!r}")
        mask = getattr(tokenizer, "mask_token", None)
        if not mask:
            raise ValueError("masked-word episodes need a tokenizer with a mask token; this one has none")
        if len(corpus.words) < ways:
            raise ValueError(f"masked-word episodes: only {len(corpus.words)} words occur in "
                             f"{shots + query_shots} or more training sentences; {ways} are needed")
        self.corpus, self.tokenizer, self.level, self.mask = corpus, tokenizer, level, mask
        self.ways, self.min_ways = ways, min(min_ways or ways, ways)
        self.shots, self.query_shots = shots, query_shots
        self.rng = np.random.default_rng(seed)
        self.name = f"masked_words_{level}"
        self.pad_id = getattr(tokenizer, "pad_token_id", None) or 0

    def sample(self) -> EpisodeBatches:
        for _ in range(20):  # rarely, the drawn words cannot fill an episode: draw again
            ways = int(self.rng.integers(self.min_ways, self.ways + 1))
            words = self.rng.choice(len(self.corpus.words), size=ways, replace=False, p=self.corpus.weights)
            chosen = [self.corpus.words[int(i)] for i in words]
            drawn = self._draw(chosen)
            if drawn is not None:
                support, query = drawn
                return EpisodeBatches(self.name, HEAD_OF_LEVEL[self.level], {}, len(chosen),
                                      self._encode(support, chosen), self._encode(query, chosen),
                                      chosen, [i for i, _ in support], [i for i, _ in query])
        raise RuntimeError("masked-word episodes: 20 draws in a row could not fill an episode")

    def _draw(self, chosen: list[str]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | None:
        """(sentence id, class) pairs of the support and the query set."""
        lowered = self.corpus.lowered
        taken: set[int] = set()
        support, query = [], []
        for c, word in enumerate(chosen):
            candidates = self.rng.permutation(self.corpus.containing[word])
            if self.level == "sentence":
                others = set(chosen) - {word}
                candidates = [i for i in candidates.tolist() if i not in taken and not others & set(lowered[i])]
            else:
                candidates = [i for i in candidates.tolist() if i not in taken]
            need = self.shots + self.query_shots
            if len(candidates) < need:
                return None
            picked = candidates[:need]
            taken.update(picked)
            support += [(i, c) for i in picked[: self.shots]]
            query += [(i, c) for i in picked[self.shots :]]
        return support, query

    def _encode(self, pairs: list[tuple[int, int]], chosen: list[str]) -> dict[str, torch.Tensor]:
        position = {w: c for c, w in enumerate(chosen)}
        rows = []
        for i, c in pairs:
            words, lowered = self.corpus.sentences[i], self.corpus.lowered[i]
            if self.level == "sentence":
                masked = [self.mask if w == chosen[c] else words[k] for k, w in enumerate(lowered)]
                rows.append({"text": " ".join(masked), "label": str(c)})
            else:
                masked = [self.mask if w in position else words[k] for k, w in enumerate(lowered)]
                tags = [f"W{position[w]}" if w in position else "O" for w in lowered]
                rows.append({"tokens": masked, "tags": tags})
        if self.level == "sentence":
            encoded = TASK_TYPES.get("sequence_classification").encode(
                rows, self.tokenizer, [str(c) for c in range(len(chosen))], MAX_LENGTH)
        else:
            labels = ["O"] + [f"W{c}" for c in range(len(chosen))]
            encoded = TASK_TYPES.get("token_classification").encode(rows, self.tokenizer, labels, MAX_LENGTH)
            flat = encoded.labels.flat.astype(np.int64)
            # Only the masked positions are scored; their ids shift down past the dropped "O".
            encoded.labels.flat = np.where(flat > 0, flat - 1, -100).astype(np.int16)
        return collate(encoded, list(range(len(rows))), self.pad_id)
