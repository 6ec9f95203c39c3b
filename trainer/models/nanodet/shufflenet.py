"""ShuffleNetV2 (Ma et al. 2018): the NanoDet backbone, and a classifier to pre-train it.

Channel shuffle is written as reshape -> transpose -> reshape with the batch axis as -1
and the other dimensions as Python ints, so it exports to exactly Reshape, Transpose,
Reshape in ONNX (no Shape/Gather arithmetic), which int8 runtimes accept.

The channel split of the stride-1 unit normally exports as ``Split``. Some int8 MCU
runtimes do not take it, so ``split="conv"`` realises the split as a fixed 0/1
selection 1x1 convolution (exact, and just another Conv for the quantizer).

Model files do no I/O: they build modules from arguments and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgesmith.errors import ConfigError
from trainer.models.nanodet.layers import ConvBNAct

# stage output channels (stem, stage2, stage3, stage4) and conv5 per width multiplier
STAGE_CHANNELS = {
    0.5: [24, 48, 96, 192],
    1.0: [24, 116, 232, 464],
    1.5: [24, 176, 352, 704],
    2.0: [24, 244, 488, 976],
}
CONV5_CHANNELS = {0.5: 1024, 1.0: 1024, 1.5: 1024, 2.0: 2048}
STAGE_REPEATS = [4, 8, 4]


def stage_channels(width_mult: float) -> list[int]:
    """The channels of the stem and the three stages for a width multiplier (0.5, 1.0, 1.5, 2.0)."""
    if width_mult not in STAGE_CHANNELS:
        raise ConfigError(
            f"ShuffleNetV2 has no {width_mult}x variant; choose width_mult from: "
            f"{', '.join(str(w) for w in STAGE_CHANNELS)}"
        )
    return STAGE_CHANNELS[width_mult]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (reshape -> transpose -> reshape).

    Registered with ``torch.fx.wrap`` (below) so QAT's symbolic trace keeps it as one call instead of
    failing on the concrete shape ints it needs."""
    c, h, w = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    x = x.reshape(-1, groups, c // groups, h, w).transpose(1, 2)
    return x.reshape(-1, c, h, w)


torch.fx.wrap("channel_shuffle")


class ChannelSelect(nn.Module):
    """Channels ``[start, start + count)`` of the input, as a fixed 0/1 1x1 convolution."""

    def __init__(self, channels: int, start: int, count: int) -> None:
        super().__init__()
        weight = torch.zeros(count, channels, 1, 1)
        weight[torch.arange(count), torch.arange(start, start + count)] = 1.0
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight)


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit: stride 2 down-samples through two branches, stride 1 splits channels."""

    def __init__(self, cin: int, cout: int, stride: int, act: str, split: str = "slice") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride, self.split = stride, split
        half = cout // 2
        if stride == 1 and cin != cout:
            raise ValueError(f"a stride-1 unit keeps its channels, got {cin} -> {cout}")
        branch_in = cin if stride == 2 else half
        if stride == 2:
            self.branch1 = nn.Sequential(
                ConvBNAct(cin, cin, 3, 2, groups=cin, act=None),
                ConvBNAct(cin, half, 1, act=act),
            )
        elif split == "conv":
            self.keep = ChannelSelect(cin, 0, half)
            self.take = ChannelSelect(cin, half, half)
        self.branch2 = nn.Sequential(
            ConvBNAct(branch_in, half, 1, act=act),
            ConvBNAct(half, half, 3, stride, groups=half, act=None),
            ConvBNAct(half, half, 1, act=act),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        elif self.split == "conv":
            out = torch.cat([self.keep(x), self.branch2(self.take(x))], dim=1)
        else:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Backbone(nn.Module):
    """Stem (3x3 s2 conv + 3x3 s2 max-pool) and stages 2-4; returns the stride 8, 16, 32 maps."""

    def __init__(self, width_mult: float = 1.0, in_channels: int = 3, act: str = "leaky_relu",
                 split: str = "slice") -> None:
        super().__init__()
        chans = stage_channels(width_mult)
        self.out_channels = chans[1:]
        self.stem = nn.Sequential(ConvBNAct(in_channels, chans[0], 3, 2, act=act),
                                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        stages = []
        cin = chans[0]
        for repeats, cout in zip(STAGE_REPEATS, chans[1:]):
            units = [ShuffleUnit(cin, cout, 2, act, split)]
            units += [ShuffleUnit(cout, cout, 1, act, split) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c2 = self.stage2(self.stem(x))
        c3 = self.stage3(c2)
        return c2, c3, self.stage4(c3)


class ShuffleNetV2Classifier(nn.Module):
    """ShuffleNetV2 classifier (backbone + 1x1 conv5 + global average pool + linear).

    Its ``backbone.*`` weights have the names the detectors use, so a classifier run
    can initialise a detector (``--init-backbone RUN_DIR``).
    """

    def __init__(self, num_classes: int, width_mult: float = 1.0, in_channels: int = 3, act: str = "relu") -> None:
        super().__init__()
        self.backbone = ShuffleNetV2Backbone(width_mult, in_channels, act)
        c5 = CONV5_CHANNELS[width_mult]
        self.conv5 = ConvBNAct(self.backbone.out_channels[-1], c5, 1, act=act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.backbone(x)[-1])
        return self.fc(torch.flatten(self.pool(x), 1))


def shufflenetv2(num_classes: int, width_mult: float = 1.0, in_channels: int = 3) -> ShuffleNetV2Classifier:
    """Registry builder for the ShuffleNetV2 classifier."""
    stage_channels(width_mult)  # a clear error for unsupported widths
    return ShuffleNetV2Classifier(num_classes, width_mult, in_channels)

