"""Tokenised splits as ragged integer arrays, and the collate function that pads them.

Each split is tokenised once, in large batches with the fast tokenizer. Sequences are stored
CSR-style (one flat array plus offsets), so a batch is a handful of numpy slices: no Python loop
over tokens when batching, and memory is a few bytes per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch


@dataclass
class Ragged:
    """A list of variable-length int arrays stored as one flat array and offsets."""

    flat: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]], dtype: type = np.int32) -> Ragged:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((x for r in rows for x in r), dtype=dtype, count=int(offsets[-1]))
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, indices: Sequence[int]) -> Ragged:
        return Ragged.from_lists([self[i] for i in indices], dtype=self.flat.dtype)

    def pad(self, indices: Sequence[int], width: int, value: int) -> np.ndarray:
        out = np.full((len(indices), width), value, dtype=np.int64)
        for row, i in enumerate(indices):
            seq = self[i]
            out[row, : len(seq)] = seq
        return out


@dataclass
class EncodedSplit:
    input_ids: Ragged
    # Token tasks: per-token label ids (-100 where not scored). Sequence tasks: one id each.
    labels: Ragged | np.ndarray
    token_type_ids: Ragged | None = None
    # Token tasks: the word index of each scored position, to map predictions back to words.
    word_index: Ragged | None = None
    truncated: int = 0
    # Encoded as sentence pairs: decided once, here, from the rows (a head, predict and the
    # export read it from the encoding instead of asking the rows again).
    pairs: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @cached_property
    def lengths(self) -> np.ndarray:
        # Read by every collate call: computed once, not per batch.
        return self.input_ids.lengths()

    def take(self, indices: Sequence[int]) -> EncodedSplit:
        """The examples at ``indices``, in that order, as a split of their own."""
        def part(x: Ragged | np.ndarray | None) -> Ragged | np.ndarray | None:
            return x if x is None else x.take(indices) if isinstance(x, Ragged) else np.asarray(x)[list(indices)]

        return EncodedSplit(part(self.input_ids), part(self.labels), part(self.token_type_ids), part(self.word_index),
                            truncated=0, pairs=self.pairs)


def collate(split: EncodedSplit, indices: Sequence[int], pad_token_id: int,
            multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Pad the examples at ``indices`` to their longest member (dynamic padding), rounded up to
    a multiple of ``multiple_of``."""
    lengths = split.lengths[np.asarray(indices)]
    width = -(-int(lengths.max()) // multiple_of) * multiple_of
    input_ids = split.input_ids.pad(indices, width, pad_token_id)
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy((np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)),
    }
    if split.token_type_ids is not None:
        batch["token_type_ids"] = torch.from_numpy(split.token_type_ids.pad(indices, width, 0))
    batch["labels"] = collate_labels(split, indices, width)
    return batch


def collate_labels(split: EncodedSplit, indices: Sequence[int], width: int) -> torch.Tensor:
    """The labels of the examples at ``indices``; token labels padded to ``width`` with -100."""
    if isinstance(split.labels, Ragged):
        return torch.from_numpy(split.labels.pad(indices, width, -100))
    return torch.from_numpy(split.labels[np.asarray(indices)].astype(np.int64))
