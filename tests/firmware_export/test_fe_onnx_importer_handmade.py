"""QDQ ONNX importer on hand-built QDQ graphs (onnx.helper): binary layers and Sign, standalone and
fused clamps, every error the importer reports, and the layout planner behind NCHW -> NHWC.
"""
from __future__ import annotations

import numpy as np
import pytest
from fe_onnx_cases import act_q, assert_close, conv_nodes, dq_node, int8_diff, kinds, ort_session, q_node, qdq_graph
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from edgesmith.errors import ExportError
from firmware_export import onnx_layout as L
from firmware_export.onnx_importer import import_qdq_onnx, read_qdq_onnx

# --------------------------------------------------------------------------- binary layers


def _binary_model():
    """x -> Q -> DQ -> binary conv (int8 input) -> Q -> DQ -> y1;  DQ -> Sign -> Q(1,0) -> DQ -> binary conv -> y2."""
    rng = np.random.default_rng(3)
    s_in, cout = 0.05, 3
    w1 = np.where(rng.random((cout, 4, 3, 3)) < 0.5, -1, 1).astype(np.int8)
    w2 = np.where(rng.random((cout, 4, 3, 3)) < 0.5, -1, 1).astype(np.int8)
    a1 = rng.uniform(0.05, 0.2, cout).astype(np.float32)
    a2 = rng.uniform(0.05, 0.2, cout).astype(np.float32)
    inits = {**act_q("x", s_in, 2), **act_q("y1", 0.08, -5), **act_q("sg", 1.0, 0), **act_q("y2", 0.1, 4)}
    inits.update({"w1": w1, "w1_s": a1, "w1_zp": np.zeros(cout, np.int8),
                  "w2": w2, "w2_s": a2, "w2_zp": np.zeros(cout, np.int8),
                  "b1": rng.integers(-200, 200, cout).astype(np.int32), "b1_s": (np.float32(s_in) * a1),
                  "b1_zp": np.zeros(cout, np.int32),
                  "b2": rng.integers(-5, 5, cout).astype(np.int32), "b2_s": a2.copy(),
                  "b2_zp": np.zeros(cout, np.int32)})
    nodes = [q_node("x", "xq", "x"), dq_node("xq", "xf", "x"),
             dq_node("w1", "w1f", "w1", axis=0), dq_node("b1", "b1f", "b1", axis=0),
             helper.make_node("Conv", ["xf", "w1f", "b1f"], ["c1"], name="bconv_int8", pads=[1, 1, 1, 1]),
             q_node("c1", "c1q", "y1"), dq_node("c1q", "y1", "y1"),
             helper.make_node("Sign", ["xf"], ["s"], name="sign"), q_node("s", "sq", "sg"), dq_node("sq", "sf", "sg"),
             dq_node("w2", "w2f", "w2", axis=0), dq_node("b2", "b2f", "b2", axis=0),
             helper.make_node("Conv", ["sf", "w2f", "b2f"], ["c2"], name="bconv_sign"),
             q_node("c2", "c2q", "y2"), dq_node("c2q", "y2", "y2")]
    return qdq_graph(nodes, inits, ["y1", "y2"], inputs=(("x", [1, 4, 6, 6]),))


def test_binary_weights_and_sign_build_binary_ops():
    model = _binary_model()
    imported = import_qdq_onnx(model)
    graph = imported.graph
    ops = {op.name: op for op in graph.ops}
    assert ops["bconv_int8"].kind == "BINARY_CONV_2D" and ops["bconv_int8"].attrs["binary_input"] is False
    assert ops["sign"].kind == "SIGN"
    assert ops["bconv_sign"].kind == "BINARY_CONV_2D" and ops["bconv_sign"].attrs["binary_input"] is True
    w = graph.tensor(ops["bconv_sign"].inputs[1])
    assert w.bits == 1 and set(np.unique(w.data)) <= {-1, 1}
    np.testing.assert_array_equal(w.data, numpy_helper.to_array(
        next(i for i in model.graph.initializer if i.name == "w2")).transpose(0, 2, 3, 1))
    sign_out = graph.tensor(ops["sign"].outputs[0])
    assert (sign_out.per_tensor_scale(), sign_out.per_tensor_zero_point()) == (1.0, 0)

    # parity with onnxruntime; inputs kept away from 0 where ONNX Sign gives 0 and SIGN gives +1
    (inp,) = imported.inputs
    raw = np.random.default_rng(0).standard_normal(inp.onnx_shape).astype(np.float32)
    q_in = inp.to_graph(np.sign(raw) * (0.1 + np.abs(raw)))
    assert not np.any(q_in == inp.zero_point)
    assert_close(int8_diff(imported, ort_session(model), q_in))


# --------------------------------------------------------------------------- clamps


