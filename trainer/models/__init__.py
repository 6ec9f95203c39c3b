"""Model zoo: a registry of model builders by name.

Every builder takes ``num_classes``, ``width_mult`` and ``in_channels`` so a
checkpoint's metadata (name + args) is enough to rebuild the module.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from edgesmith.errors import ConfigError
from trainer.models.nanodet import DETECTOR_BUILDERS, shufflenetv2
from trainer.models.resnet import resnet8, resnet18

MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet8": resnet8,
    "shufflenetv2": shufflenetv2,
    **DETECTOR_BUILDERS,  # nanodet-m, nanodet-plus-m, nanodet-mcu
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
    # a detector may have one class (raccoon): background is implicit in its sigmoid scores
    min_classes = 1 if name in DETECTOR_BUILDERS else 2
    if num_classes < min_classes:
        raise ConfigError(f"num_classes must be >= {min_classes} for {name}, got {num_classes}")
    return MODEL_BUILDERS[name](num_classes=num_classes, width_mult=width_mult, in_channels=in_channels)
