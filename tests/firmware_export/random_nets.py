"""Small int8 networks for tests (topology hazards, ResNet-8); import them from ``random_graphs``.

Built from the helpers of :mod:`random_graphs`; ``random_graphs.random_multi_op_graph`` and
``random_graphs.resnet8_graph`` forward here.
"""
from __future__ import annotations

import math

import numpy as np
from random_graphs import (_WEIGHT_STD, _act, _bias, _graph, _out_scale, _rand_act_quant, _rand_int8,
                           _rms_centered, _weights, same_pads)

from firmware_export.intgraph import IntGraph, Op, Tensor


# --------------------------------------------------------------------------- multi-op network

class _Builder:
    """Appends ops with auto-chosen quantization; keeps tensors and ops in order."""

    def __init__(self, rng):
        self.rng = rng
        self.tensors: list[Tensor] = []
        self.ops: list[Op] = []

    def t(self, name: str) -> Tensor:
        return next(t for t in self.tensors if t.name == name)

    def act(self, name, shape, scale, zp) -> str:
        self.tensors.append(_act(name, shape, scale, zp))
        return name

    def conv(self, x: str, name: str, cout: int, k: int, act: str, depthwise: bool = False,
             stride: int = 1) -> str:
        xt = self.t(x)
        n, h, w, cin = xt.shape
        in_scale, in_zp = xt.per_tensor_scale(), xt.per_tensor_zero_point()
        top, bottom, oh = same_pads(h, k, stride)
        left, right, ow = same_pads(w, k, stride)
        if depthwise:
            wt = _weights(self.rng, name + "_w", (1, k, k, cin), axis=3)
            k_per_out, cout = k * k, cin
        else:
            wt = _weights(self.rng, name + "_w", (cout, k, k, cin), axis=0)
            k_per_out = k * k * cin
        acc_std = math.sqrt(k_per_out) * _rms_centered(in_zp) * _WEIGHT_STD
        b = _bias(self.rng, name + "_b", in_scale, wt, acc_std)
        out_scale = _out_scale(self.rng, in_scale, wt.scale, acc_std)
        # after a ReLU the useful range is non-negative: put zero at the bottom of int8
        out_zp = -128 if act in ("RELU", "RELU6") else int(self.rng.integers(-20, 21))
        self.tensors += [wt, b]
        self.act(name, (n, oh, ow, cout), out_scale, out_zp)
        attrs = {"stride": (stride, stride), "dilation": (1, 1), "pads": (top, bottom, left, right), "act": act}
        if depthwise:
            attrs["depth_multiplier"] = 1
        kind = "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"
        self.ops.append(Op(kind, [x, wt.name, b.name], [name], attrs, name=name))
        return name

    def same_quant(self, op_kind: str, x: str, name: str, shape, attrs) -> str:
        xt = self.t(x)
        self.act(name, shape, xt.per_tensor_scale(), xt.per_tensor_zero_point())
        self.ops.append(Op(op_kind, [x], [name], attrs, name=name))
        return name


