"""Building blocks shared by the NanoDet backbone, neck and head.

Activations are picked by name so one architecture can be built with LeakyReLU
(NanoDet's choice) or with ReLU / ReLU6 for int8 microcontroller runtimes, which
support Relu and Clip but not LeakyRelu.
"""

from __future__ import annotations

from torch import nn

from edgesmith.errors import ConfigError

ACTIVATIONS = ("leaky_relu", "relu", "relu6")


def make_act(name: str) -> nn.Module:
    """An activation module by name (one of :data:`ACTIVATIONS`)."""
    if name == "leaky_relu":
        return nn.LeakyReLU(0.1, inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)  # exports as Clip(0, 6)
    raise ConfigError(f"unknown activation '{name}'; choose from: {', '.join(ACTIVATIONS)}")


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + optional activation; BN folds into the conv at export."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: str | None = "leaky_relu") -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(make_act(act))
        super().__init__(*layers)


class DepthwiseSeparable(nn.Sequential):
    """Depthwise kxk conv + BN + act, then pointwise 1x1 conv + BN + act."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, act: str = "leaky_relu") -> None:
        super().__init__(
            ConvBNAct(cin, cin, kernel, stride, groups=cin, act=act),
            ConvBNAct(cin, cout, 1, act=act),
        )
