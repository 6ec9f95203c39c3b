"""ONNX op converters of the QDQ importer: one function per ONNX op type, listed in CONVERTERS.

Each converter gets the importer (``ctx``, a :class:`~firmware_export.onnx_graph.GraphBuilder`
with ONNX lookups), the ONNX node and the :class:`~firmware_export.onnx_graph.OutSpec` of the
QuantizeLinear its result goes to, and emits IntGraph ops in NHWC. Problems are raised as
:class:`~firmware_export.onnx_graph.NodeError`; the importer collects them per node.
"""
from __future__ import annotations

import math

import numpy as np

from firmware_export import onnx_layout as L
from firmware_export.onnx_graph import NodeError, QConst, node_attr
from firmware_export.onnx_resize import resize

#: TFLite's fixed output quantization of LOGISTIC and SOFTMAX
_PROB_QUANT = (1.0 / 256.0, -128)
_REQUANTIZE = "re-run edgesmith quantize (symmetric per-channel int8 weights, int32 bias)"


attr = node_attr


def _nchw(ctx, node, index: int = 0):
    x = ctx.act_in(node.input[index])
    if len(x.onnx_shape) != 4:
        raise NodeError(f"expects a 4-D NCHW input, got shape {x.onnx_shape}")
    return x


# --------------------------------------------------------------------------- weights and biases

def _weights(ctx, name: str) -> QConst:
    qc = ctx.qconsts.get(name)
    if qc is None:
        kind = "float" if ctx.fold(name) is not None else "not a constant"
        raise NodeError(f"weight {name!r} is {kind}; weights must be int8 initializers feeding "
                        f"DequantizeLinear: {_REQUANTIZE}")
    if qc.values.dtype != np.int8:
        raise NodeError(f"weight {name!r} is {qc.values.dtype}, expected int8: {_REQUANTIZE}")
    if np.any(qc.zero_point != 0):
        raise NodeError(f"weight {name!r} is asymmetric (zero points {np.unique(qc.zero_point)[:4]}); "
                        f"TFLite int8 weights are symmetric: {_REQUANTIZE} with WeightSymmetric")
    if qc.values.size and int(qc.values.min()) < -127:
        raise NodeError(f"weight {name!r} uses -128; TFLite int8 weights are in [-127, 127]: {_REQUANTIZE}")
    return qc


def _bias(ctx, name: str, in_scale: float, w_scale: np.ndarray, n_out: int, base: str) -> str:
    """int32 bias with scale in_scale * w_scale (zeros when the op has none)."""
    expect = (np.float64(in_scale) * w_scale.astype(np.float64)).astype(np.float32)
    if name in ctx.qconsts and ctx.qconsts[name].scale.size not in (1, expect.size) and expect.size != 1:
        raise NodeError(f"bias {name!r} has {ctx.qconsts[name].scale.size} scales for {expect.size} weight "
                        f"scales: {_REQUANTIZE}")
    if not name:
        values = np.zeros(n_out, np.int32)
    elif name in ctx.qconsts and ctx.qconsts[name].shared and \
            not np.allclose(ctx.qconsts[name].scale, expect, rtol=1e-3, atol=0):
        # one bias shared (via Identity) by ops with different input x weight scales: requantize it
        values = _quantize_bias(ctx.qconsts[name].real(), expect, name)
    elif name in ctx.qconsts:
        qc = ctx.qconsts[name]
        if qc.values.dtype != np.int32 or np.any(qc.zero_point != 0):
            raise NodeError(f"bias {name!r} must be int32 with zero point 0 (got {qc.values.dtype}): {_REQUANTIZE}")
        if not np.allclose(qc.scale, expect, rtol=1e-3, atol=0):
            worst = float(np.max(np.abs(qc.scale / np.broadcast_to(expect, qc.scale.shape) - 1)))
            raise NodeError(f"bias {name!r} scale differs from input scale x weight scale by up to "
                            f"{worst:.2%} (tolerance 0.1%): {_REQUANTIZE}")
        values = qc.values.reshape(-1)
    else:
        real = ctx.fold(name)
        if real is None:
            raise NodeError(f"bias {name!r} is not a constant")
        values = _quantize_bias(real, expect, name)
    if values.size != n_out:
        raise NodeError(f"bias {name or base!r} has {values.size} values, expected {n_out}")
    return ctx.add_const(base + "_bias", values.astype(np.int32), scale=expect,
                         zero_point=np.zeros(expect.size, np.int64), axis=0, bits=32)


