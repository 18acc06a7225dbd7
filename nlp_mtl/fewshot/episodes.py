"""Few-shot sampling: N-way K-shot episodes for meta-training, K-shot support sets for ``adapt``.

A *class* is what K counts: the label of a sequence task, the entity type (PER, NP, ...) of an
IOB tagging task, the tag itself for plain per-token tags (POS). A sentence holds several
classes, so token tasks are sampled greedily (as in Few-NERD): classes are visited rarest
first and a sentence is added only while a class it contains still has fewer than K; every
class then appears in at least K support sentences, and usually not many more. Sequence tasks
get exactly K examples per class. Query examples never overlap the support.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.encoding import EncodedSplit

OTHER = "O"


def tag_class(tag: str, plain_tags: bool) -> str | None:
    """The class a token tag counts for: 'B-PER' -> 'PER'; plain tags count as themselves."""
    if tag == OTHER:
        return None
    if plain_tags:
        return tag
    return tag.split("-", 1)[1] if tag[:2] in ("B-", "I-", "E-", "S-") else tag


@dataclass
class ClassIndex:
    """Which classes each training example contains."""

    classes: list[str]                      # all classes of the task, in label order
    per_example: list[frozenset[int]]       # indices into ``classes``
    token_level: bool
    plain_tags: bool

    @classmethod
    def build(cls, labels: list[str], encoded: EncodedSplit, token_level: bool, plain_tags: bool) -> ClassIndex:
        if not token_level:
            ids = np.asarray(encoded.labels)
            return cls(list(labels), [frozenset([int(i)]) for i in ids], False, plain_tags)
        classes = list(dict.fromkeys(c for c in (tag_class(t, plain_tags) for t in labels) if c is not None))
        position = {c: i for i, c in enumerate(classes)}
        label_class = np.array([position.get(tag_class(t, plain_tags), -1) for t in labels] + [-1])
        per_example = []
        for i in range(len(encoded)):
            ids = np.asarray(encoded.labels[i])
            found = label_class[ids[ids >= 0]]
            per_example.append(frozenset(int(c) for c in found if c >= 0))
        return cls(classes, per_example, True, plain_tags)

    def counts(self) -> np.ndarray:
        counts = np.zeros(len(self.classes), dtype=np.int64)
        for found in self.per_example:
            for c in found:
                counts[c] += 1
        return counts


def sample_k_shot(index: ClassIndex, classes: list[int], shots: int, rng: np.random.Generator,
                  exclude: set[int] | None = None) -> list[int]:
    """Example indices holding each of ``classes`` at least ``shots`` times (exactly, for
    sequence tasks), or as often as the data allows. Only examples whose classes all lie in
    ``classes`` are taken for sequence tasks; token tasks relabel the others to O."""
    exclude = exclude or set()
    wanted = set(classes)
    order = rng.permutation(len(index.per_example))
    candidates: dict[int, list[int]] = {c: [] for c in classes}
    for i in order.tolist():
        if i in exclude:
            continue
        for c in index.per_example[i]:
            if c in wanted:
                candidates[c].append(i)
    have = dict.fromkeys(classes, 0)
    chosen: list[int] = []
    taken: set[int] = set()
    # Rarest first: frequent classes ride along in the sentences picked for rare ones. The first
    # pass skips sentences that would push another class past K; the second fills what is left.
    for c in sorted(classes, key=lambda c: len(candidates[c])):
        for strict in (True, False):
            for i in candidates[c]:
                if have[c] >= shots:
                    break
                if i in taken or (strict and any(have[o] >= shots for o in index.per_example[i] & wanted)):
                    continue
                taken.add(i)
                chosen.append(i)
                for o in index.per_example[i] & wanted:
                    have[o] += 1
    return chosen


@dataclass
class EpisodeBatches:
    """One episode, ready to run, whatever made it (a task's labels or masked words): the head
    type and width, and the padded support and query batches."""

    source: str
    head: str
    head_options: dict
    num_labels: int
    support: dict[str, torch.Tensor]
    query: dict[str, torch.Tensor]
    # The classes' names, and which examples (of the task's train split, or of the masked-word
    # corpus) the support and query hold.
    classes: list[str] = field(default_factory=list)
    support_examples: list[int] = field(default_factory=list)
    query_examples: list[int] = field(default_factory=list)


@dataclass
class Episode:
    task: str
    classes: list[str]      # the classes drawn for this episode
    labels: list[str]       # what the episode head predicts (token tasks: O + tags of the classes)
    support: list[int]
    query: list[int]
    label_map: np.ndarray   # task label id -> episode label id

    def remap(self, labels: np.ndarray) -> np.ndarray:
        """Task label ids to episode label ids; -100 (unscored) stays."""
        out = np.full_like(labels, -100)
        scored = labels >= 0
        out[scored] = self.label_map[labels[scored]]
        return out


def episode_labels(task_labels: list[str], chosen: list[str], index: ClassIndex) -> tuple[list[str], np.ndarray]:
    """Episode label names and the map from task label ids to them."""
    if not index.token_level:
        names = list(chosen)
        position = {c: i for i, c in enumerate(names)}
        return names, np.array([position.get(t, -100) for t in task_labels])
    names = [OTHER] + [t for t in task_labels if tag_class(t, index.plain_tags) in set(chosen)]
    position = {t: i for i, t in enumerate(names)}
    return names, np.array([position.get(t, 0) for t in task_labels])


class EpisodeSampler:
    """N-way K-shot episodes from one task's train split, reproducible from a seed."""

    def __init__(self, task: str, task_labels: list[str], index: ClassIndex, ways: int, shots: int,
                 query_shots: int, seed: int = 0, min_ways: int | None = None) -> None:
        self.task, self.task_labels, self.index = task, task_labels, index
        self.ways, self.shots, self.query_shots = ways, shots, query_shots
        # Episodes of varying width (min_ways..ways) make more distinct label sets out of few tasks.
        self.min_ways = min(min_ways or ways, ways)
        self.rng = np.random.default_rng(seed)
        counts = index.counts()
        # Only classes that can fill both the support and the query set are drawn.
        self.eligible = [c for c in range(len(index.classes)) if counts[c] >= shots + query_shots]
        if len(self.eligible) < 2:
            raise ValueError(f"task '{task}': fewer than 2 classes have {shots + query_shots} training examples; "
                             "lower meta.shots/meta.query_shots.")

    def reseed(self, seed: int | list[int]) -> None:
        """Draw the next episodes from ``seed``: meta-training makes each episode a function of
        its step, so a resumed run draws what the uninterrupted one drew."""
        self.rng = np.random.default_rng(seed)

    def sample(self) -> Episode:
        top = min(self.ways, len(self.eligible))
        ways = int(self.rng.integers(min(self.min_ways, top), top + 1))
        classes = sorted(self.rng.choice(self.eligible, size=ways, replace=False).tolist())
        support = sample_k_shot(self.index, classes, self.shots, self.rng)
        query = sample_k_shot(self.index, classes, self.query_shots, self.rng, exclude=set(support))
        chosen = [self.index.classes[c] for c in classes]
        labels, label_map = episode_labels(self.task_labels, chosen, self.index)
        return Episode(self.task, chosen, labels, support, query, label_map)


def support_set(task_labels: list[str], index: ClassIndex, shots: int, seed: int) -> tuple[list[int], dict[str, int]]:
    """``adapt``'s training set: K examples of every class of the task (all classes, task labels
    unchanged), and how many each class got (fewer than K where train has fewer)."""
    rng = np.random.default_rng(seed)
    classes = [c for c, n in enumerate(index.counts()) if n > 0]
    chosen = sample_k_shot(index, classes, shots, rng)
    got = dict.fromkeys(index.classes, 0)
    for i in chosen:
        for c in index.per_example[i]:
            got[index.classes[c]] += 1
    return chosen, got
