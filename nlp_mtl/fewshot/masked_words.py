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

Drawn at random, an episode's words are mostly unrelated ("rain", "minister", "of") and the
context tells them apart at a glance. With ``clusters`` (meta.masked_word_clusters) the eligible
words are first grouped by k-means over the encoder's word embeddings, and each episode draws
all its words from one group, so its classes are near each other and harder to tell apart:
Bansal et al. 2021 ("Diverse Distributions of Self-Supervised Tasks for Meta-Learning in NLP")
found such clustered episodes worth +4.2 points on average over uniformly drawn ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.encoding import EncodedSplit, collate
from ..data.loading import TaskData
from ..registry import TASK_TYPES
from .episodes import EpisodeBatches

LEVELS = ("sentence", "token")
# The task type whose encoding (and default head) each level's episodes use.
TYPE_OF_LEVEL = {"sentence": "sequence_classification", "token": "token_classification"}
MAX_WORDS = 64           # longer sentences are cut: episodes stay cheap
MAX_LENGTH = 128         # sub-word tokens


# Words (inner apostrophes and hyphens kept: "n't", "well-known") and single punctuation marks,
# so that "movie." in raw text is the word "movie" and cannot leak past its mask.
WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*|\S")


def sentence_words(row: dict) -> list[str]:
    return list(row["tokens"]) if "tokens" in row else WORD.findall(str(row.get("text", "")))


@dataclass
class MaskedWordCorpus:
    """Sentences (as words) and, for every word that is eligible as a class, the sentences
    that contain it."""

    sentences: list[list[str]]
    lowered: list[list[str]]
    word_sets: list[frozenset[str]]
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
        lowered: list[list[str]] = []
        seen: set[tuple[str, ...]] = set()
        for data in datas:
            rows = data.splits.get("train", [])
            picked = rng.permutation(len(rows))[:per_task] if len(rows) > per_task else range(len(rows))
            for i in picked:
                words = sentence_words(rows[int(i)])[:MAX_WORDS]
                key = tuple(w.lower() for w in words)
                # Support and query are kept apart by sentence; a repeated sentence would be in both.
                if len(words) >= 3 and key not in seen:
                    seen.add(key)
                    sentences.append(words)
                    lowered.append(list(key))
        word_sets = [frozenset(words) for words in lowered]
        found: dict[str, list[int]] = {}
        for i, words in enumerate(word_sets):
            for w in words:
                if w.isalpha():
                    found.setdefault(w, []).append(i)
        containing = {w: np.asarray(ids) for w, ids in found.items() if len(ids) >= min_sentences}
        words = sorted(containing)
        # Square-root damping: frequent (function) words, which carry syntax, are drawn more often
        # than in a uniform draw over the vocabulary, but do not crowd out the content words.
        weights = np.sqrt(np.array([len(containing[w]) for w in words], dtype=np.float64))
        weights = weights / weights.sum() if len(words) else weights
        return cls(sentences, lowered, word_sets, containing, words, weights)


def word_clusters(words: Sequence[str], tokenizer: object, input_embeddings: torch.Tensor, clusters: int,
                  seed: int = 0) -> list[np.ndarray]:
    """Indices into ``words`` grouped by k-means (cosine, via unit vectors) over each word's
    input embedding, the mean of its sub-word rows. Input embeddings, not contextual ones: they
    need no forward pass over the corpus, and a pretrained encoder's are already arranged by
    meaning and word class. Groups are returned largest first; there are at most ``clusters``."""
    from sklearn.cluster import KMeans

    table = input_embeddings.detach().float().cpu()
    pieces = tokenizer(list(words), add_special_tokens=False)["input_ids"]
    vectors = torch.stack([table[ids].mean(0) if ids else torch.zeros(table.shape[1]) for ids in pieces])
    vectors = torch.nn.functional.normalize(vectors, dim=1).numpy().astype(np.float64)
    k = max(1, min(clusters, len(words)))
    assigned = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(vectors)
    groups = [np.flatnonzero(assigned == c) for c in range(k)]
    return sorted((g for g in groups if len(g)), key=len, reverse=True)


