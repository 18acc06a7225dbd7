"""Kernel choices where PyTorch's defaults are slow for this workload.

Attention for batches whose shape changes every step. Dynamic padding gives each batch its own sequence length. Under bf16 on CUDA, PyTorch's
scaled-dot-product attention prefers the cuDNN backend, which builds (and caches) a cuDNN graph
per input shape: with a new shape nearly every step that build dominates. Measured on an H100
(MiniLM, batch 32, CoNLL-2003, docs/bench-cuda.md): a bf16 step took 55 ms on shapes not seen
before against 23 ms once they were cached. The flash and memory-efficient kernels need no
per-shape build, so batches of varying length run on those.

Dropout on the CPU: see ``fast_dropout`` below. The word-embedding gradient on the CPU: see
``ReusedGradEmbedding``.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch
from torch import nn


def attention_for_varying_shapes(device: torch.device | str) -> ContextManager[None]:
    """A context in which attention skips the per-shape cuDNN backend (CUDA only)."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


# ---- dropout on the CPU ------------------------------------------------------------------
#
# PyTorch's CPU dropout draws one 32-bit Mersenne-Twister number per element (bernoulli_), on one
# thread: in a MiniLM bf16 training step on a 2-core AMX Xeon it took 23 % of the step, more
# than all the feed-forward matmuls (torch.profiler, batch 32 x 32-64 tokens). Drawing 64-bit
# words and using each as four 16-bit uniforms is five times faster (2.8 ms against 14.4 ms
# for 2.4M elements) and keeps the same statistics: a keep probability exact to 1/65,536 and
# the matching 1/(1 - p) scale. GPUs draw with Philox in parallel already and keep theirs.

_LEVELS = 1 << 16