def _quantize_bias(real: np.ndarray, scale: np.ndarray, name: str) -> np.ndarray:
    """A float bias at scale input x weight (rounded to nearest), as int32 values."""
    real = np.asarray(real, np.float64).reshape(-1)
    q = np.rint(real / np.broadcast_to(scale.astype(np.float64), real.shape))
    if np.any(np.abs(q) > 2**31 - 1):
        raise NodeError(f"bias {name!r} does not fit int32 at scale input x weight: {_REQUANTIZE}")
    return q


def _window(node, in_hw, k_hw, out_hw, *, allow_ceil: bool = False):
    """(stride, dilation, pads (top, bottom, left, right), extra) for a conv/pool window.

    ``extra``: end padding added so ceil_mode's last window exists (pools ignore padded cells).
    """
    strides = tuple(attr(node, "strides", [1, 1]))
    dilations = tuple(attr(node, "dilations", [1, 1]))
    auto_pad = attr(node, "auto_pad", "NOTSET")
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    begin, end, extra = [], [], False
    for ax in range(2):
        k_eff = (k_hw[ax] - 1) * dilations[ax] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max((out_hw[ax] - 1) * strides[ax] + k_eff - in_hw[ax], 0)
            small = total // 2
            b, e = (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)
        elif auto_pad == "VALID":
            b, e = 0, 0
        else:
            b, e = int(pads[ax]), int(pads[ax + 2])
        got = (in_hw[ax] + b + e - k_eff) // strides[ax] + 1
        if got < out_hw[ax] and allow_ceil:
            e += (out_hw[ax] - 1) * strides[ax] + k_eff - (in_hw[ax] + b + e)
            extra = True
        elif got != out_hw[ax]:
            raise NodeError(f"window output size {got} on spatial axis {ax} does not match the ONNX shape "
                            f"{out_hw[ax]}")
        begin.append(b)
        end.append(e)
    return strides, dilations, (begin[0], end[0], begin[1], end[1]), extra


# --------------------------------------------------------------------------- conv and FC

def conv(ctx, node, spec):
    x = _nchw(ctx, node)
    _, c, h, w = x.onnx_shape
    wq = _weights(ctx, node.input[1])
    if wq.values.ndim != 4:
        raise NodeError(f"only 2-D convolutions are supported (weight shape {wq.values.shape})")
    if wq.axis not in (None, 0):
        raise NodeError(f"weight {node.input[1]!r} is quantized per axis {wq.axis}; expected per output "
                        f"channel (axis 0): {_REQUANTIZE}")
    o, _, kh, kw = wq.values.shape
    group = int(attr(node, "group", 1))
    stride, dilation, pads, _ = _window(node, (h, w), (kh, kw), spec.onnx_shape[2:])
    in_scale, _ = ctx.quant_of(x)
    x_t = ctx.materialize(x, L.NHWC)
    base = spec.name
    attrs = {"stride": stride, "dilation": dilation, "pads": pads}
    binary = bool(np.isin(wq.values, (-1, 1)).all())
    if binary and group == 1:
        kind = "BINARY_CONV_2D"
        w_name = ctx.add_const(base + "_weights", np.ascontiguousarray(wq.values.transpose(0, 2, 3, 1)),
                               scale=wq.scale, zero_point=np.zeros(wq.scale.size, np.int64), axis=0, bits=1)
        attrs["binary_input"] = x_t in ctx.sign_tensors
    elif group > 1 and group == c and o % c == 0:
        kind = "DEPTHWISE_CONV_2D"
        w_name = ctx.add_const(base + "_weights", np.ascontiguousarray(wq.values.transpose(1, 2, 3, 0)),
                               scale=wq.scale, zero_point=np.zeros(wq.scale.size, np.int64), axis=3)
        attrs["depth_multiplier"] = o // c
    else:
        kind = "CONV_2D"
        w_name = ctx.add_const(base + "_weights", np.ascontiguousarray(wq.values.transpose(0, 2, 3, 1)),
                               scale=wq.scale, zero_point=np.zeros(wq.scale.size, np.int64), axis=0)
    bias = node.input[2] if len(node.input) > 2 else ""
    b_name = _bias(ctx, bias, in_scale, wq.scale, o, base)
    ctx.emit_op(spec, kind, [x_t, w_name, b_name], attrs, L.NHWC, supports_act=True)