class MaskedWordEpisodes:
    """N-way K-shot masked-word episodes at one level, reproducible from a seed; with
    ``clusters`` (from word_clusters), each episode's words come from one cluster."""

    def __init__(self, corpus: MaskedWordCorpus, tokenizer: object, level: str, ways: int, shots: int,
                 query_shots: int, seed: int = 0, min_ways: int | None = None,
                 clusters: list[np.ndarray] | None = None) -> None:
        if level not in LEVELS:
            raise ValueError(f"masked-word level: expected one of {', '.join(LEVELS)}, got {level!r}")
        mask = getattr(tokenizer, "mask_token", None)
        if not mask:
            raise ValueError("masked-word episodes need a tokenizer with a mask token; this one has none")
        if len(corpus.words) < ways:
            raise ValueError(f"only {len(corpus.words)} words occur in {shots + query_shots} or more training "
                             f"sentences and {ways} are needed per episode; lower meta.ways or meta.shots/"
                             "query_shots, or set meta.masked_words: 0")
        self.corpus, self.tokenizer, self.level, self.mask = corpus, tokenizer, level, mask
        self.mask_id = tokenizer.convert_tokens_to_ids(mask)
        probe = self._encode_rows([{"text": f"a {mask} b", "label": "0"}] if level == "sentence" else
                                  [{"tokens": ["a", mask, "b"], "tags": ["O", "W0", "O"]}], 1)
        if int((probe.input_ids.flat == self.mask_id).sum()) != 1:
            raise ValueError(f"this tokenizer does not keep its mask token {mask!r} as one token in "
                             f"{level}-level input; set meta.masked_words: 0")
        self.ways, self.min_ways = ways, min(min_ways or ways, ways)
        self.shots, self.query_shots = shots, query_shots
        self.clusters: list[np.ndarray] = []
        if clusters is not None:
            self.clusters = [c for c in clusters if len(c) >= self.min_ways]
            if not self.clusters:
                raise ValueError(f"no cluster of words holds {self.min_ways} words (min_ways); lower "
                                 "meta.masked_word_clusters or meta.min_ways")
            # A cluster is drawn as often as its words would be drawn without clustering, and
            # within it each word as often as against the other words of its cluster.
            mass = np.array([corpus.weights[c].sum() for c in self.clusters])
            self.cluster_weights = mass / mass.sum()
            self.word_weights = [corpus.weights[c] / corpus.weights[c].sum() for c in self.clusters]
        self.rng = np.random.default_rng(seed)
        self.name = f"masked_words_{level}"
        self.pad_id = getattr(tokenizer, "pad_token_id", None) or 0

    def reseed(self, seed: int | list[int]) -> None:
        """Draw the next episodes from ``seed`` (see EpisodeSampler.reseed)."""
        self.rng = np.random.default_rng(seed)

    def sample(self) -> EpisodeBatches:
        for _ in range(20):  # rarely, the drawn words cannot fill an episode: draw again
            ways = int(self.rng.integers(self.min_ways, self.ways + 1))
            chosen = [self.corpus.words[int(i)] for i in self._draw_words(ways)]
            drawn = self._draw(chosen)
            if drawn is None:
                continue
            support, query = drawn
            batches = self._encode(support, chosen), self._encode(query, chosen)
            if all(b is not None for b in batches):
                return EpisodeBatches(self.name, TASK_TYPES.get(TYPE_OF_LEVEL[self.level]).head, {}, len(chosen), *batches,
                                      chosen, [i for i, _ in support], [i for i, _ in query])
        raise ValueError(f"{self.level}-level masked-word episodes: 20 draws in a row could not fill an episode "
                         "from the training text; lower meta.ways or meta.shots/query_shots, or drop this "
                         "level from meta.masked_word_levels")

    def _draw_words(self, ways: int) -> np.ndarray:
        """Indices of the episode's words: from the whole vocabulary, or from one cluster."""
        if not self.clusters:
            return self.rng.choice(len(self.corpus.words), size=ways, replace=False, p=self.corpus.weights)
        c = int(self.rng.choice(len(self.clusters), p=self.cluster_weights))
        cluster = self.clusters[c]
        return self.rng.choice(cluster, size=min(ways, len(cluster)), replace=False, p=self.word_weights[c])

    def _draw(self, chosen: list[str]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | None:
        """(sentence id, class) pairs of the support and the query set."""
        word_sets = self.corpus.word_sets
        taken: set[int] = set()
        support, query = [], []
        for c, word in enumerate(chosen):
            candidates = self.rng.permutation(self.corpus.containing[word])
            if self.level == "sentence":
                others = set(chosen) - {word}
                candidates = [i for i in candidates.tolist() if i not in taken and others.isdisjoint(word_sets[i])]
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

    def _encode(self, pairs: list[tuple[int, int]], chosen: list[str]) -> dict[str, torch.Tensor] | None:
        """The padded batch, or None when truncation cut a mask off (drawn again)."""
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
        encoded = self._encode_rows(rows, len(chosen))
        batch = collate(encoded, list(range(len(rows))), self.pad_id)
        if not bool((batch["input_ids"] == self.mask_id).any(1).all()):
            return None
        return batch

    def _encode_rows(self, rows: list[dict], ways: int) -> EncodedSplit:
        if self.level == "sentence":
            return TASK_TYPES.get(TYPE_OF_LEVEL["sentence"]).encode(rows, self.tokenizer,
                                                                    [str(c) for c in range(ways)], MAX_LENGTH)
        labels = ["O"] + [f"W{c}" for c in range(ways)]
        encoded = TASK_TYPES.get(TYPE_OF_LEVEL["token"]).encode(rows, self.tokenizer, labels, MAX_LENGTH)
        flat = encoded.labels.flat.astype(np.int64)
        # Only the masked positions are scored; their ids shift down past the dropped "O".
        encoded.labels.flat = np.where(flat > 0, flat - 1, -100).astype(np.int16)
        return encoded
