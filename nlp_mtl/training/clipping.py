"""Gradient clipping by global norm, folded into the fused AdamW step where it can be.

``torch.nn.utils.clip_grad_norm_`` reads every gradient once for the norm and then reads and
writes every gradient again to scale it, even when the norm is below the limit (it multiplies
by a clamped 1.0). For a MiniLM, half of whose 22.7M parameters are the word embeddings, those
two passes took 12 ms of a 125 ms bf16 CPU step, and only the scale had to change.

Here the norm is a sum of per-tensor dot products, which reads each gradient once through the
BLAS kernel (2.6x faster than ``torch._foreach_norm`` on CPU, and closer to the float64 norm),
and the scale goes to the fused AdamW kernel as its ``grad_scale`` (the hook PyTorch's
GradScaler uses: the kernel divides each gradient by it as it reads it), so no extra pass over
the gradients is made at all. The update is the one clipping would give, to float rounding.

Folding needs the fused kernel, no fp16 loss scaler (which owns ``grad_scale``) and plain data
parallelism; anywhere else (DeepSpeed, FSDP, a non-fused optimizer) accelerate clips as before.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import DistributedType

_FOLDABLE = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


def global_grad_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """The L2 norm of all gradients together, accumulated in float32 per tensor."""
    squares = [torch.dot(g.reshape(-1), g.reshape(-1)).float() for g in (p.grad for p in parameters) if g is not None]
    if not squares:
        return torch.zeros(())
    return torch.stack([s.to(squares[0].device) for s in squares]).sum().sqrt()


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def can_fold(accelerator: Any, optimizer: torch.optim.Optimizer) -> bool:
    inner = _inner(optimizer)
    return (isinstance(inner, torch.optim.Adam | torch.optim.AdamW) and bool(inner.defaults.get("fused"))
            and getattr(accelerator, "scaler", None) is None
            and getattr(accelerator, "distributed_type", DistributedType.NO) in _FOLDABLE)


class GradientClipper:
    """``clip()`` before the optimizer step, ``release()`` after it."""

    def __init__(self, accelerator: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 max_norm: float) -> None:
        self.accelerator, self.model, self.max_norm = accelerator, model, max_norm
        self.optimizer = _inner(optimizer)
        self.fold = max_norm > 0 and can_fold(accelerator, optimizer)

    def clip(self) -> None:
        if self.max_norm <= 0:
            return
        if not self.fold:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_norm)
            return
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return
        # clip_grad_norm_'s coefficient, max_norm / (norm + 1e-6) capped at 1, as a divisor;
        # kept a tensor so that a GPU step does not wait for the norm. A non-finite norm
        # gives a NaN or infinite divisor, as it gives clip_grad_norm_ a NaN or zero factor.
        divisor = ((global_grad_norm(params) + 1e-6) / self.max_norm).clamp(min=1.0)
        self.optimizer.grad_scale = divisor.to(device=params[0].device, dtype=torch.float32)

    def release(self) -> None:
        """The scale applies to one step only."""
        if self.fold:
            self.optimizer.grad_scale = None