def batch_norm(ctx, node, spec):
    """A BatchNormalization left unfolded (e.g. after an Add) -> 1x1 DEPTHWISE_CONV_2D.

    ``y = a * x + b`` per channel with ``a = gamma / sqrt(var + eps)``, ``b = beta - a * mean``;
    each ``a`` is stored as +-127 with scale ``|a| / 127`` (exact), ``b`` as int32 at input x weight.
    """
    x = _nchw(ctx, node)
    c = x.onnx_shape[1]
    params = []
    for name in node.input[1:5]:
        value = ctx.qconsts[name].real() if name in ctx.qconsts else ctx.fold(name)
        if value is None or np.size(value) != c:
            raise NodeError(f"BatchNormalization parameter {name!r} must be a constant with {c} values")
        params.append(np.asarray(value, np.float64).reshape(-1))
    gamma, beta, mean, var = params
    a = gamma / np.sqrt(var + float(attr(node, "epsilon", 1e-5)))
    b = beta - a * mean
    w_scale = np.where(a == 0, 1.0, np.abs(a) / 127.0).astype(np.float32)
    weights = np.clip(np.rint(a / w_scale), -127, 127).astype(np.int8).reshape(1, 1, 1, c)
    in_scale, _ = ctx.quant_of(x)
    base = spec.name
    w_name = ctx.add_const(base + "_weights", weights, scale=w_scale, zero_point=np.zeros(c, np.int64), axis=3)
    b_scale = (np.float64(in_scale) * w_scale.astype(np.float64)).astype(np.float32)
    b_name = ctx.add_const(base + "_bias", _quantize_bias(b, b_scale, base).astype(np.int32), scale=b_scale,
                           zero_point=np.zeros(c, np.int64), axis=0, bits=32)
    attrs = {"stride": (1, 1), "dilation": (1, 1), "pads": (0, 0, 0, 0), "depth_multiplier": 1}
    ctx.emit_op(spec, "DEPTHWISE_CONV_2D", [ctx.materialize(x, L.NHWC), w_name, b_name], attrs, L.NHWC,
                supports_act=True)


def fully_connected(ctx, node, spec):
    """Gemm / MatMul (+ a bias Add) -> FULLY_CONNECTED with weight [out, in]."""
    a = ctx.act_in(node.input[0])
    if len(a.onnx_shape) != 2:
        raise NodeError(f"expects a 2-D input [batch, features], got {a.onnx_shape}; flatten first")
    gemm = node.op_type == "Gemm"
    if gemm and (attr(node, "transA", 0) or not math.isclose(attr(node, "alpha", 1.0), 1.0)
                 or not math.isclose(attr(node, "beta", 1.0), 1.0)):
        raise NodeError("Gemm with transA or alpha/beta != 1 is not supported; export nn.Linear as is")
    wq = _weights(ctx, node.input[1])
    values, axis = wq.values, wq.axis
    if not (gemm and attr(node, "transB", 0)):
        values, axis = values.T, (None if axis is None else 1 - axis)
    if axis not in (None, 0):
        raise NodeError(f"weight {node.input[1]!r} is quantized per input feature; expected per output "
                        f"feature: {_REQUANTIZE}")
    n_out, n_in = values.shape
    if a.col_perm is not None:
        # the input is an NCHW flatten kept in NHWC order: permute the weight columns to match
        values, x_t = values[:, a.col_perm], a.tensor
    else:
        x_t = ctx.materialize(a, (0, 1))
    bias = node.input[2] if gemm and len(node.input) > 2 else ""
    if spec.bias_node is not None:
        if bias:
            raise NodeError("has both a Gemm bias and a following bias Add")
        bias = next(i for i in spec.bias_node.input if i != node.output[0])
    in_scale, _ = ctx.quant_of(a)
    w_name = ctx.add_const(spec.name + "_weights", np.ascontiguousarray(values), scale=wq.scale,
                           zero_point=np.zeros(wq.scale.size, np.int64), axis=0)
    b_name = _bias(ctx, bias, in_scale, wq.scale, n_out, spec.name)
    ctx.emit_op(spec, "FULLY_CONNECTED", [x_t, w_name, b_name], {}, (0, 1), supports_act=True)


