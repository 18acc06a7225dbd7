"""Kernel choices for batches whose shape changes every step.

Dynamic padding gives each batch its own sequence length. Under bf16 on CUDA, PyTorch's
scaled-dot-product attention prefers the cuDNN backend, which builds (and caches) a cuDNN graph
per input shape: with a new shape nearly every step that build dominates. Measured on an H100
(MiniLM, batch 32, CoNLL-2003, docs/bench-cuda.md): a bf16 step took 55 ms on shapes not seen
before against 23 ms once they were cached. The flash and memory-efficient kernels need no
per-shape build, so batches of varying length run on those.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def attention_for_varying_shapes(device: torch.device | str) -> ContextManager[None]:
    """A context in which attention skips the per-shape cuDNN backend (CUDA only)."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
