"""A contrastive stage for few-shot sentence tasks, as SetFit trains its sentence encoder.

SetFit (Tunstall et al. 2022) is what a user with 8 or 16 labelled sentences per class reaches
for: it fine-tunes a sentence encoder on pairs drawn from the support set (same class: cosine
similarity 1, different classes: 0) before fitting a classifier on the embeddings. Pairs turn K
examples per class into O(K^2) training signals, and the cosine objective shapes the pooled
embedding that the prototype head then reads, instead of only moving a decision boundary.

With ``pair_sampling: in_batch`` the same objective is taken over every pair of a batch of
support sentences instead of over sampled pairs: a batch of 32 sentences holds 496 pairs where
SetFit's batch of 32 holds 16 (supervised contrastive fine-tuning, Gunel et al. 2021, draws its
signal the same way).

Here the pairs train the task's adapter (or, with ``--init full``, the encoder) through the
head's own pooling; adapt then initialises the head from the new prototypes and fine-tunes as
before. Both stages run on the training engine.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.encoding import collate
from ..data.pipeline import PreparedTask
from ..model import MultiTaskModel
from ..training.engine import Batch


class PairBatches:
    """The engine's batch source: for each of ``iterations`` rounds, every support example is
    paired once with another of its class (target 1) and once with one of another class
    (target 0), SetFit's sampling; shuffled, in batches of ``batch_size`` pairs. Both sides of
    a batch go through the encoder as one padded batch."""

    def __init__(self, task: PreparedTask, indices: list[int], iterations: int, batch_size: int, seed: int,
                 pad_id: int, device: torch.device) -> None:
        self.split, self.name, self.pad_id, self.device = task.encoded["train"], task.name, pad_id, device
        labels = np.asarray(self.split.labels)[indices]
        rng = np.random.default_rng(seed + 104729)  # apart from the support-set and batch-order draws
        # Partners listed once per example, not per example and round (TREC-50: ~700 examples).
        partners = [([j for j, l in zip(indices, labels) if l == label and j != i] or [i],
                     [j for j, l in zip(indices, labels) if l != label]) for i, label in zip(indices, labels)]
        pairs: list[tuple[int, int, float]] = []
        for _ in range(iterations):
            for i, (same, other) in zip(indices, partners):
                pairs.append((i, int(rng.choice(same)), 1.0))
                if other:
                    pairs.append((i, int(rng.choice(other)), 0.0))
        order = rng.permutation(len(pairs))
        self.chunks = [[pairs[k] for k in order[s : s + batch_size]] for s in range(0, len(pairs), batch_size)]

    def __len__(self) -> int:
        return len(self.chunks)

    def batch_at(self, micro_step: int) -> Batch:
        chunk = self.chunks[micro_step]
        both = [a for a, _, _ in chunk] + [b for _, b, _ in chunk]
        inputs = {k: v.to(self.device) for k, v in collate(self.split, both, self.pad_id).items() if k != "labels"}
        inputs["target"] = torch.tensor([t for _, _, t in chunk], device=self.device)
        return Batch(self.name, inputs, len(both), int(self.split.lengths[both].sum()))

    def cursors(self) -> dict[str, list[int]]:
        return {}


def pooled_features(model: MultiTaskModel, task: str, inputs: dict[str, torch.Tensor], autocast) -> torch.Tensor:
    """The head's pooled features of a batch, through the task's adapter, in fp32."""
    with autocast():
        hidden = model.encode_through(model.tasks[task].adapter, inputs["input_ids"], inputs["attention_mask"],
                                      inputs.get("token_type_ids"))
        return model.heads[task].features(hidden, inputs["attention_mask"]).float()


class CosinePairLoss:
    """Mean squared error between the cosine similarity of a pair's pooled embeddings (the
    head's features, through the task's adapter) and its target: SetFit's CosineSimilarityLoss."""

    def __init__(self, model: MultiTaskModel, task: str, autocast) -> None:
        self.model, self.task, self.autocast = model, task, autocast

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, float]:
        x = batch.inputs
        features = pooled_features(self.model, self.task, x, self.autocast)
        a, b = features.chunk(2)
        similarity = torch.nn.functional.cosine_similarity(a, b)
        return torch.nn.functional.mse_loss(similarity, x["target"]), 1.0


class InBatchPairLoss:
    """SetFit's objective over every pair of a labelled batch: the mean squared error between
    each pair's cosine similarity and 1 (same class) or 0 (different classes), positives and
    negatives weighted half and half as SetFit samples them one for one."""

    def __init__(self, model: MultiTaskModel, task: str, autocast) -> None:
        self.model, self.task, self.autocast = model, task, autocast

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, float]:
        x = batch.inputs
        features = pooled_features(self.model, self.task, x, self.autocast)
        unit = torch.nn.functional.normalize(features, dim=-1)
        similarity = unit @ unit.t()
        labels = x["labels"]
        upper = torch.ones_like(similarity, dtype=torch.bool).triu(diagonal=1)  # each pair once, no self-pairs
        equal = labels[:, None] == labels[None, :]
        positives, negatives = (equal & upper).float(), (~equal & upper).float()
        # Masked means rather than boolean indexing: no host sync to learn how many pairs there are.
        counts = torch.stack([positives.sum(), negatives.sum()])
        sums = torch.stack([((similarity - 1) ** 2 * positives).sum(), (similarity ** 2 * negatives).sum()])
        means = sums / counts.clamp(min=1)
        # The mean of the kinds present: a batch of one class has positives only, of one sentence none.
        return means.sum() / (counts > 0).sum().clamp(min=1), 1.0
