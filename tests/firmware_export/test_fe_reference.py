"""reference.run: hand-computed cases, structural equivalences, binary layers, errors, speed.

Bit-exactness against LiteRT and TFLite Micro is in test_fe_tflite.py; these tests pin the
semantics that no oracle can check (binary layers, SIGN) and the algebra between ops.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from random_graphs import OP_BUILDERS, build_binary_conv_2d, random_op_graph, resnet8_graph

from edgesmith.errors import ExportError
from firmware_export import fixedpoint as fp
from firmware_export import reference
from firmware_export.intgraph import IntGraph, Op, Tensor

SEEDS = st.integers(0, 2 ** 32 - 1)


def _q(scale, zp):
    return {"scale": np.array([scale], np.float32), "zero_point": np.array([zp], np.int64)}


def _single(kind, x: Tensor, y: Tensor, attrs, consts=()) -> IntGraph:
    tensors = {t.name: t for t in (x, y, *consts)}
    op = Op(kind, [x.name] + [c.name for c in consts], [y.name], attrs, name=kind.lower())
    return IntGraph(tensors, [op], [x.name], [y.name])


def test_conv_hand_case_double_rounding():
    x = Tensor("x", (1, 2, 2, 1), **_q(1.0, 0))
    w = Tensor("w", (1, 2, 2, 1), scale=np.array([1.0], np.float32), zero_point=np.zeros(1, np.int64),
               quant_axis=0, data=np.ones((1, 2, 2, 1), np.int8))
    y = Tensor("y", (1, 1, 1, 1), **_q(4.0, 0))
    g = _single("CONV_2D", x, y, {"stride": (1, 1), "dilation": (1, 1), "pads": (0, 0, 0, 0), "act": "NONE"}, [w])
    # 1+2+3+4 = 10, times 0.25 = 2.5 -> 3 (SRDHM gives 5 exactly, then 5 / 2 rounds away from zero)
    out = reference.run(g, np.array([1, 2, 3, 4], np.int8).reshape(1, 2, 2, 1))
    assert out["y"].item() == 3


@pytest.mark.parametrize("values, expected", [([1, 2], 2), ([-1, -2], -2), ([1, 2, 2], 2), ([-1, -1, 1], 0)])
def test_average_pool_rounds_half_away_from_zero(values, expected):
    n = len(values)
    x = Tensor("x", (1, 1, n, 1), **_q(0.1, 0))
    y = Tensor("y", (1, 1, 1, 1), **_q(0.1, 0))
    g = _single("AVERAGE_POOL_2D", x, y, {"filter": (1, n), "stride": (1, 1), "pads": (0, 0, 0, 0), "act": "NONE"})
    assert reference.run(g, np.array(values, np.int8).reshape(1, 1, n, 1))["y"].item() == expected


def test_mean_rounds_even_with_equal_quantization():
    """TFLM runs QuantizedMeanOrSum: mean(0, 1) = 0.5 -> 1 (a truncating sum/count would give 0)."""
    x = Tensor("x", (1, 1, 2, 1), **_q(0.1, 0))
    y = Tensor("y", (1, 1), **_q(0.1, 0))
    g = _single("MEAN", x, y, {"axes": (1, 2), "keep_dims": False})
    assert reference.run(g, np.array([0, 1], np.int8).reshape(1, 1, 2, 1))["y"].item() == 1


def test_bilinear_hand_case():
    x = Tensor("x", (1, 1, 2, 1), **_q(0.1, 0))
    y = Tensor("y", (1, 1, 4, 1), **_q(0.1, 0))
    g = _single("RESIZE_BILINEAR", x, y, {"size": (1, 4), "align_corners": False, "half_pixel_centers": False})
    out = reference.run(g, np.array([0, 100], np.int8).reshape(1, 1, 2, 1))["y"].reshape(-1)
    assert out.tolist() == [0, 50, 100, 100]


def test_quantize_rounds_half_away_and_dequantize():
    x = Tensor("x", (4,), dtype="float32")
    y = Tensor("y", (4,), **_q(0.5, 1))
    g = _single("QUANTIZE", x, y, {})
    out = reference.run(g, np.array([1.25, -1.25, 100.0, 0.0], np.float32))["y"]
    assert out.tolist() == [4, -2, 127, 1]  # 2.5 -> 3 and -2.5 -> -3 (then + zero point 1)
    d = _single("DEQUANTIZE", Tensor("x", (2,), **_q(0.5, 1)), Tensor("y", (2,), dtype="float32"), {})
    np.testing.assert_array_equal(reference.run(d, np.array([3, -1], np.int8))["y"], np.array([1.0, -1.0], np.float32))


def test_sign_is_q_ge_zero_point():
    x = Tensor("x", (5,), **_q(0.1, 3))
    y = Tensor("y", (5,), **_q(1.0, 0))
    out = reference.run(_single("SIGN", x, y, {}), np.array([-128, 2, 3, 4, 127], np.int8))["y"]
    assert out.tolist() == [-1, -1, 1, 1, 1]


def test_logistic_and_softmax_track_float():
    g, _ = random_op_graph("LOGISTIC", np.random.default_rng(1))
    x = g.tensors["x"]
    values = np.resize(np.arange(-128, 128, dtype=np.int8), x.shape)
    got = reference.run(g, values)["y"].astype(np.float64)
    real = x.per_tensor_scale() * (values.astype(np.float64) - x.per_tensor_zero_point())
    want = np.clip(np.round(256.0 / (1.0 + np.exp(-real))) - 128, -128, 127)
    assert np.max(np.abs(got - want)) <= 1
    g, _ = random_op_graph("SOFTMAX", np.random.default_rng(2))
    x = g.tensors["x"]
    values = np.random.default_rng(3).integers(-128, 128, x.shape).astype(np.int8)
    real = x.per_tensor_scale() * g.ops[0].attrs["beta"] * values.astype(np.float64)
    p = np.exp(real - real.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    got = reference.run(g, values)["y"].astype(np.float64) + 128
    assert np.max(np.abs(got - np.clip(p * 256, 0, 255))) <= 2


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS)
def test_conv_padding_equals_explicit_pad_op(seed):
    graph, inputs = random_op_graph("CONV_2D", np.random.default_rng(seed))
    op = graph.ops[0]
    top, bottom, left, right = op.attrs["pads"]
    x = graph.tensors["x"]
    padded_shape = (x.shape[0], x.shape[1] + top + bottom, x.shape[2] + left + right, x.shape[3])
    xp = Tensor("xp", padded_shape, scale=x.scale, zero_point=x.zero_point)
    pad = Op("PAD", ["x"], ["xp"], {"paddings": ((0, 0), (top, bottom), (left, right), (0, 0))})
    conv = Op("CONV_2D", ["xp", "w", "b"], ["y"], dict(op.attrs, pads=(0, 0, 0, 0)))
    two = IntGraph(dict(graph.tensors, xp=xp), [pad, conv], ["x"], ["y"])
    np.testing.assert_array_equal(reference.run(two, inputs)["y"], reference.run(graph, inputs)["y"])


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS)
def test_depthwise_equals_grouped_conv(seed):
    graph, inputs = random_op_graph("DEPTHWISE_CONV_2D", np.random.default_rng(seed))
    op, w = graph.ops[0], graph.tensors["w"]
    cin, mult = graph.tensors["x"].shape[3], op.attrs["depth_multiplier"]
    # depthwise [1, KH, KW, C*m] -> grouped conv [C*m, KH, KW, 1] with C groups
    wg = Tensor("w", (cin * mult,) + w.shape[1:3] + (1,), scale=w.scale, zero_point=w.zero_point,
                quant_axis=0, data=np.ascontiguousarray(np.transpose(w.data, (3, 1, 2, 0))))
    attrs = {k: v for k, v in op.attrs.items() if k != "depth_multiplier"}
    grouped = IntGraph(dict(graph.tensors, w=wg), [Op("CONV_2D", op.inputs, op.outputs, attrs)], ["x"], ["y"])
    np.testing.assert_array_equal(reference.run(grouped, inputs)["y"], reference.run(graph, inputs)["y"])


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS)
def test_binary_conv_int8_input_is_conv_with_sign_weights(seed):
    graph, inputs = build_binary_conv_2d(np.random.default_rng(seed), binary_input=False)
    op = graph.ops[0]
    attrs = {k: v for k, v in op.attrs.items() if k != "binary_input"}
    as_conv = IntGraph(graph.tensors, [Op("CONV_2D", op.inputs, op.outputs, attrs)], ["x"], ["y"])
    np.testing.assert_array_equal(reference.run(as_conv, inputs)["y"], reference.run(graph, inputs)["y"])


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS)
def test_binary_input_conv_equals_xnor_popcount(seed):
    """With {-1,+1} inputs the accumulator is K - 2 * popcount(x XOR w) (valid window taps)."""
    graph, inputs = build_binary_conv_2d(np.random.default_rng(seed), binary_input=True)
    op, w, y = graph.ops[0], graph.tensors["w"], graph.tensors["y"]
    x = inputs["x"]
    (sh, sw), (dh, dw), (top, _, left, _) = op.attrs["stride"], op.attrs["dilation"], op.attrs["pads"]
    n, oh, ow, cout = y.shape
    kh, kw = w.shape[1:3]
    acc = np.zeros(y.shape, np.int64)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                rows = [i * sh - top + a * dh for a in range(kh)]
                cols = [j * sw - left + c * dw for c in range(kw)]
                for a, r in enumerate(rows):
                    for c, col in enumerate(cols):
                        if 0 <= r < x.shape[1] and 0 <= col < x.shape[2]:  # padding contributes 0
                            xbits = x[b, r, col] < 0
                            wbits = w.data[:, a, c, :] < 0
                            k = xbits.size
                            acc[b, i, j] += k - 2 * np.count_nonzero(xbits[None, :] ^ wbits, axis=1)
    acc += graph.tensors["b"].data
    mult, shift = fp.quantize_multipliers([1.0 * float(s) / float(np.float32(y.per_tensor_scale())) for s in w.scale])
    out = fp.multiply_by_quantized_multiplier(acc, mult, shift) + y.per_tensor_zero_point()
    lo, hi = fp.activation_range(op.attrs["act"], y.per_tensor_scale(), y.per_tensor_zero_point())
    np.testing.assert_array_equal(reference.run(graph, inputs)["y"], np.clip(out, lo, hi).astype(np.int8))


def test_binary_input_must_be_sign_output():
    graph, inputs = build_binary_conv_2d(np.random.default_rng(1), binary_input=True)
    inputs["x"] = inputs["x"] * 2
    with pytest.raises(ExportError, match="binary_input expects SIGN output"):
        reference.run(graph, inputs)


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS)
def test_concat_requantizes_like_quantize(seed):
    graph, inputs = random_op_graph("CONCATENATION", np.random.default_rng(seed))
    y = graph.tensors["y"]
    axis = graph.ops[0].attrs["axis"]
    pieces = []
    for name in graph.ops[0].inputs:
        t = graph.tensors[name]
        yq = Tensor("yq", t.shape, scale=y.scale, zero_point=y.zero_point)
        pieces.append(reference.run(_single("QUANTIZE", t, yq, {}), inputs[name])["yq"])
    np.testing.assert_array_equal(reference.run(graph, inputs)["y"], np.concatenate(pieces, axis=axis))


def test_kernel_registry_covers_op_kinds():
    from firmware_export.intgraph import OP_KINDS
    assert set(reference.KERNELS) == set(OP_KINDS) == set(OP_BUILDERS)


@pytest.mark.parametrize("kind", list(OP_BUILDERS))
def test_every_kind_has_a_kernel_and_keep_all(kind):
    graph, inputs = random_op_graph(kind, np.random.default_rng(0))
    everything = reference.run(graph, inputs, keep_all=True)
    assert set(graph.tensors) <= set(everything)
    for name, t in graph.tensors.items():
        assert everything[name].shape == t.shape


def test_errors_are_export_errors():
    graph, inputs = random_op_graph("ADD", np.random.default_rng(0))
    with pytest.raises(ExportError, match="pass a dict"):
        reference.run(graph, inputs["x0"])
    with pytest.raises(ExportError, match="no value for input"):
        reference.run(graph, {"x0": inputs["x0"]})
    with pytest.raises(ExportError, match="shape"):
        reference.run(graph, {"x0": inputs["x0"][..., :0], "x1": inputs["x1"]})
    with pytest.raises(ExportError, match="dtype"):
        reference.run(graph, {"x0": inputs["x0"].astype(np.float32), "x1": inputs["x1"]})
    graph.ops[0].kind = "GATHER"
    with pytest.raises(ExportError, match="no reference kernel for kind 'GATHER'"):
        reference.run(graph, inputs)


def test_resnet8_runs_well_under_a_second():
    graph, inputs = resnet8_graph(np.random.default_rng(0), size=32)
    reference.run(graph, inputs)  # warm-up (numpy/BLAS initialisation)
    start = time.perf_counter()
    out = reference.run(graph, inputs)
    elapsed = time.perf_counter() - start
    assert out["prob"].shape == (1, 10)
    assert elapsed < 1.0, f"ResNet-8 32x32 took {elapsed:.2f} s"
