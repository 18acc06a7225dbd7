"""Head initialisation from class prototypes (ProtoMAML, Triantafillou et al. 2020).

With prototype ``p_c`` (the mean feature of class c in the support set), the linear layer
``W_c = 2 p_c / t, b_c = -||p_c||^2 / t`` scores ``x`` as ``-||x - p_c||^2 / t`` up to a term
shared by all classes: a nearest-prototype classifier that fine-tuning then improves. It works
for any label set, which is what lets one adapter initialisation serve tasks it has never seen.

The temperature ``t`` is the support set's mean squared distance to its own class prototype.
Without it, logits scale with the squared norm of the encoder's features (hundreds for MiniLM's
last layer): the softmax saturates, and a few gradient steps on such a head diverge.
"""

from __future__ import annotations

import torch

from ..model.heads import Head


def labelled_features(head: Head, hidden: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's classifier inputs with their labels: one row per scored token (token heads)
    or per example (sequence heads)."""
    features = head.features(hidden, attention_mask)
    if features.dim() == 3:
        scored = labels >= 0
        return features[scored], labels[scored]
    return features, labels


def prototype_weights(features: torch.Tensor, labels: torch.Tensor, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the nearest-prototype linear layer. Classes absent from ``labels``
    get a zero weight and a bias below every present class's: predicted only once learnt."""
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    onehot = torch.nn.functional.one_hot(labels, num_labels).to(features.dtype)  # (n, C)
    counts = onehot.sum(0)
    prototypes = (onehot.t() @ features) / counts.clamp(min=1).unsqueeze(1)
    present = counts > 0
    # Differentiable like the rest, so second-order MAML's gradient is the true one.
    spread = ((features - prototypes[labels]) ** 2).sum(1).mean()
    if float(spread.detach()) < 1e-6:  # one example per class: use the distances between prototypes instead
        kept = prototypes[present]
        spread = ((kept[:, None] - kept[None]) ** 2).sum(-1).mean() / 2
    temperature = spread.clamp(min=1e-3)
    weight = 2 * prototypes / temperature
    bias = -(prototypes * prototypes).sum(1) / temperature
    floor = bias[present].min().detach() - 1.0 if bool(present.any()) else bias.new_zeros(())
    bias = torch.where(present, bias, floor.expand_as(bias))
    return weight, bias


@torch.no_grad()
def init_head_from_prototypes(head: Head, features: torch.Tensor, labels: torch.Tensor) -> None:
    weight, bias = prototype_weights(features, labels, head.classifier.out_features)
    head.classifier.weight.copy_(weight)
    head.classifier.bias.copy_(bias)