# --------------------------------------------------------------------------- elementwise and concat

def elementwise(ctx, node, spec):
    """Add / Mul of two int8 tensors (or one int8 constant), numpy broadcasting in the stored layout."""
    kind = {"Add": "ADD", "Mul": "MUL"}[node.op_type]
    rank = len(spec.onnx_shape)
    acts = [ctx.act_in(i) for i in node.input if i not in ctx.qconsts and ctx.fold(i) is None]
    if not acts:
        raise NodeError("both inputs are constants")
    layout = acts[0].layout
    names = []
    for i in node.input:
        if i in ctx.qconsts:
            qc = ctx.qconsts[i]
            if qc.values.dtype != np.int8 or qc.scale.size != 1:
                raise NodeError(f"constant input {i!r} must be per-tensor int8: re-run edgesmith quantize")
            data = qc.values.reshape((1,) * (rank - qc.values.ndim) + qc.values.shape).transpose(layout)
            names.append(ctx.add_const(i, np.ascontiguousarray(data), scale=qc.scale, zero_point=qc.zero_point))
        elif ctx.fold(i) is not None:
            raise NodeError(f"constant input {i!r} is float; it must be int8 through DequantizeLinear "
                            f"(re-run edgesmith quantize)")
        else:
            act = ctx.act_in(i)
            if len(act.onnx_shape) != rank:
                raise NodeError(f"broadcasting between ranks {len(act.onnx_shape)} and {rank} is not "
                                f"supported; reshape the smaller input to rank {rank}")
            names.append(ctx.materialize(act, layout))
    ctx.emit_op(spec, kind, names, {}, layout, supports_act=True)


def concat(ctx, node, spec):
    acts = [ctx.act_in(i) for i in node.input]
    rank = len(spec.onnx_shape)
    axis = int(attr(node, "axis")) % rank
    layouts = {a.layout for a in acts}
    layout = acts[0].layout if len(layouts) == 1 else L.natural_layout(rank)
    names = [ctx.materialize(a, layout) for a in acts]
    ctx.emit_op(spec, "CONCATENATION", names, {"axis": L.stored_axis(layout, axis)}, layout, supports_act=True)


# --------------------------------------------------------------------------- pooling

def max_pool(ctx, node, spec):
    x = _nchw(ctx, node)
    k = tuple(int(v) for v in attr(node, "kernel_shape"))
    if tuple(attr(node, "dilations", [1, 1])) != (1, 1) or attr(node, "storage_order", 0):
        raise NodeError("MaxPool with dilation or column-major storage_order is not supported")
    stride, _, pads, _ = _window(node, x.onnx_shape[2:], k, spec.onnx_shape[2:], allow_ceil=True)
    x_t = ctx.materialize(x, L.NHWC)
    ctx.emit_op(spec, "MAX_POOL_2D", [x_t], {"filter": k, "stride": stride, "pads": pads}, L.NHWC,
                op_quant=ctx.quant_of(x), supports_act=True)


def average_pool(ctx, node, spec):
    x = _nchw(ctx, node)
    k = tuple(int(v) for v in attr(node, "kernel_shape"))
    stride, _, pads, extra = _window(node, x.onnx_shape[2:], k, spec.onnx_shape[2:], allow_ceil=True)
    x_t = ctx.materialize(x, L.NHWC)
    quant = ctx.quant_of(x)
    if attr(node, "count_include_pad", 0) and any(pads):
        if extra:
            raise NodeError("AveragePool with count_include_pad=1, padding and ceil_mode=1 is not supported")
        # TFLite averages only real cells: pad explicitly with the zero point (real 0) instead
        t, b, l, r = pads
        shape = ctx.tensors[x_t].shape
        padded = ctx.add_tensor(x_t + "_padded", (shape[0], shape[1] + t + b, shape[2] + l + r, shape[3]), *quant)
        ctx.emit("PAD", [x_t], [padded], {"paddings": ((0, 0), (t, b), (l, r), (0, 0))}, spec.name + "_pad")
        x_t, pads = padded, (0, 0, 0, 0)
    ctx.emit_op(spec, "AVERAGE_POOL_2D", [x_t], {"filter": k, "stride": stride, "pads": pads}, L.NHWC,
                op_quant=quant, supports_act=True)


