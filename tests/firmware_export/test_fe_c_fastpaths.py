"""The fast CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED kernels of es_conv.c equal the general
kernels (built with -DES_CONV_FORCE_GENERIC) and the numpy reference bit for bit, in both loop
shapes: the SIMD-block shape the host compiler gets and the scalar shape of cores without SIMD
(Cortex-M, RV32; forced here with -DES_DOT_SCALAR).

The random op graphs of test_fe_c_runtime use few channels; these cases pick the geometries the
fast paths special-case: channel counts around the 16-wide dot-product blocks, output channels
in and out of blocks of 4, padding wider than the kernel (windows partly or wholly in padding),
dilation, strides, extreme input zero points (offsets -127 and 128) and weights of -128 / 127.
Both builds run under ASan/UBSan with exactly sized buffers, so a read outside a clipped tap
range aborts.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from fe_c_build import CBatch, have_gcc
from firmware_export.intgraph import IntGraph, Op, Tensor

pytestmark = pytest.mark.skipif(not have_gcc(), reason="host gcc is not installed")


def _act(name, shape, scale, zp):
    return Tensor(name, tuple(shape), "int8", scale=np.array([scale], np.float32), zero_point=np.array([zp]))


def _weights(rng, shape, axis, extreme=False):
    data = rng.integers(-127, 128, shape).astype(np.int8)
    if extreme:  # the int16 operand bounds: |x + offset| <= 255 times |w| <= 128
        data.reshape(-1)[::3] = -128
        data.reshape(-1)[1::3] = 127
    n = shape[axis]
    return Tensor("w", tuple(shape), "int8", scale=rng.uniform(0.002, 0.02, n).astype(np.float32),
                  zero_point=np.zeros(n, np.int64), quant_axis=axis, data=data)


def _conv_case(rng, kind, hw, cin, cout, k, stride=(1, 1), dilation=(1, 1), pads=(0, 0, 0, 0), in_zp=3,
               batch=1, extreme=False, act="NONE"):
    """One CONV_2D (cout output channels) or DEPTHWISE_CONV_2D (cout = depth multiplier) graph."""
    (h, w), (kh, kw) = hw, k
    oh = (h + pads[0] + pads[1] - ((kh - 1) * dilation[0] + 1)) // stride[0] + 1
    ow = (w + pads[2] + pads[3] - ((kw - 1) * dilation[1] + 1)) // stride[1] + 1
    attrs = {"stride": stride, "dilation": dilation, "pads": pads, "act": act}
    if kind == "DEPTHWISE_CONV_2D":
        attrs["depth_multiplier"] = cout
        cout = cin * cout
        wt = _weights(rng, (1, kh, kw, cout), 3, extreme)
        taps = kh * kw
    else:
        wt = _weights(rng, (cout, kh, kw, cin), 0, extreme)
        taps = kh * kw * cin
    in_scale = 0.02
    acc_std = math.sqrt(taps) * 80 * 73
    b = Tensor("b", (cout,), "int32", scale=(in_scale * wt.scale).astype(np.float32),
               zero_point=np.zeros(cout, np.int64), quant_axis=0, bits=32,
               data=rng.integers(-20000, 20000, cout).astype(np.int32))
    out_scale = in_scale * float(np.median(wt.scale)) * acc_std / 45
    tensors = [_act("x", (batch, h, w, cin), in_scale, in_zp), wt, b, _act("y", (batch, oh, ow, cout), out_scale, -7)]
    g = IntGraph({t.name: t for t in tensors}, [Op(kind, ["x", "w", "b"], ["y"], attrs, name="op")], ["x"], ["y"],
                 name=f"{kind.lower()}_{cin}_{cout}")
    g.validate()
    return g, {"x": rng.integers(-128, 128, (batch, h, w, cin)).astype(np.int8)}


def _fc_case(rng, batch, cin, cout, in_zp=-5, extreme=False):
    wt = _weights(rng, (cout, cin), 0, extreme)
    in_scale = 0.03
    acc_std = math.sqrt(cin) * 80 * 73
    b = Tensor("b", (cout,), "int32", scale=(in_scale * wt.scale).astype(np.float32),
               zero_point=np.zeros(cout, np.int64), quant_axis=0, bits=32,
               data=rng.integers(-5000, 5000, cout).astype(np.int32))
    y = _act("y", (batch, cout), in_scale * float(np.median(wt.scale)) * acc_std / 45, 4)
    tensors = [_act("x", (batch, cin), in_scale, in_zp), wt, b, y]
    g = IntGraph({t.name: t for t in tensors}, [Op("FULLY_CONNECTED", ["x", "w", "b"], ["y"], {"act": "RELU"},
                                                  name="fc")], ["x"], ["y"], name=f"fc_{cin}_{cout}")
    g.validate()
    return g, {"x": rng.integers(-128, 128, (batch, cin)).astype(np.int8)}


def _assert_same(batch: CBatch, builds: dict) -> None:
    bad = [f"{name}: {line}" for name, results in builds.items() for line in batch.mismatches(results)]
    assert not bad, "C output differs from the reference:\n" + "\n".join(bad)
    first = next(iter(builds.values()))
    for name, results in builds.items():
        for prefix in first:
            assert np.array_equal(results[prefix][0], first[prefix][0]), (name, prefix)


def test_fast_conv_depthwise_fc_match_general_kernels(tmp_path):
    rng = np.random.default_rng(20261127)
    batch = CBatch(tmp_path)
    conv = "CONV_2D"
    cases = [
        # 16-wide blocks: rows of kw * cin = 48, 96 bytes; tails after blocks; 1x1 = one block
        dict(kind=conv, hw=(9, 8), cin=16, cout=8, k=(3, 3), pads=(1, 1, 1, 1)),
        dict(kind=conv, hw=(7, 7), cin=33, cout=6, k=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1), act="RELU"),
        dict(kind=conv, hw=(6, 5), cin=32, cout=13, k=(1, 1), stride=(2, 1)),
        dict(kind=conv, hw=(10, 10), cin=3, cout=16, k=(3, 3), pads=(1, 1, 1, 1), act="RELU6"),  # stem-like
        # dilation (taps one by one), asymmetric kernels and pads, a batch of 2
        dict(kind=conv, hw=(9, 11), cin=17, cout=5, k=(3, 2), dilation=(2, 3), pads=(2, 1, 3, 0), batch=2),
        # padding wider than the kernel: some windows lie wholly in the padding (bias only)
        dict(kind=conv, hw=(3, 4), cin=20, cout=4, k=(2, 2), pads=(3, 3, 2, 4)),
        # int16 operand bounds: offsets 128 and -127 with weights -128 / 127
        dict(kind=conv, hw=(5, 5), cin=24, cout=7, k=(3, 3), pads=(1, 1, 1, 1), in_zp=-128, extreme=True),
        dict(kind=conv, hw=(5, 5), cin=24, cout=4, k=(3, 3), pads=(1, 1, 1, 1), in_zp=127, extreme=True),
        # depthwise: channel blocks of 16 and tails, stride, dilation, wide padding, multiplier 2 (general)
        dict(kind="DEPTHWISE_CONV_2D", hw=(8, 8), cin=16, cout=1, k=(3, 3), pads=(1, 1, 1, 1)),
        dict(kind="DEPTHWISE_CONV_2D", hw=(9, 7), cin=37, cout=1, k=(3, 3), stride=(2, 2), pads=(0, 1, 1, 1)),
        dict(kind="DEPTHWISE_CONV_2D", hw=(6, 6), cin=20, cout=1, k=(3, 3), dilation=(2, 2), pads=(2, 2, 2, 2),
             in_zp=-128, extreme=True),
        dict(kind="DEPTHWISE_CONV_2D", hw=(3, 3), cin=18, cout=1, k=(2, 2), pads=(3, 2, 2, 3), in_zp=127),
        dict(kind="DEPTHWISE_CONV_2D", hw=(5, 6), cin=9, cout=2, k=(3, 3), pads=(1, 1, 1, 1)),
    ]
    for case in cases:
        batch.add(*_conv_case(rng, **case))
    for b, cin, cout, zp, extreme in ((1, 64, 10, -5, False), (3, 40, 6, 127, True), (2, 7, 3, -128, True),
                                      (1, 16, 1, 0, False)):
        batch.add(*_fc_case(rng, b, cin, cout, zp, extreme))
    builds = {name: batch.run(batch.build(flags, name=name))
              for name, flags in (("fast", []), ("scalar", ["-DES_DOT_SCALAR"]),
                                  ("generic", ["-DES_CONV_FORCE_GENERIC"]))}
    _assert_same(batch, builds)
    assert len(builds["fast"]) == len(cases) + 4
