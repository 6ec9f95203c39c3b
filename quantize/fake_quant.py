"""Fake-quantization modules for QAT, using exactly the INT8 scheme of ``quantize/ptq.py``.

* activations: int8 asymmetric, scale / zero point computed from a (low, high) range the way
  onnxruntime's ``compute_scale_zp`` does, so the grid seen in training is the grid exported;
  the range comes from an EMA min/max observer that can be frozen;
* weights: int8 symmetric per output channel, values in [-127, 127], scale = max|w| / 127;
* Conv + BatchNorm are trained as one folded conv (Jacob et al. 2018, as PyTorch's ``_ConvBnNd``):
  the weight is folded with the BN running statistics and fake-quantized; the output is unscaled
  so BN can still use batch statistics until it is frozen, after which the module computes exactly
  the folded conv that is exported.

Gradients pass straight through the rounding (STE) and are zero where values are clamped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACT_QMIN, ACT_QMAX = -128, 127
WEIGHT_QMAX = 127
EMA_MOMENTUM = 0.01  # as PyTorch's MovingAverageMinMaxObserver


def act_scale_zero_point(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """onnxruntime's asymmetric int8 parameters for the range [lo, hi] (the range always includes 0)."""
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = (hi - lo) / (ACT_QMAX - ACT_QMIN)
    if float(scale) <= torch.finfo(torch.float32).tiny:
        return torch.ones_like(scale), torch.zeros((), dtype=torch.int32)
    zp = torch.clamp(torch.round(ACT_QMIN - lo / scale), ACT_QMIN, ACT_QMAX).to(torch.int32)
    return scale, zp


class ActFakeQuant(nn.Module):
    """int8 fake quantization of an activation with an EMA min/max observer."""

    def __init__(self, lo: float | None = None, hi: float | None = None) -> None:
        super().__init__()
        self.register_buffer("lo", torch.tensor(0.0 if lo is None else float(lo)))
        self.register_buffer("hi", torch.tensor(0.0 if hi is None else float(hi)))
        self.register_buffer("initialised", torch.tensor(lo is not None and hi is not None))
        self.observe = True
        self.enabled = True

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if not bool(self.initialised):
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.initialised.fill_(True)
        else:
            self.lo.lerp_(lo, EMA_MOMENTUM)
            self.hi.lerp_(hi, EMA_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.observe:
            self._update(x)
        if not self.enabled or not bool(self.initialised):
            return x
        scale, zp = act_scale_zero_point(self.lo, self.hi)
        return torch.fake_quantize_per_tensor_affine(x, scale.float(), zp, ACT_QMIN, ACT_QMAX)

    def range(self) -> tuple[float, float]:
        return float(self.lo), float(self.hi)


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 fake quantization of a weight tensor (axis 0)."""
    absmax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12)
    scale = (absmax / WEIGHT_QMAX).float()
    zp = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -WEIGHT_QMAX, WEIGHT_QMAX)


class QatConvBn2d(nn.Module):
    """Conv2d + BatchNorm2d trained as a folded, weight-fake-quantized conv."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.bn_frozen = False
        self.quantize_weight = True

    def _bn_scale(self) -> torch.Tensor:
        return self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sf = self._bn_scale()
        w = self.conv.weight * sf.reshape(-1, 1, 1, 1)
        if self.quantize_weight:
            w = fake_quant_weight(w)
        y = F.conv2d(x, w, None, self.conv.stride, self.conv.padding, self.conv.dilation, self.conv.groups)
        # undo the fold so BN sees the unfolded conv output; a dead channel (gamma 0, e.g. after
        # pruning) has a zero folded weight and outputs beta whatever y is: divide by 1, not 0
        safe = torch.where(sf.abs() < 1e-12, torch.ones_like(sf), sf)
        y = y / safe.reshape(1, -1, 1, 1)
        if self.conv.bias is not None:
            y = y + self.conv.bias.reshape(1, -1, 1, 1)
        if self.bn_frozen or not self.training:
            # running statistics: exactly the folded conv that gets exported
            return F.batch_norm(y, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                                False, 0.0, self.bn.eps)
        return self.bn(y)

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the equivalent plain conv, in float (the exporter quantizes the weight)."""
        sf = self._bn_scale()
        w = self.conv.weight * sf.reshape(-1, 1, 1, 1)
        b = self.conv.bias if self.conv.bias is not None else torch.zeros_like(self.bn.running_mean)
        return w.clone(), ((b - self.bn.running_mean) * sf + self.bn.bias).clone()

    def to_float(self) -> nn.Conv2d:
        c = self.conv
        out = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                        bias=True)
        w, b = self.folded()
        out.weight.data.copy_(w)
        out.bias.data.copy_(b)
        return out


class QatConv2d(nn.Module):
    """A conv without BN, with weight fake quantization."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.quantize_weight = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quant_weight(self.conv.weight) if self.quantize_weight else self.conv.weight
        return F.conv2d(x, w, self.conv.bias, self.conv.stride, self.conv.padding, self.conv.dilation,
                        self.conv.groups)

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.conv.bias if self.conv.bias is not None else torch.zeros(self.conv.out_channels)
        return self.conv.weight.clone(), b.clone()

    def to_float(self) -> nn.Conv2d:
        return self.conv


class QatLinear(nn.Module):
    """A linear layer with per-output-channel weight fake quantization."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.quantize_weight = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quant_weight(self.linear.weight) if self.quantize_weight else self.linear.weight
        return F.linear(x, w, self.linear.bias)

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.linear.bias if self.linear.bias is not None else torch.zeros(self.linear.out_features)
        return self.linear.weight.clone(), b.clone()

    def to_float(self) -> nn.Linear:
        return self.linear


WEIGHTED_QAT_MODULES = (QatConvBn2d, QatConv2d, QatLinear)
