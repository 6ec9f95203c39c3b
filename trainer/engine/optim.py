"""Optimizers and learning-rate schedules.

Weight decay is applied to conv/linear weights only: BatchNorm parameters and
biases are excluded, the usual practice that keeps decay from fighting
normalisation. Schedules are per optimizer step so the curve does not depend
on the number of steps per epoch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainer.config import OptimConfig, ScheduleConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into decayed (weights of rank ≥ 2) and non-decayed (BN, biases)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    total = max(1, total_steps)
    final = cfg.final_lr_ratio
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "onecycle":
        # Linear rise from 1/25 of the peak, then linear fall to the final ratio:
        # the fast-training schedule that works best for short CIFAR runs.
        peak_step = max(1, int(cfg.pct_start * total))
        if step < peak_step:
            return 1 / 25 + (1 - 1 / 25) * step / peak_step
        frac = (step - peak_step) / max(1, total - peak_step)
        return 1.0 + (final - 1.0) * min(1.0, frac)
    # cosine with linear warm-up
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def set_lr(optimizer: torch.optim.Optimizer, peak_lr: float, factor: float) -> float:
    lr = peak_lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
