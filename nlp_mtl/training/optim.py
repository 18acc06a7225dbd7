"""AdamW with parameter groups and a warmup + linear-decay schedule."""

from __future__ import annotations

import torch
from torch import nn

from ..config import AdapterConfig, TrainingConfig


def build_optimizer(model: nn.Module, config: TrainingConfig, adapters: AdapterConfig | None = None) -> torch.optim.Optimizer:
    """Biases and LayerNorm weights get no weight decay; heads may have their own LR, adapters
    theirs (``adapters.lr``). With a frozen encoder, heads default to the adapters' rate: both
    start from scratch and are small."""
    adapter_lr = adapters.lr if adapters is not None and adapters.enabled else None
    head_default = adapter_lr if adapter_lr is not None and not adapters.train_backbone else config.lr
    rates = {"encoder": config.lr, "heads": config.head_lr or head_default, "adapters": adapter_lr or config.lr}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = name.split(".", 1)[0] if name.startswith(("heads.", "adapters.")) else "encoder"
        no_decay = param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
        groups.setdefault((part, no_decay), []).append(param)
    param_groups = [
        {"params": params, "lr": rates[part], "weight_decay": 0.0 if no_decay else config.weight_decay}
        for (part, no_decay), params in sorted(groups.items())
    ]
    # The fused kernel (CPU and CUDA) is ~4x faster than the per-tensor loop PyTorch otherwise
    # picks on CPU, where that loop took 15 % of a MiniLM training step.
    try:
        return torch.optim.AdamW(param_groups, lr=config.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups, lr=config.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
