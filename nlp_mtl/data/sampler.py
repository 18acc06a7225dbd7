"""Which task trains next, and which examples form its next batch.

Both are pure functions of (seed, step) or (seed, task, pass), so every process draws the same
task at the same step without communicating, and a resumed run continues exactly where it
stopped from a couple of integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import SamplerConfig


class TaskSampler:
    """Task choice per step: proportional, temperature, uniform or annealed (MT-DNN/jiant)."""

    def __init__(self, names: list[str], sizes: list[int], weights: list[float], config: SamplerConfig,
                 total_steps: int, seed: int) -> None:
        self.names = list(names)
        self.sizes = np.asarray(sizes, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.config = config
        self.total_steps = max(1, total_steps)
        self.seed = seed

    def probabilities(self, step: int = 0) -> np.ndarray:
        strategy = self.config.strategy
        if strategy == "uniform":
            alpha = 0.0
        elif strategy == "proportional":
            alpha = 1.0
        elif strategy == "temperature":
            alpha = 1.0 / self.config.temperature
        else:  # annealed: from proportional towards flat as training progresses
            progress = min(1.0, step / self.total_steps)
            alpha = 1.0 - (1.0 - self.config.anneal_to) * progress
        p = self.sizes**alpha * self.weights
        return p / p.sum()

    def task_at(self, step: int) -> str:
        if len(self.names) == 1:
            return self.names[0]
        u = np.random.Generator(np.random.PCG64([self.seed, step])).random()
        cumulative = np.cumsum(self.probabilities(step))
        return self.names[min(int(np.searchsorted(cumulative, u, side="right")), len(self.names) - 1)]


@dataclass
class BatchCursor:
    pass_index: int = 0
    position: int = 0


class LengthGroupedBatches:
    """Endless batches over one task's examples; each pass is a fresh shuffle.

    With ``group_by_length``, examples are shuffled, cut into mega-batches of 50 batches,
    sorted by length inside each, and the resulting batches shuffled again: little padding,
    still random (the scheme of Hugging Face's LengthGroupedSampler).

    With ``batch_tokens``, a batch holds as many examples as fit in that many padded tokens
    (examples x longest member) instead of ``batch_size``: short sentences come in big batches
    that fill the matmuls, long ones in small batches that bound memory.
    """

    MEGA_BATCH = 50

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, group_by_length: bool = True,
                 num_shards: int = 1, batch_tokens: int | None = None) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.num_shards = num_shards
        self.batch_tokens = batch_tokens
        self.cursor = BatchCursor()
        self._pass_cache: tuple[int, list[np.ndarray]] | None = None

    def batches_for_pass(self, pass_index: int) -> list[np.ndarray]:
        if self._pass_cache and self._pass_cache[0] == pass_index:
            return self._pass_cache[1]
        rng = np.random.Generator(np.random.PCG64([self.seed, pass_index]))
        order = rng.permutation(len(self.lengths))
        if self.group_by_length:
            mega = self._examples_per_batch() * self.MEGA_BATCH
            chunks = [order[i : i + mega] for i in range(0, len(order), mega)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = self._cut(order)
        if self.num_shards > 1 and len(batches[-1]) % self.num_shards:
            # Every process needs its share of the last batch: top it up like DistributedSampler.
            missing = self.num_shards - len(batches[-1]) % self.num_shards
            batches[-1] = np.concatenate([batches[-1], order[:missing]])
        if self.group_by_length:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._pass_cache = (pass_index, batches)
        return batches

    def _examples_per_batch(self) -> int:
        if self.batch_tokens is None:
            return self.batch_size
        return max(1, self.batch_tokens // max(1, int(np.median(self.lengths))))

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        if self.batch_tokens is None:
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # Greedy: a batch grows while (members + 1) x its longest member fits the budget; every
        # process gets at least one example, even of a sentence longer than the budget.
        batches, start, longest = [], 0, 0
        for i, length in enumerate(self.lengths[order]):
            wider = max(longest, int(length))
            if i - start >= self.num_shards and (i - start + 1) * wider > self.batch_tokens:
                batches.append(order[start:i])
                start, wider = i, int(length)
            longest = wider
        batches.append(order[start:])
        return batches

    def __len__(self) -> int:
        return len(self.batches_for_pass(0))

    def next(self) -> np.ndarray:
        batches = self.batches_for_pass(self.cursor.pass_index)
        batch = batches[self.cursor.position]
        self.cursor.position += 1
        if self.cursor.position >= len(batches):
            self.cursor = BatchCursor(self.cursor.pass_index + 1, 0)
        return batch

    def next_shard(self, shard: int) -> np.ndarray:
        """This process's contiguous slice of the next global batch."""
        batch = self.next()
        return np.array_split(batch, self.num_shards)[shard] if self.num_shards > 1 else batch