class _CpuDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.numel()
        words = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        dropped = round(p * _LEVELS)
        # Kept as bytes: bool -> float conversion is a slow path on the CPU, uint8 -> float is not.
        keep = (words.view(torch.int16)[:n] >= dropped - _LEVELS // 2).view(x.shape).view(torch.uint8)
        ctx.save_for_backward(keep)
        ctx.scale = _LEVELS / (_LEVELS - dropped)
        return x * keep.to(x.dtype).mul_(ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad * keep.to(grad.dtype).mul_(ctx.scale), None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``nn.functional.dropout``, drawn faster on the CPU (same distribution; other RNG stream)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return nn.functional.dropout(x, p, training=True)
    return _CpuDropout.apply(x, p)


class FastDropout(nn.Dropout):
    """A drop-in ``nn.Dropout`` (same ``p``, same state dict) that draws with ``fast_dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def _attention_with_fast_dropout(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                 scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except in CPU training with attention dropout: there SDPA
    falls back to its unfused path and draws with bernoulli_, so the same path runs here with
    ``fast_dropout`` instead."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # Anything beyond plain bidirectional attention (causal, grouped keys, position biases) stays SDPA's.
    unusual = (kwargs.get("is_causal") or getattr(module, "is_causal", False)
               or getattr(module, "num_key_value_groups", 1) > 1 or kwargs.get("position_bias") is not None)
    if dropout == 0.0 or query.device.type != "cpu" or unusual:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scores = torch.matmul(query, key.transpose(-2, -1)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:  # boolean (True = attend) or additive, as transformers' masks come
        scores = (scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min) if attention_mask.dtype == torch.bool
                  else scores + attention_mask)
    probs = fast_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


ATTENTION_NAME = "nlp_mtl_sdpa"


def use_fast_cpu_dropout(model: nn.Module) -> int:
    """Swap every ``nn.Dropout`` in ``model`` for ``FastDropout`` and route SDPA attention through
    ``_attention_with_fast_dropout``; returns how many dropout layers were swapped. Weights,
    state dicts and saved configs are unchanged (the attention choice is not serialised)."""
    swapped = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace).train(child.training))
                swapped += 1
    for sub in model.modules():
        config = getattr(sub, "config", None)
        if getattr(config, "_attn_implementation", None) == "sdpa" and hasattr(sub, "set_attn_implementation"):
            _register_attention()
            sub.set_attn_implementation(ATTENTION_NAME)
    return swapped


def _register_attention() -> None:
    """Our attention under our own name, with SDPA's mask format (registering twice is harmless)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, _attention_with_fast_dropout)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


# ---- the word-embedding gradient on the CPU ------------------------------------------------
#
# The gradient of the word-embedding matrix is dense: every backward allocates a new matrix
# (30,522 x 384 fp32 on MiniLM, 47 MB, half the model's parameters), zero-fills it and adds the
# batch's few hundred rows into it. On the CPU an allocation that big comes from the kernel as
# fresh pages, so the zero fill page-faults through all of it: 15 ms, against 1 ms to zero a
# matrix already in memory (2-core EPYC), and 18.6 ms of a 165 ms compiled bf16 step in
# torch.profiler. So the lookup hands autograd a sparse gradient (the batch's rows), which it
# adds in place into a dense gradient that this module installs, zeroed, when backward reaches
# a weight that has none, and keeps between steps. The optimizer sees the same dense gradient
# as before.


class ReusedGradEmbedding(nn.Embedding):
    """A drop-in ``nn.Embedding`` (same weight Parameter, same state dict) whose CPU training
    gradient lands in a dense matrix kept across steps. Elsewhere (a GPU, whose caching
    allocator already reuses memory; several processes, whose gradient all-reduce expects a
    gradient from autograd alone; no gradient wanted) it is ``nn.Embedding``."""

    _kept_grad: torch.Tensor | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (self.weight.device.type != "cpu" or not torch.is_grad_enabled() or not self.weight.requires_grad
                or _several_processes()):
            return super().forward(input)
        return self._lookup_into_kept_grad(input)

    # Eager even inside a compiled step: it sets .grad, and its sparse backward is not traced.
    @torch.compiler.disable
    def _lookup_into_kept_grad(self, input: torch.Tensor) -> torch.Tensor:
        output = nn.functional.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                                         self.scale_grad_by_freq, sparse=True)
        # Installed when backward reaches the lookup, not here: a forward that no backward
        # follows (inference with gradients on) leaves .grad None, as nn.Embedding does, so an
        # optimizer step skips the weight instead of decaying it with a zero gradient. (A
        # torch.autograd.grad through the lookup still installs it, zeroed.)
        output.register_hook(self._install_kept_grad)
        return output

    def _install_kept_grad(self, output_grad: torch.Tensor) -> None:
        weight = self.weight
        if weight.grad is not None:  # accumulating micro-steps, or a second lookup this step
            return
        kept = self._kept_grad
        if kept is None or kept.shape != weight.shape or kept.dtype != weight.dtype or kept.device != weight.device:
            kept = torch.zeros_like(weight)
            object.__setattr__(self, "_kept_grad", kept)  # not a buffer: no state dict entry
        else:
            kept.zero_()
        weight.grad = kept


def _several_processes() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def use_reused_embedding_grad(model: nn.Module) -> bool:
    """Swap the input embedding of every encoder in ``model`` (whatever ``get_input_embeddings``
    returns, where it is a plain ``nn.Embedding``) for ``ReusedGradEmbedding``, sharing its
    weight Parameter. Returns whether one was swapped."""
    swapped = False
    for sub in list(model.modules()):
        get, put = getattr(sub, "get_input_embeddings", None), getattr(sub, "set_input_embeddings", None)
        if get is None or put is None:
            continue
        try:
            old = get()
        except (NotImplementedError, AttributeError):
            continue
        if type(old) is not nn.Embedding or old.sparse:  # a sparse one already gives what its user wants
            continue
        new = ReusedGradEmbedding(old.num_embeddings, old.embedding_dim, old.padding_idx, old.max_norm,
                                  old.norm_type, old.scale_grad_by_freq, _weight=old.weight.data)
        new.weight = old.weight  # the same Parameter object: optimizers and ties keep working
        new.train(old.training)
        put(new)
        swapped = True
    return swapped


def use_fast_cpu_training(model: nn.Module) -> None:
    """Every CPU training speed-up of this module: the fast dropout and the reused embedding gradient."""
    use_fast_cpu_dropout(model)
    use_reused_embedding_grad(model)