def global_average_pool(ctx, node, spec):
    x = _nchw(ctx, node)
    x_t = ctx.materialize(x, L.NHWC)
    ctx.emit_op(spec, "MEAN", [x_t], {"axes": (1, 2), "keep_dims": True}, L.NHWC)


def global_max_pool(ctx, node, spec):
    x = _nchw(ctx, node)
    x_t = ctx.materialize(x, L.NHWC)
    ctx.emit_op(spec, "MAX_POOL_2D", [x_t], {"filter": tuple(x.onnx_shape[2:]), "stride": (1, 1),
                                             "pads": (0, 0, 0, 0)}, L.NHWC, op_quant=ctx.quant_of(x),
                supports_act=True)


def reduce_mean(ctx, node, spec):
    x = ctx.act_in(node.input[0])
    rank = len(x.onnx_shape)
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = ctx.fold(node.input[1])
    axes = tuple(range(rank)) if axes is None else tuple(int(a) % rank for a in np.asarray(axes).reshape(-1))
    keep = bool(attr(node, "keepdims", 1))
    x_t = ctx.materialize(x, x.layout)
    stored_axes = tuple(sorted(L.stored_axis(x.layout, a) for a in axes))
    if keep:
        out_layout = x.layout
    else:
        kept = [a for a in x.layout if a not in axes]
        out_layout = tuple(sorted(kept).index(a) for a in kept)
    ctx.emit_op(spec, "MEAN", [x_t], {"axes": stored_axes, "keep_dims": keep}, out_layout)


# --------------------------------------------------------------------------- shape ops

def reshape(ctx, node, spec):
    """Reshape / Flatten / Squeeze / Unsqueeze: keep the stored layout where the axis groups allow."""
    x = ctx.act_in(node.input[0])
    ctx.materialize(x, x.layout)  # refuses an FC-only flattened tensor
    in_shape, out_shape = x.onnx_shape, spec.onnx_shape
    pre, out_layout = L.plan_reshape(in_shape, x.layout, out_shape)
    quant = ctx.quant_of(x)
    if pre != x.layout and len(out_shape) == 2 and out_shape[0] == 1 and ctx.only_fc_users(spec.q_name):
        # an NCHW flatten read only by FC layers: keep NHWC order, the FC permutes its weight columns
        col_perm = L.flat_order(in_shape, x.layout)
        ctx.emit_op(spec, "RESHAPE", [x.tensor], {"shape": (1, int(col_perm.size))}, (0, 1),
                    op_quant=quant, col_perm=col_perm)
        return
    x_t = ctx.materialize(x, pre)
    stored_out = L.stored_shape(out_shape, out_layout)
    if tuple(ctx.tensors[x_t].shape) == stored_out:
        ctx.alias(spec, type(x)(x_t, in_shape, pre), out_layout)
        return
    ctx.emit_op(spec, "RESHAPE", [x_t], {"shape": stored_out}, out_layout, op_quant=quant)


def transpose(ctx, node, spec):
    """Relabel axes only; the data moves when a later op needs another layout."""
    x = ctx.act_in(node.input[0])
    ctx.materialize(x, x.layout)
    rank = len(x.onnx_shape)
    perm = [int(p) for p in attr(node, "perm", list(reversed(range(rank))))]
    layout = [0] * rank
    for i, p in enumerate(perm):  # output axis i is input axis p, which is stored at x.layout.index(p)
        layout[x.layout.index(p)] = i
    ctx.alias(spec, x, tuple(layout))


