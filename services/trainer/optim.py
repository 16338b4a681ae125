"""AdamW with the Hugging Face Trainer's weight-decay rule, and warmup + cosine/linear/constant learning-rate
schedules."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from shared.schemas.optimizer import OptimizerSettings
from shared.schemas.training import SFTHyperparameters


def no_decay_parameters(model: torch.nn.Module) -> set[int]:
    """The ids of the biases and normalisation-layer weights (LayerNorm, RMSNorm, ...): shrinking them toward
    zero only hurts (a norm's scale is meant to stay near 1), so weight decay spares them, as in TRL and the
    Hugging Face Trainer."""
    spared = set()
    for module in model.modules():
        is_norm = "norm" in type(module).__name__.lower()
        for name, parameter in module.named_parameters(recurse=False):
            if is_norm or name.endswith("bias"):
                spared.add(id(parameter))
    return spared


def build_optimizer(model: torch.nn.Module, settings: OptimizerSettings, *, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over the trained tensors (all weights, or a LoRA adapter's), in two groups: decayed, then spared.
    The groups and their order follow from the model alone, so a saved optimizer state loads into a rebuilt one."""
    spared = no_decay_parameters(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trained if id(p) not in spared], "weight_decay": settings.weight_decay},
        {"params": [p for p in trained if id(p) in spared], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=settings.learning_rate, betas=(settings.adam_beta1, settings.adam_beta2),
        eps=settings.adam_epsilon, fused=fused,
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
