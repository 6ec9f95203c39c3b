"""ResNet classifiers for 32x32-class inputs.

* ``resnet18``: the CIFAR variant of ResNet-18 (3x3 stem, stride 1, no max-pool),
  with a width multiplier on every stage (64·w, 128·w, 256·w, 512·w channels).
* ``resnet8``: the MLPerf Tiny image-classification reference model
  (``tiny/benchmark/training/image_classification/keras_model.py``):
  a 16-channel 3x3 stem, three residual stacks of 16/32/64 channels, the
  down-sampling stacks having a 1x1 stride-2 convolution *without* batch norm
  on the shortcut, then global average pooling and one dense layer. Every
  convolution keeps its bias, as Keras' ``Conv2D`` does by default (78,186
  parameters for 10 classes).

Model files do no I/O: they build modules from arguments and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=bias)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity or projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut_bn: bool = True, conv_bias: bool = False) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride, conv_bias)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout, 1, conv_bias)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module
        if stride != 1 or cin != cout:
            if shortcut_bn:  # torchvision / He et al. option B
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )
            else:  # MLPerf Tiny: a plain 1x1 conv with bias on the shortcut
                self.shortcut = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=True)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A stem, residual stages of BasicBlocks, global average pooling and a linear head."""

    def __init__(
        self,
        stage_channels: list[int],
        blocks_per_stage: list[int],
        num_classes: int,
        in_channels: int = 3,
        shortcut_bn: bool = True,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        stem_ch = stage_channels[0]
        self.stem = nn.Sequential(_conv3x3(in_channels, stem_ch, 1, conv_bias), nn.BatchNorm2d(stem_ch), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        cin = stem_ch
        for i, (cout, n) in enumerate(zip(stage_channels, blocks_per_stage)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(cin, cout, stride, shortcut_bn, conv_bias))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each block so every block starts as the identity:
        # a well-known stabiliser for short, high-learning-rate schedules.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _scaled(channels: int, width_mult: float) -> int:
    if width_mult <= 0:
        raise ValueError("width_mult must be positive")
    return max(8, int(round(channels * width_mult / 8.0)) * 8)


def resnet18(num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> ResNet:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool); channels scaled by ``width_mult`` to multiples of 8."""
    chans = [_scaled(c, width_mult) for c in (64, 128, 256, 512)]
    return ResNet(chans, [2, 2, 2, 2], num_classes, in_channels, shortcut_bn=True)


def resnet8(num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> ResNet:
    """ResNet-8 as the MLPerf Tiny reference (16/32/64 channels at width_mult=1)."""
    chans = [_scaled(c, width_mult) for c in (16, 32, 64)]
    # Keras' Conv2D has a bias by default and the reference keeps it, even before BN.
    return ResNet(chans, [1, 1, 1], num_classes, in_channels, shortcut_bn=False, conv_bias=True)