def pad(ctx, node, spec):
    x = ctx.act_in(node.input[0])
    if attr(node, "mode", "constant") != "constant":
        raise NodeError(f"Pad mode {attr(node, 'mode')!r} is not supported (only constant)")
    rank = len(x.onnx_shape)
    pads = attr(node, "pads") if ctx.opset < 11 else ctx.fold(node.input[1])
    if pads is None or (len(node.input) > 3 and node.input[3]):
        raise NodeError("Pad needs constant pads over all axes")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if len(pads) != 2 * rank or min(pads) < 0:
        raise NodeError(f"Pad pads {pads} must be {2 * rank} non-negative values")
    scale, zp = ctx.quant_of(x)
    value_name = node.input[2] if len(node.input) > 2 else ""
    value = 0.0
    if value_name:
        value = ctx.qconsts[value_name].real() if value_name in ctx.qconsts else ctx.fold(value_name)
        if value is None:
            raise NodeError("Pad constant_value is not a constant")
        value = float(np.asarray(value).reshape(-1)[0])
    if int(np.clip(np.rint(value / scale) + zp, -128, 127)) != zp:
        raise NodeError(f"Pad constant_value {value:g} is not 0; TFLite pads int8 with the zero point (0.0)")
    x_t = ctx.materialize(x, x.layout)
    paddings = tuple((pads[a], pads[a + rank]) for a in x.layout)
    ctx.emit_op(spec, "PAD", [x_t], {"paddings": paddings}, x.layout, op_quant=(scale, zp))


# --------------------------------------------------------------------------- activations

def sigmoid(ctx, node, spec):
    x = ctx.act_in(node.input[0])
    x_t = ctx.materialize(x, x.layout)
    ctx.emit_op(spec, "LOGISTIC", [x_t], {}, x.layout, op_quant=_PROB_QUANT)


def softmax(ctx, node, spec):
    x = ctx.act_in(node.input[0])
    shape = x.onnx_shape
    rank = len(shape)
    axis = int(attr(node, "axis", -1 if ctx.opset >= 13 else 1)) % rank
    if ctx.opset < 13 and math.prod(shape[axis + 1:]) != 1:
        raise NodeError(f"Softmax (opset {ctx.opset}) over axes {axis}.. of {shape} is not supported")
    layout = x.layout
    if L.stored_axis(layout, axis) != rank - 1:  # TFLite SOFTMAX works on the last axis
        natural = L.natural_layout(rank)
        layout = natural if natural[-1] == axis else tuple([a for a in range(rank) if a != axis] + [axis])
    x_t = ctx.materialize(x, layout)
    ctx.emit_op(spec, "SOFTMAX", [x_t], {"beta": 1.0}, layout, op_quant=_PROB_QUANT)


def sign(ctx, node, spec):
    """Sign before QuantizeLinear: the binary activation (+1 for x >= 0, -1 below; ONNX gives 0 at 0)."""
    x = ctx.act_in(node.input[0])
    x_t = ctx.materialize(x, x.layout)
    out = ctx.emit_op(spec, "SIGN", [x_t], {}, x.layout, op_quant=(1.0, 0))
    if ctx.same_quant((1.0, 0), ctx.tensors[out]):
        ctx.sign_tensors.add(out)


def identity(ctx, node, spec):
    x = ctx.act_in(node.input[0])
    ctx.alias(spec, x, x.layout)


def clamp(ctx, node, spec):
    """A Relu/Clip between DQ and Q: implied by the output range, or a 1x1 MAX_POOL with the clamp."""
    x = ctx.act_in(node.input[0])
    try:
        ctx.alias(spec, x, x.layout)
        return
    except NodeError:
        if len(x.onnx_shape) != 4:
            raise
    ctx.fused_act(spec, supports_act=True)  # raises when the clamp is not a named activation
    x_t = ctx.materialize(x, L.NHWC)
    ctx.emit_op(spec, "MAX_POOL_2D", [x_t], {"filter": (1, 1), "stride": (1, 1), "pads": (0, 0, 0, 0)},
                L.NHWC, op_quant=ctx.quant_of(x), supports_act=True)


CONVERTERS = {
    "Conv": conv, "BatchNormalization": batch_norm, "Gemm": fully_connected, "MatMul": fully_connected,
    "Add": elementwise, "Mul": elementwise, "Concat": concat,
    "MaxPool": max_pool, "AveragePool": average_pool, "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool, "ReduceMean": reduce_mean,
    "Reshape": reshape, "Flatten": reshape, "Squeeze": reshape, "Unsqueeze": reshape,
    "Transpose": transpose, "Resize": resize, "Pad": pad,
    "Sigmoid": sigmoid, "Softmax": softmax, "Sign": sign, "Identity": identity, "Dropout": identity,
}

#: Relu/Clip not fused into a preceding op (DQ -> Relu -> Q)
STANDALONE = {"Relu": clamp, "Clip": clamp}
