"""Model zoo: a registry of model builders by name.

Every builder takes ``num_classes``, ``width_mult`` and ``in_channels`` so a
checkpoint's metadata (name + args) is enough to rebuild the module.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from edgesmith.errors import ConfigError
from trainer.models.resnet import resnet8, resnet18

MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet8": resnet8,
}


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(MODEL_BUILDERS)


def build_model(name: str, *, num_classes: int, width_mult: float = 1.0, in_channels: int = 3) -> nn.Module:
    """Build a registered model; an unknown name lists the valid ones."""
    if name not in MODEL_BUILDERS:
        raise ConfigError(f"unknown model '{name}'; choose from: {', '.join(model_names())}")
    if width_mult <= 0:
        raise ConfigError(f"width_mult must be > 0, got {width_mult}")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
    return MODEL_BUILDERS[name](num_classes=num_classes, width_mult=width_mult, in_channels=in_channels)
