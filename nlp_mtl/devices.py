"""Where work runs when the user does not say: one rule for every command."""

from __future__ import annotations


def default_device() -> str:
    """'cuda' where PyTorch sees a GPU, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