def test_standalone_relu_and_clip_between_qdq():
    """DQ -> Relu -> Q with zero point -128 is a requantize; DQ -> Clip(0, 6) -> Q needs a clamp."""
    inits = {**act_q("x", 0.05, 3), **act_q("r", 0.03, -128),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xf"]),
             helper.make_node("Relu", ["xf"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "r_s", "r_zp"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "r_s", "r_zp"], ["y1"]),
             helper.make_node("Clip", ["xf", "lo", "hi"], ["c"], name="clip6"),
             helper.make_node("QuantizeLinear", ["c", "x_s", "x_zp"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "x_s", "x_zp"], ["y2"])]
    model = qdq_graph(nodes, inits, ["y1", "y2"], inputs=(("x", [1, 2, 6, 6]),))
    imported = import_qdq_onnx(model)
    ops = {op.name: op for op in imported.graph.ops}
    assert ops["relu"].kind == "QUANTIZE"
    assert ops["clip6"].kind == "MAX_POOL_2D" and ops["clip6"].attrs["act"] == "RELU6"
    (inp,) = imported.inputs
    q_in = inp.to_graph(np.random.default_rng(0).uniform(-8, 8, inp.onnx_shape).astype(np.float32))
    assert int8_diff(imported, ort_session(model), q_in).max() == 0  # both clamps are exact


@pytest.mark.parametrize("out_scale, accepted", [(6.0 / 255, False), (3.0 / 255, True)])
def test_fused_clip_is_kept_only_when_the_output_range_implies_it(out_scale, accepted):
    """Conv -> Clip(0, 3) -> Q: no fused activation is Clip(0, 3); exact only if Q's range is [0, 3]."""
    inits = {**act_q("x", 0.05, 0), **act_q("o", out_scale, -128),
             "w": np.array([[90, -40], [25, 127]], np.int8).reshape(2, 2, 1, 1), "w_s": np.full(2, 0.01, np.float32),
             "w_zp": np.zeros(2, np.int8), "b": np.zeros(2, np.int32), "b_s": np.full(2, 0.05 * 0.01, np.float32),
             "b_zp": np.zeros(2, np.int32), "lo": np.array(0.0, np.float32), "hi": np.array(3.0, np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xf"]),
             helper.make_node("DequantizeLinear", ["w", "w_s", "w_zp"], ["wf"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "b_s", "b_zp"], ["bf"], axis=0),
             helper.make_node("Conv", ["xf", "wf", "bf"], ["c"], name="conv"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["cc"], name="clip3"),
             helper.make_node("QuantizeLinear", ["cc", "o_s", "o_zp"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "o_s", "o_zp"], ["y"])]
    model = qdq_graph(nodes, inits, ["y"])
    if not accepted:
        with pytest.raises(ExportError, match=r"node 'conv' \(Conv\): Clip\[0, 3\] before QuantizeLinear"):
            read_qdq_onnx(model)
        return
    imported = import_qdq_onnx(model)
    assert kinds(imported.graph) == ["CONV_2D"] and imported.graph.ops[0].attrs["act"] == "NONE"
    (inp,) = imported.inputs
    q_in = inp.to_graph(np.random.default_rng(0).uniform(-6, 6, inp.onnx_shape).astype(np.float32))
    assert int8_diff(imported, ort_session(model), q_in).max() <= 1


# --------------------------------------------------------------------------- errors


def test_every_offending_node_is_reported(tmp_path):
    """An Erf, asymmetric weights and a float op feeding an output: three nodes, one error."""
    inits = {**act_q("x", 0.05, 3), **act_q("h", 0.05, 0), **act_q("e", 0.01, 0)}
    inits["w"] = np.ones((2, 2, 1, 1), np.int8)
    inits["w_s"] = np.full(2, 0.1, np.float32)
    inits["w_zp"] = np.array([0, 5], np.int8)  # asymmetric
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xf"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w", "w_s", "w_zp"], ["wf"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xf", "wf"], ["c"], name="bad_conv"),
        helper.make_node("QuantizeLinear", ["c", "h_s", "h_zp"], ["cq"], name="q_c"),
        helper.make_node("DequantizeLinear", ["cq", "h_s", "h_zp"], ["cf"], name="dq_c"),
        helper.make_node("Erf", ["xf"], ["e"], name="the_erf"),
        helper.make_node("QuantizeLinear", ["e", "e_s", "e_zp"], ["eq"], name="q_e"),
        helper.make_node("DequantizeLinear", ["eq", "e_s", "e_zp"], ["y1"], name="dq_e"),
        helper.make_node("Sigmoid", ["xf"], ["y2"], name="float_sigmoid"),
        helper.make_node("Relu", ["cf"], ["y3"], name="after_bad_conv"),  # downstream of a bad node: not repeated
    ]
    model = qdq_graph(nodes, inits, ["y1", "y2", "y3"])
    with pytest.raises(ExportError) as info:
        read_qdq_onnx(model)
    message = str(info.value)
    assert "3 problems" in message
    assert "'the_erf' (Erf)" in message and "no integer kernel" in message
    assert "'bad_conv' (Conv)" in message and "asymmetric" in message
    assert "'float_sigmoid' (Sigmoid)" in message and "--keep-float is not supported" in message


