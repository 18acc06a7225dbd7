"""Task heads: small modules on top of the shared encoder's hidden states.

A head implements ``forward(hidden, attention_mask) -> logits`` and ``loss(logits, labels)``,
and declares its YAML options as a dataclass so that a typo in ``head:`` is an error, not a
silently ignored key. A new head type is one class with ``@HEADS.register("name")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import HEADS
from ..schema import from_mapping


class Head(nn.Module):
    """``forward = classifier(dropout(features(hidden)))``: ``features`` gives what the final
    linear layer ``classifier`` reads (per token or per sequence), so a few-shot head can be
    initialised from class prototypes of those features."""

    Options: type = object
    classifier: nn.Linear
    dropout: nn.Module

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(hidden, attention_mask)))

    @classmethod
    def build(cls, hidden_size: int, num_labels: int, options: dict[str, Any], where: str = "head") -> Head:
        return cls(hidden_size, num_labels, from_mapping(cls.Options, options, where))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


@dataclass(frozen=True)
class TokenHeadOptions:
    type: str = "token_classification"
    dropout: float = 0.1


@HEADS.register("token_classification")
class TokenClassificationHead(Head):
    Options = TokenHeadOptions

    def __init__(self, hidden_size: int, num_labels: int, options: TokenHeadOptions) -> None:
        super().__init__()
        self.dropout = nn.Dropout(options.dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return hidden


@dataclass(frozen=True)
class NearestNeighbourHeadOptions:
    type: str = "token_nearest_neighbour"
    # Size of the memory of support tokens. Set (and the memory filled) by `nlp-mtl adapt
    # --token-head nearest`; this head is not trained.
    support_tokens: int = 0
    # A class's logit is its best cosine similarity times this, so that softmax scores spread
    # like a trained linear head's instead of all sitting near 1/C.
    scale: float = 20.0

    def validate(self, where: str) -> None:
        if self.support_tokens < 1:
            raise ConfigError(f"{where}.support_tokens: expected a count >= 1, got {self.support_tokens}. This head is "
                              "filled from a support set by `nlp-mtl adapt --token-head nearest`; to train a token "
                              "task, use type: token_classification.")
        if not self.scale > 0:
            raise ConfigError(f"{where}.scale: expected a number > 0, got {self.scale}.")


@HEADS.register("token_nearest_neighbour")
class NearestNeighbourTokenHead(Head):
    """NNShot (Yang and Katiyar 2020): a token takes the label of the most similar support
    token (cosine similarity of the encoder's features). Few labelled sentences hold few
    examples of each entity type, and one linear layer fitted to them averages a class's
    tokens into one direction; a nearest neighbour keeps every one of them."""

    Options = NearestNeighbourHeadOptions

    def __init__(self, hidden_size: int, num_labels: int, options: NearestNeighbourHeadOptions) -> None:
        super().__init__()
        self.num_labels, self.scale = num_labels, options.scale
        self.dropout = nn.Identity()
        self.register_buffer("memory", torch.zeros(options.support_tokens, hidden_size))
        self.register_buffer("memory_labels", torch.zeros(options.support_tokens, dtype=torch.long))

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return hidden

    @torch.no_grad()
    def remember(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Fill the memory with the support tokens' features (one row per scored token)."""
        if features.shape != self.memory.shape:
            raise ValueError(f"expected {tuple(self.memory.shape)} support features, got {tuple(features.shape)}")
        self.memory.copy_(nn.functional.normalize(features.float(), dim=-1))
        self.memory_labels.copy_(labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        similarity = nn.functional.normalize(hidden.float(), dim=-1) @ self.memory.t()  # (batch, tokens, memory)
        # Below any cosine similarity: the logit of a class with no support token.
        logits = similarity.new_full((*similarity.shape[:-1], self.num_labels), -2.0)
        logits.scatter_reduce_(-1, self.memory_labels.expand_as(similarity), similarity, "amax")
        return logits * self.scale


@dataclass(frozen=True)
class SequenceHeadOptions:
    type: str = "sequence_classification"
    dropout: float = 0.1
    # 'mean' matches how sentence encoders such as the embedded MiniLM were pretrained;
    # 'cls' is BERT's [CLS] vector through a tanh layer, as in BertForSequenceClassification.
    pooling: Literal["mean", "cls"] = "mean"


@HEADS.register("sequence_classification")
class SequenceClassificationHead(Head):
    Options = SequenceHeadOptions

    def __init__(self, hidden_size: int, num_labels: int, options: SequenceHeadOptions) -> None:
        super().__init__()
        self.pooling = options.pooling
        if self.pooling == "cls":
            self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(options.dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return torch.tanh(self.dense(hidden[:, 0]))
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@dataclass(frozen=True)
class MultiLabelHeadOptions:
    type: str = "multi_label_classification"
    dropout: float = 0.1
    pooling: Literal["mean", "cls"] = "mean"
    # A label is predicted where its sigmoid probability is at least this; saved with the model,
    # so `evaluate`, `predict` and the export's config all use the value training used.
    threshold: float = 0.5

    def validate(self, where: str) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"{where}.threshold: expected a probability in (0, 1), got {self.threshold}.")


@HEADS.register("multi_label_classification")
class MultiLabelClassificationHead(SequenceClassificationHead):
    """A sequence head with one independent sigmoid per label: pooled like its parent (so it
    exports the same way), trained with binary cross-entropy on multi-hot targets."""

    Options = MultiLabelHeadOptions

    def __init__(self, hidden_size: int, num_labels: int, options: MultiLabelHeadOptions) -> None:
        super().__init__(hidden_size, num_labels, options)  # type: ignore[arg-type]
        self.threshold = options.threshold

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