def random_multi_op_graph(rng) -> tuple[IntGraph, dict[str, np.ndarray]]:
    """A small network with every topology hazard: residual ADD, CONCATENATION, depthwise,
    channel shuffle (RESHAPE -> TRANSPOSE -> RESHAPE), nearest upsample, then pool, MEAN,
    FULLY_CONNECTED and SOFTMAX. Input ``x`` is int8 [1, H, W, 3]."""
    bld = _Builder(rng)
    h, w = int(rng.choice([4, 6, 8])), int(rng.choice([4, 6, 8]))
    c1 = int(rng.choice([4, 6, 8]))
    c2 = int(rng.choice([2, 4]))
    in_scale, in_zp = _rand_act_quant(rng)
    x = bld.act("x", (1, h, w, 3), in_scale, in_zp)
    t0 = bld.conv(x, "conv0", c1, 3, "RELU")
    t1 = bld.conv(t0, "dw1", c1, 3, "RELU6", depthwise=True)
    t2 = bld.conv(t1, "conv2", c1, 1, "NONE")
    # residual: t0 + t2, output quantization covering both ranges
    s0, s2 = bld.t(t0).per_tensor_scale(), bld.t(t2).per_tensor_scale()
    bld.act("add3", (1, h, w, c1), (s0 + s2) * 1.2, -128)
    bld.ops.append(Op("ADD", [t0, t2], ["add3"], {"act": "RELU"}, name="add3"))
    t4 = bld.conv("add3", "conv4", c2, 1, "RELU")
    # concat with differing input quantizations: the kernel requantizes
    s_cat = max(bld.t("add3").per_tensor_scale(), bld.t(t4).per_tensor_scale())
    ctot = c1 + c2
    bld.act("cat5", (1, h, w, ctot), s_cat, -128)
    bld.ops.append(Op("CONCATENATION", ["add3", t4], ["cat5"], {"axis": 3, "act": "NONE"}, name="cat5"))
    # channel shuffle with 2 groups
    t6 = bld.same_quant("RESHAPE", "cat5", "shuf6", (1, h, w, 2, ctot // 2), {"shape": (1, h, w, 2, ctot // 2)})
    t7 = bld.same_quant("TRANSPOSE", t6, "shuf7", (1, h, w, ctot // 2, 2), {"perm": (0, 1, 2, 4, 3)})
    t8 = bld.same_quant("RESHAPE", t7, "shuf8", (1, h, w, ctot), {"shape": (1, h, w, ctot)})
    t9 = bld.same_quant("RESIZE_NEAREST_NEIGHBOR", t8, "up9", (1, 2 * h, 2 * w, ctot),
                        {"size": (2 * h, 2 * w), "align_corners": False, "half_pixel_centers": False})
    t10 = bld.same_quant("AVERAGE_POOL_2D", t9, "pool10", (1, h, w, ctot),
                         {"filter": (2, 2), "stride": (2, 2), "pads": (0, 0, 0, 0), "act": "NONE"})
    t11 = bld.same_quant("MEAN", t10, "mean11", (1, ctot), {"axes": (1, 2), "keep_dims": False})
    # classifier
    mt = bld.t(t11)
    classes = 10
    wt = _weights(rng, "fc_w", (classes, ctot), axis=0)
    acc_std = math.sqrt(ctot) * _rms_centered(mt.per_tensor_zero_point()) * _WEIGHT_STD
    b = _bias(rng, "fc_b", mt.per_tensor_scale(), wt, acc_std)
    bld.tensors += [wt, b]
    bld.act("fc12", (1, classes), _out_scale(rng, mt.per_tensor_scale(), wt.scale, acc_std), 0)
    bld.ops.append(Op("FULLY_CONNECTED", [t11, "fc_w", "fc_b"], ["fc12"], {"act": "NONE"}, name="fc12"))
    bld.act("prob", (1, classes), 1.0 / 256.0, -128)
    bld.ops.append(Op("SOFTMAX", ["fc12"], ["prob"], {"beta": 1.0}, name="softmax13"))
    graph = _graph("multi_op", bld.tensors, bld.ops, ["x"], ["prob"])
    return graph, {"x": _rand_int8(rng, (1, h, w, 3))}


def resnet8_graph(rng, size: int = 32, classes: int = 10,
                  widths: tuple[int, int, int] = (16, 32, 64)) -> tuple[IntGraph, dict[str, np.ndarray]]:
    """A ResNet-8 shaped int8 graph (CIFAR style: ``widths`` channels, 16-32-64 by default, three
    residual stages, strided 3x3 + 1x1 shortcut, global MEAN, FULLY_CONNECTED, SOFTMAX) on a
    [1, size, size, 3] input, with random weights: a realistic size for speed tests."""
    bld = _Builder(rng)
    in_scale, in_zp = _rand_act_quant(rng)
    x = bld.act("x", (1, size, size, 3), in_scale, in_zp)
    h = bld.conv(x, "stem", widths[0], 3, "RELU")
    for stage, (cout, stride) in enumerate(zip(widths, (1, 2, 2))):
        a = bld.conv(h, f"s{stage}_a", cout, 3, "RELU", stride=stride)
        b = bld.conv(a, f"s{stage}_b", cout, 3, "NONE")
        short = h if (stride == 1 and bld.t(h).shape[3] == cout) else \
            bld.conv(h, f"s{stage}_short", cout, 1, "NONE", stride=stride)
        s_add = (bld.t(b).per_tensor_scale() + bld.t(short).per_tensor_scale()) * 1.2
        bld.act(f"s{stage}_add", bld.t(b).shape, s_add, -128)
        bld.ops.append(Op("ADD", [b, short], [f"s{stage}_add"], {"act": "RELU"}, name=f"s{stage}_add"))
        h = f"s{stage}_add"
    c = bld.t(h).shape[3]
    bld.act("pool", (1, c), bld.t(h).per_tensor_scale(), bld.t(h).per_tensor_zero_point())
    bld.ops.append(Op("MEAN", [h], ["pool"], {"axes": (1, 2), "keep_dims": False}, name="pool"))
    pt = bld.t("pool")
    wt = _weights(rng, "fc_w", (classes, c), axis=0)
    acc_std = math.sqrt(c) * _rms_centered(pt.per_tensor_zero_point()) * _WEIGHT_STD
    bld.tensors += [wt, _bias(rng, "fc_b", pt.per_tensor_scale(), wt, acc_std)]
    bld.act("logits", (1, classes), _out_scale(rng, pt.per_tensor_scale(), wt.scale, acc_std), 0)
    bld.ops.append(Op("FULLY_CONNECTED", ["pool", "fc_w", "fc_b"], ["logits"], {"act": "NONE"}, name="fc"))
    bld.act("prob", (1, classes), 1.0 / 256.0, -128)
    bld.ops.append(Op("SOFTMAX", ["logits"], ["prob"], {"beta": 1.0}, name="softmax"))
    return _graph("resnet8", bld.tensors, bld.ops, ["x"], ["prob"]), {"x": _rand_int8(rng, (1, size, size, 3))}

