"""NanoDet-style detectors: ShuffleNetV2 + Ghost-PAN + GFL head, and their named configs.

``forward`` returns the raw head outputs only, level by level:
``(cls_s8, reg_s8, cls_s16, reg_s16, ...)`` with ``cls`` of shape ``[B, C, H/s, W/s]``
(class logits, sigmoid not applied) and ``reg`` of shape ``[B, 4 * (reg_max + 1), H/s, W/s]``
(box-side distribution logits, order left, top, right, bottom). Decoding, thresholds and
NMS live in :mod:`trainer.detection.postprocess` (torch and numpy), so the exported graph
stays a plain int8-friendly convolutional network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from edgesmith.errors import ConfigError
from trainer.models.nanodet.neck_head import GFLHead, GhostPAN
from trainer.models.nanodet.shufflenet import ShuffleNetV2Backbone


@dataclass(frozen=True)
class NanoDetSpec:
    """Architecture and training defaults of one named detector config."""

    name: str
    input_size: int  # default square input side; must be a multiple of 32
    act: str = "leaky_relu"
    split: str = "slice"  # ShuffleNetV2 channel split: 'slice' (Split op) or 'conv' (MCU runtimes)
    neck_channels: int = 96
    neck_kernel: int = 5
    upsample: str = "nearest"
    extra_levels: int = 0
    head_channels: int = 96
    stacked_convs: int = 2
    head_kernel: int = 3
    reg_max: int = 7
    strides: tuple[int, ...] = field(default=(8, 16, 32))
    assigner: str = "atss"  # 'atss' or 'dynamic' (NanoDet-Plus soft-label assigner)
    mcu_ops: bool = False  # only ops int8 MCU runtimes support

    def to_dict(self) -> dict:
        return asdict(self)


DETECTOR_SPECS: dict[str, NanoDetSpec] = {
    # NanoDet-m: strides 8/16/32, ATSS assignment, 320x320 input.
    "nanodet-m": NanoDetSpec("nanodet-m", 320, neck_kernel=5, head_kernel=3),
    # NanoDet-Plus-m: extra stride-64 level, 5x5 kernels, dynamic soft-label assignment; 320 or 416.
    "nanodet-plus-m": NanoDetSpec("nanodet-plus-m", 320, neck_kernel=5, upsample="bilinear", extra_levels=1,
                                  head_kernel=5, strides=(8, 16, 32, 64), assigner="dynamic"),
    # MCU: ReLU6 (Clip), nearest upsampling, channel split as a selection conv, 160x160, slimmer neck/head.
    "nanodet-mcu": NanoDetSpec("nanodet-mcu", 160, act="relu6", split="conv", neck_channels=64, neck_kernel=3,
                               head_channels=64, stacked_convs=1, head_kernel=3, mcu_ops=True),
}


class NanoDet(nn.Module):
    """Backbone -> Ghost-PAN -> GFL head; see the module docstring for the outputs."""

    def __init__(self, spec: NanoDetSpec, num_classes: int, width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.strides = tuple(spec.strides)
        self.reg_max = spec.reg_max
        self.backbone = ShuffleNetV2Backbone(width_mult, in_channels, spec.act, spec.split)
        self.neck = GhostPAN(self.backbone.out_channels, spec.neck_channels, spec.neck_kernel, spec.extra_levels,
                             spec.upsample, spec.act)
        self.head = GFLHead(num_classes, spec.neck_channels, spec.head_channels, len(self.strides),
                            spec.stacked_convs, spec.head_kernel, spec.reg_max, spec.act)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.head(self.neck(self.backbone(x)))

    def output_names(self) -> list[str]:
        """Names of the raw outputs, in ``forward`` order (used for the ONNX graph)."""
        return [f"{kind}_s{s}" for s in self.strides for kind in ("cls", "reg")]


def detector_names() -> list[str]:
    """Names of the registered detector configs."""
    return sorted(DETECTOR_SPECS)


def is_detector(name: str) -> bool:
    """True when ``name`` is a registered detector (not a classifier)."""
    return name in DETECTOR_SPECS


def detector_spec(name: str) -> NanoDetSpec:
    """The spec of a named detector; an unknown name lists the valid ones."""
    if name not in DETECTOR_SPECS:
        raise ConfigError(f"unknown detector '{name}'; choose from: {', '.join(detector_names())}")
    return DETECTOR_SPECS[name]


def _builder(name: str):
    def build(num_classes: int, width_mult: float = 1.0, in_channels: int = 3) -> NanoDet:
        return NanoDet(DETECTOR_SPECS[name], num_classes, width_mult, in_channels)

    build.__name__ = name.replace("-", "_")
    build.__doc__ = f"Registry builder for the {name} detector."
    return build


DETECTOR_BUILDERS = {name: _builder(name) for name in DETECTOR_SPECS}