def test_weight_range_and_bias_scale_are_checked():
    inits = {**act_q("x", 0.05, 0), **act_q("o", 0.1, 0)}
    w = np.ones((2, 2, 1, 1), np.int8)
    w_bad = w.copy()
    w_bad[0, 0] = -128
    for name, data in (("w1", w_bad), ("w2", w)):
        inits.update({name: data, f"{name}_s": np.full(2, 0.01, np.float32), f"{name}_zp": np.zeros(2, np.int8)})
    for name, scale in (("b1", 0.05 * 0.01), ("b2", 0.05 * 0.02)):  # b2: twice in x w
        inits.update({name: np.zeros(2, np.int32), f"{name}_s": np.full(2, scale, np.float32),
                      f"{name}_zp": np.zeros(2, np.int32)})
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xf"])]
    nodes += conv_nodes("conv_minus128", "xf", "w1", "b1", "w1_s", "b1_s", "o")
    nodes += conv_nodes("conv_bias_scale", "xf", "w2", "b2", "w2_s", "b2_s", "o")
    with pytest.raises(ExportError) as info:
        read_qdq_onnx(qdq_graph(nodes, inits, ["conv_minus128_y", "conv_bias_scale_y"]))
    message = str(info.value)
    assert "2 problems" in message
    assert "'conv_minus128' (Conv): weight 'w1f' uses -128" in message
    assert "'conv_bias_scale' (Conv): bias 'b2f' scale differs from input scale x weight scale by up to 100" in message


def test_dynamic_spatial_dims_are_refused_batch_is_fixed():
    inits = act_q("x", 0.05, 0)
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["y"])]
    model = qdq_graph(nodes, inits, ["y"], inputs=(("x", ["batch", 2, 4, 4]),))
    imported = import_qdq_onnx(model)
    assert imported.inputs[0].onnx_shape == (1, 2, 4, 4)
    assert imported.graph.tensor(imported.graph.inputs[0]).shape == (1, 4, 4, 2)
    model = qdq_graph(nodes, inits, ["y"], inputs=(("x", ["batch", 2, "height", 4]),))
    with pytest.raises(ExportError, match=r"1 problem:\n  - graph input 'x': dimension 2 is dynamic"):
        read_qdq_onnx(model)


# --------------------------------------------------------------------------- layout planning


@pytest.mark.parametrize("in_shape, layout, out_shape, pre, out_layout", [
    ((1, 8, 4, 4), L.NHWC, (1, 2, 4, 4, 4), L.NHWC, (0, 3, 4, 1, 2)),      # channel split stays NHWC
    ((1, 4, 2, 4, 4), (0, 3, 4, 2, 1), (1, 8, 4, 4), (0, 3, 4, 1, 2), L.NHWC),  # merge after shuffle
    ((1, 8, 1, 1), L.NHWC, (1, 8), L.NHWC, (0, 1)),                        # 1x1 flatten: free
    ((1, 6, 4, 4), L.NHWC, (1, 96), (0, 1, 2, 3), (0, 1)),                 # NCHW flatten: back to NCHW
])
def test_plan_reshape(in_shape, layout, out_shape, pre, out_layout):
    assert L.plan_reshape(in_shape, layout, out_shape) == (pre, out_layout)
    # the plan is correct on data: stored -> pre -> reshape equals ONNX reshape in out_layout
    x = np.arange(np.prod(in_shape)).reshape(in_shape)
    stored = x.transpose(layout).transpose(L.transpose_between(layout, pre))
    got = stored.reshape(L.stored_shape(out_shape, out_layout))
    np.testing.assert_array_equal(got, x.reshape(out_shape).transpose(out_layout))


@st.composite
def _reshape_cases(draw):
    in_shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=5)))
    layout = tuple(draw(st.permutations(range(len(in_shape)))))
    factors = [p for d in in_shape for p in _prime_factors(d)]
    factors = draw(st.permutations(factors)) if factors else []
    out_shape, k = [], 0
    while k < len(factors):  # group consecutive prime factors into output dims, sprinkle 1s
        n = draw(st.integers(1, len(factors) - k))
        out_shape.append(int(np.prod(factors[k:k + n])))
        k += n
        if draw(st.booleans()):
            out_shape.append(1)
    return in_shape, layout, tuple(out_shape) or (1,)


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@settings(max_examples=200, deadline=None)
@given(_reshape_cases())
def test_plan_reshape_is_correct_for_any_layout(case):
    in_shape, layout, out_shape = case
    pre, out_layout = L.plan_reshape(in_shape, layout, out_shape)
    assert sorted(pre) == list(range(len(in_shape))) and sorted(out_layout) == list(range(len(out_shape)))
    x = np.arange(int(np.prod(in_shape))).reshape(in_shape)
    stored = x.transpose(layout).transpose(L.transpose_between(layout, pre))
    np.testing.assert_array_equal(stored.reshape(L.stored_shape(out_shape, out_layout)),
                                  x.reshape(out_shape).transpose(out_layout))
