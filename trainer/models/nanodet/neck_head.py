"""Ghost-PAN neck and the GFL head of the NanoDet detectors.

* Ghost-PAN (NanoDet-Plus): 1x1 convs bring every backbone level to one width, a
  top-down path (upsample x2 + concat + Ghost blocks) and a bottom-up path (stride-2
  depthwise-separable conv + concat + Ghost blocks); optionally one extra, coarser level.
* GFL head: per level a tower of depthwise-separable convs shared by the classification
  and the box branch, then two 1x1 convs: class logits and ``4 * (reg_max + 1)`` box
  distribution logits (Generalized Focal Loss, Li et al. 2020). The two branches end in
  separate convs rather than one conv sliced in two, so the exported graph needs no Slice.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from trainer.models.nanodet.layers import ConvBNAct, DepthwiseSeparable


class GhostModule(nn.Module):
    """Half the output from a 1x1 conv, the other half from a cheap depthwise conv of it (GhostNet)."""

    def __init__(self, cin: int, cout: int, dw_kernel: int = 3, act: str | None = "leaky_relu") -> None:
        super().__init__()
        init = math.ceil(cout / 2)
        self.cout = cout
        self.trim = 2 * init != cout  # decided here, not from shapes in forward, so torch.fx can trace it
        self.primary = ConvBNAct(cin, init, 1, act=act)
        self.cheap = ConvBNAct(init, init, dw_kernel, groups=init, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)
        # Only odd widths need trimming; even widths export without a Slice.
        return out[:, : self.cout] if self.trim else out


class GhostBottleneck(nn.Module):
    """Ghost module (with act) -> Ghost module (linear) plus a shortcut (identity or dw + 1x1 conv)."""

    def __init__(self, cin: int, mid: int, cout: int, dw_kernel: int = 3, act: str = "leaky_relu") -> None:
        super().__init__()
        self.ghost1 = GhostModule(cin, mid, act=act)
        self.ghost2 = GhostModule(mid, cout, act=None)
        if cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                ConvBNAct(cin, cin, dw_kernel, groups=cin, act=None),
                ConvBNAct(cin, cout, 1, act=None),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.ghost1(x)) + self.shortcut(x)


class GhostPAN(nn.Module):
    """Path aggregation over the backbone levels with Ghost blocks; returns one map per stride."""

    def __init__(self, in_channels: list[int], channels: int, kernel: int = 5, extra_levels: int = 0,
                 upsample: str = "nearest", act: str = "leaky_relu") -> None:
        super().__init__()
        n = len(in_channels)
        self.upsample = upsample
        self.reduce = nn.ModuleList(ConvBNAct(c, channels, 1, act=act) for c in in_channels)
        self.top_down = nn.ModuleList(
            GhostBottleneck(2 * channels, channels, channels, kernel, act) for _ in range(n - 1))
        self.downsample = nn.ModuleList(
            DepthwiseSeparable(channels, channels, kernel, 2, act) for _ in range(n - 1))
        self.bottom_up = nn.ModuleList(
            GhostBottleneck(2 * channels, channels, channels, kernel, act) for _ in range(n - 1))
        self.extra_in = nn.ModuleList(
            DepthwiseSeparable(channels, channels, kernel, 2, act) for _ in range(extra_levels))
        self.extra_out = nn.ModuleList(
            DepthwiseSeparable(channels, channels, kernel, 2, act) for _ in range(extra_levels))

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample == "nearest":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        reduced = [conv(f) for conv, f in zip(self.reduce, feats)]
        n = len(reduced)
        inner = [reduced[-1]]
        for idx in range(n - 1, 0, -1):  # top-down: coarse to fine
            up = self._up(inner[0])
            inner.insert(0, self.top_down[n - 1 - idx](torch.cat([up, reduced[idx - 1]], dim=1)))
        outs = [inner[0]]
        for idx in range(n - 1):  # bottom-up: fine to coarse
            down = self.downsample[idx](outs[-1])
            outs.append(self.bottom_up[idx](torch.cat([down, inner[idx + 1]], dim=1)))
        for conv_in, conv_out in zip(self.extra_in, self.extra_out):
            outs.append(conv_in(reduced[-1]) + conv_out(outs[-1]))
            reduced.append(outs[-1])
        return outs


class GFLHead(nn.Module):
    """Per-level depthwise-separable tower shared by cls and box branches, then 1x1 output convs."""

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int, num_levels: int,
                 stacked_convs: int = 2, kernel: int = 3, reg_max: int = 7, act: str = "leaky_relu") -> None:
        super().__init__()
        self.num_classes, self.reg_max = num_classes, reg_max
        towers = []
        for _ in range(num_levels):
            layers = [DepthwiseSeparable(in_channels if i == 0 else feat_channels, feat_channels, kernel, 1, act)
                      for i in range(stacked_convs)]
            towers.append(nn.Sequential(*layers))
        self.towers = nn.ModuleList(towers)
        self.cls_out = nn.ModuleList(nn.Conv2d(feat_channels, num_classes, 1) for _ in range(num_levels))
        self.reg_out = nn.ModuleList(nn.Conv2d(feat_channels, 4 * (reg_max + 1), 1) for _ in range(num_levels))
        self._init_outputs()

    def _init_outputs(self) -> None:
        prior = 0.01  # focal-loss initialisation: every class starts at ~1% confidence
        for conv in self.cls_out:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, -math.log((1 - prior) / prior))
        for conv in self.reg_out:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        outs: list[torch.Tensor] = []
        for feat, tower, cls_conv, reg_conv in zip(feats, self.towers, self.cls_out, self.reg_out):
            t = tower(feat)
            outs += [cls_conv(t), reg_conv(t)]
        return tuple(outs)
