"""AdamW with decay only on matrices, and warmup + cosine/linear/constant learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from shared.schemas.training import SFTHyperparameters


def build_optimizer(model: torch.nn.Module, hp: SFTHyperparameters, *, fused: bool = False) -> torch.optim.AdamW:
    """Norm weights and biases (1-D tensors) get no weight decay: shrinking them only hurts."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": hp.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=hp.learning_rate, betas=(hp.adam_beta1, hp.adam_beta2),
        eps=hp.adam_epsilon, fused=fused,
    )


def lr_factor(step: int, *, total_steps: int, hp: SFTHyperparameters) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    warmup = math.ceil(hp.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if hp.lr_scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    floor = hp.min_lr_ratio
    if hp.lr_scheduler == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, hp: SFTHyperparameters) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps=total_steps, hp=hp))
