"""Exponential moving average of model weights (and BN buffers)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Keeps ``ema = decay * ema + (1 - decay) * model`` after every optimizer step.

    The decay is warmed up (``min(decay, (1 + n) / (10 + n))``) so early averages
    are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        msd = model.state_dict()
        for k, v in self.module.state_dict().items():
            src = msd[k].detach()
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src, alpha=1 - d)
            else:
                v.copy_(src)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"ema.{k}": v.detach().cpu() for k, v in self.module.state_dict().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        sd = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
        self.module.load_state_dict(sd)
        self.updates = updates
