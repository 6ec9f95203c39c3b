"""Random int8 IntGraphs for tests: one builder per op kind plus a small multi-op network.

Import from tests as ``from random_graphs import random_op_graph, OP_BUILDERS, random_multi_op_graph``.

Every builder takes a ``numpy.random.Generator`` and returns ``(graph, inputs)`` where ``inputs``
is a dict ``{input tensor name: array}`` (int8 for every kind except QUANTIZE from float, which
takes float32), ready for ``reference.run(graph, inputs)``. Graphs pass ``graph.validate()``.

Quantization is realistic: weights symmetric per-channel int8 in [-127, 127] (``quant_axis`` as in
IntGraph's layout table; about one conv/depthwise in five and one FC in three is per-tensor), biases int32 with ``scale = input_scale * weight_scale[c]``, activation
scales log-uniform with random zero points, and output scales derived from the expected
accumulator spread so outputs use the int8 range without all saturating.

Shapes are kept small (a few hundred to a few thousand elements) so hundreds of graphs run fast
in the reference interpreter, TFLite Micro, LiteRT and compiled C.
"""
from __future__ import annotations

import math

import numpy as np

from firmware_export.intgraph import FUSED_ACTIVATIONS, IntGraph, Op, Tensor

#: standard deviation of a uniform int8 value / of a uniform weight in [-127, 127]
_INT8_STD = 73.9
_WEIGHT_STD = 73.6
#: how many int8 steps the typical output should span (one standard deviation)
_TARGET_STEPS = 45.0


# --------------------------------------------------------------------------- helpers

def _loguniform(rng, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _quant(scale, zero_point) -> dict:
    scale = np.atleast_1d(np.asarray(scale, dtype=np.float32))
    zp = np.atleast_1d(np.asarray(zero_point, dtype=np.int64))
    return {"scale": scale, "zero_point": zp}


def _act(name: str, shape, scale: float, zero_point: int, dtype: str = "int8") -> Tensor:
    """An activation tensor with per-tensor quantization."""
    return Tensor(name=name, shape=tuple(int(s) for s in shape), dtype=dtype, **_quant(scale, zero_point))


def _rand_act_quant(rng) -> tuple[float, int]:
    return _loguniform(rng, 0.004, 0.1), int(rng.integers(-100, 101))


def _rand_int8(rng, shape) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


def _rms_centered(zero_point: int) -> float:
    """RMS of (q - zero_point) for q uniform in int8: what an accumulator sees per input."""
    return math.sqrt(_INT8_STD ** 2 + (zero_point + 0.5) ** 2)


def _weights(rng, name: str, shape, axis: int, binary: bool = False, per_tensor: bool = False) -> Tensor:
    """Symmetric per-channel int8 weights (or {-1, +1} signs with an alpha per channel);
    ``per_tensor`` gives one scale for all channels (``quant_axis`` still names the channel axis)."""
    n = 1 if per_tensor else shape[axis]
    if binary:
        data = np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)
        scale = np.array([_loguniform(rng, 0.01, 0.2) for _ in range(n)], np.float32)
    else:
        data = rng.integers(-127, 128, size=shape, dtype=np.int64).astype(np.int8)
        scale = np.array([_loguniform(rng, 0.002, 0.03) for _ in range(n)], np.float32)
    return Tensor(name=name, shape=tuple(shape), dtype="int8", scale=scale,
                  zero_point=np.zeros(n, np.int64), quant_axis=axis, data=data,
                  bits=1 if binary else 8)


def _bias(rng, name: str, in_scale: float, w: Tensor, acc_std: float) -> Tensor:
    """int32 bias with scale = input_scale * weight_scale[c], values around the accumulator spread."""
    n = w.shape[w.quant_axis]
    data = np.round(rng.normal(0.0, 0.5 * acc_std, size=n)).astype(np.int32)
    scale = (np.float64(in_scale) * w.scale.astype(np.float64)).astype(np.float32)
    return Tensor(name=name, shape=(n,), dtype="int32", scale=scale, zero_point=np.zeros(scale.size, np.int64),
                  quant_axis=0, data=data, bits=32)


def _out_scale(rng, in_scale: float, w_scale: np.ndarray, acc_std: float) -> float:
    """Output scale putting one accumulator standard deviation at about _TARGET_STEPS int8 steps."""
    real_std = in_scale * float(np.median(w_scale)) * acc_std
    return real_std / _TARGET_STEPS * _loguniform(rng, 0.5, 2.0)


def _act_kind(rng) -> str:
    return str(rng.choice(FUSED_ACTIVATIONS, p=[0.4, 0.3, 0.2, 0.1]))


def same_pads(size: int, k_eff: int, stride: int) -> tuple[int, int, int]:
    """TFLite SAME padding for one spatial axis: (pad_before, pad_after, output size)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2, out


def _spatial_pads(rng, hw, k_eff, stride, allow_explicit: bool = True):
    """Pads (top, bottom, left, right) and output (h, w): SAME, VALID or random explicit pads.

    Returns None when the kernel does not fit the input under the chosen padding.
    """
    modes = ["same", "valid", "explicit"] if allow_explicit else ["same", "valid"]
    mode = rng.choice(modes)
    pads, out = [], []
    for size, k, s in zip(hw, k_eff, stride):
        if mode == "same":
            before, after, o = same_pads(size, k, s)
        elif mode == "valid":
            before, after = 0, 0
            o = (size - k) // s + 1
        else:
            before, after = int(rng.integers(0, k)), int(rng.integers(0, k))
            o = (size + before + after - k) // s + 1
        if o < 1:
            return None
        pads += [before, after]
        out.append(o)
    return tuple(int(p) for p in pads), tuple(out)


def _graph(name: str, tensors: list[Tensor], ops: list[Op], inputs: list[str], outputs: list[str]) -> IntGraph:
    g = IntGraph(tensors={t.name: t for t in tensors}, ops=ops, inputs=inputs, outputs=outputs, name=name)
    g.validate()
    return g


# --------------------------------------------------------------------------- convolutions

def _conv_like(rng, kind: str, binary: bool = False, binary_input: bool = False):
    """CONV_2D / DEPTHWISE_CONV_2D / BINARY_CONV_2D with random geometry and quantization."""
    for _ in range(100):
        n = int(rng.integers(1, 3)) if rng.random() < 0.25 else 1
        h, w = int(rng.integers(1, 11)), int(rng.integers(1, 11))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if rng.random() < 0.3 else (1, 1)
        k_eff = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
        padding = _spatial_pads(rng, (h, w), k_eff, stride)
        if padding is not None:
            break
    pads, (oh, ow) = padding
    if binary_input:
        in_scale, in_zp = 1.0, 0
    else:
        in_scale, in_zp = _rand_act_quant(rng)
    attrs = {"stride": stride, "dilation": dilation, "pads": pads, "act": _act_kind(rng)}
    if kind == "DEPTHWISE_CONV_2D":
        cin = int(rng.integers(1, 9))
        mult = int(rng.integers(1, 4))
        cout = cin * mult
        wt = _weights(rng, "w", (1, kh, kw, cout), axis=3, per_tensor=bool(rng.random() < 0.2))
        attrs["depth_multiplier"] = mult
        k_per_out = kh * kw
    else:
        groups = int(rng.choice([1, 2])) if (kind == "CONV_2D" and rng.random() < 0.15) else 1
        cin = int(rng.integers(1, 7)) * groups
        cout = int(rng.integers(1, 7)) * groups
        wt = _weights(rng, "w", (cout, kh, kw, cin // groups), axis=0, binary=binary,
                      per_tensor=bool(not binary and rng.random() < 0.2))
        k_per_out = kh * kw * cin // groups
    if kind == "BINARY_CONV_2D":
        attrs["binary_input"] = bool(binary_input)
    x_rms = 1.0 if binary_input else _rms_centered(in_zp)
    acc_std = math.sqrt(k_per_out) * x_rms * (1.0 if binary else _WEIGHT_STD)
    b = _bias(rng, "b", in_scale, wt, acc_std)
    out_scale = _out_scale(rng, in_scale, wt.scale, acc_std)
    out_zp = int(rng.integers(-40, 41))
    x = _act("x", (n, h, w, cin), in_scale, in_zp)
    y = _act("y", (n, oh, ow, cout), out_scale, out_zp)
    op = Op(kind, ["x", "w", "b"], ["y"], attrs, name=kind.lower())
    if binary_input:
        data = np.where(rng.random((n, h, w, cin)) < 0.5, -1, 1).astype(np.int8)
    else:
        data = _rand_int8(rng, (n, h, w, cin))
    return _graph(kind.lower(), [x, wt, b, y], [op], ["x"], ["y"]), {"x": data}


def build_conv_2d(rng):
    return _conv_like(rng, "CONV_2D")


def build_depthwise_conv_2d(rng):
    return _conv_like(rng, "DEPTHWISE_CONV_2D")


def build_binary_conv_2d(rng, binary_input: bool | None = None):
    """BINARY_CONV_2D; ``binary_input`` None picks int8 or {-1,+1} sign input at random."""
    if binary_input is None:
        binary_input = bool(rng.random() < 0.5)
    return _conv_like(rng, "BINARY_CONV_2D", binary=True, binary_input=binary_input)


def build_fully_connected(rng):
    n, cin, cout = int(rng.integers(1, 4)), int(rng.integers(1, 33)), int(rng.integers(1, 17))
    in_scale, in_zp = _rand_act_quant(rng)
    wt = _weights(rng, "w", (cout, cin), axis=0, per_tensor=bool(rng.random() < 0.3))
    acc_std = math.sqrt(cin) * _rms_centered(in_zp) * _WEIGHT_STD
    b = _bias(rng, "b", in_scale, wt, acc_std)
    y = _act("y", (n, cout), _out_scale(rng, in_scale, wt.scale, acc_std), int(rng.integers(-40, 41)))
    op = Op("FULLY_CONNECTED", ["x", "w", "b"], ["y"], {"act": _act_kind(rng)}, name="fc")
    x = _act("x", (n, cin), in_scale, in_zp)
    return _graph("fully_connected", [x, wt, b, y], [op], ["x"], ["y"]), {"x": _rand_int8(rng, (n, cin))}


# --------------------------------------------------------------------------- elementwise

def _broadcast_shapes(rng):
    h, w, c = int(rng.integers(1, 7)), int(rng.integers(1, 7)), int(rng.integers(1, 9))
    full = (1, h, w, c)
    choice = rng.integers(0, 4)
    if choice == 0:
        other = full
    elif choice == 1:
        other = (1, 1, 1, c)
    elif choice == 2:
        other = (1, h, w, 1)
    else:
        other = (1, 1, w, c)
    return (full, other) if rng.random() < 0.5 else (other, full)


def _binary_elementwise(rng, kind: str):
    sa, sb = _broadcast_shapes(rng)
    qa, qb = _rand_act_quant(rng), _rand_act_quant(rng)
    if kind == "ADD":
        out_scale = (qa[0] + qb[0]) * _INT8_STD / _TARGET_STEPS * _loguniform(rng, 0.5, 2.0)
    else:
        out_scale = qa[0] * qb[0] * _rms_centered(qa[1]) * _rms_centered(qb[1]) / _TARGET_STEPS
        out_scale *= _loguniform(rng, 0.5, 2.0)
    out_shape = tuple(np.broadcast_shapes(sa, sb))
    tensors = [_act("x0", sa, *qa), _act("x1", sb, *qb),
               _act("y", out_shape, out_scale, int(rng.integers(-40, 41)))]
    op = Op(kind, ["x0", "x1"], ["y"], {"act": _act_kind(rng)}, name=kind.lower())
    inputs = {"x0": _rand_int8(rng, sa), "x1": _rand_int8(rng, sb)}
    return _graph(kind.lower(), tensors, [op], ["x0", "x1"], ["y"]), inputs


def build_add(rng):
    return _binary_elementwise(rng, "ADD")


def build_mul(rng):
    return _binary_elementwise(rng, "MUL")


# --------------------------------------------------------------------------- pooling and reductions

def _pool(rng, kind: str):
    for _ in range(100):
        n = int(rng.integers(1, 3)) if rng.random() < 0.25 else 1
        h, w, c = int(rng.integers(1, 11)), int(rng.integers(1, 11)), int(rng.integers(1, 9))
        fh, fw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        padding = _spatial_pads(rng, (h, w), (fh, fw), stride, allow_explicit=kind == "MAX_POOL_2D")
        if padding is not None:
            break
    pads, (oh, ow) = padding
    scale, zp = _rand_act_quant(rng)
    # TFLite pools keep the input quantization (no requantization in the kernel)
    tensors = [_act("x", (n, h, w, c), scale, zp), _act("y", (n, oh, ow, c), scale, zp)]
    attrs = {"filter": (fh, fw), "stride": stride, "pads": pads, "act": _act_kind(rng)}
    op = Op(kind, ["x"], ["y"], attrs, name=kind.lower())
    return _graph(kind.lower(), tensors, [op], ["x"], ["y"]), {"x": _rand_int8(rng, (n, h, w, c))}


def build_average_pool_2d(rng):
    return _pool(rng, "AVERAGE_POOL_2D")


def build_max_pool_2d(rng):
    return _pool(rng, "MAX_POOL_2D")


def build_mean(rng):
    n = int(rng.integers(1, 3)) if rng.random() < 0.25 else 1
    h, w, c = int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
    axes = [(1, 2), (1, 2), (1, 2), (1,), (2,), (3,), (1, 2, 3)][int(rng.integers(0, 7))]
    keep = bool(rng.random() < 0.5)
    scale, zp = _rand_act_quant(rng)
    if rng.random() < 0.5:
        out_scale, out_zp = scale, zp
    else:
        out_scale, out_zp = scale / math.sqrt(h * w) * _loguniform(rng, 0.5, 2.0), int(rng.integers(-40, 41))
    shape = (n, h, w, c)
    out_shape = tuple(1 if i in axes else s for i, s in enumerate(shape)) if keep else \
        tuple(s for i, s in enumerate(shape) if i not in axes)
    tensors = [_act("x", shape, scale, zp), _act("y", out_shape, out_scale, out_zp)]
    op = Op("MEAN", ["x"], ["y"], {"axes": tuple(axes), "keep_dims": keep}, name="mean")
    return _graph("mean", tensors, [op], ["x"], ["y"]), {"x": _rand_int8(rng, shape)}


# --------------------------------------------------------------------------- shape ops

def _rand_nhwc(rng, max_hw: int = 8, max_c: int = 8):
    return (1, int(rng.integers(1, max_hw + 1)), int(rng.integers(1, max_hw + 1)), int(rng.integers(1, max_c + 1)))


def build_reshape(rng):
    shape = _rand_nhwc(rng)
    total = int(np.prod(shape))
    # a random factorisation of the element count into 1..4 dims
    dims, rest = [], total
    for _ in range(int(rng.integers(0, 3))):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        d = int(rng.choice(divisors))
        dims.append(d)
        rest //= d
    new_shape = tuple(dims + [rest])
    scale, zp = _rand_act_quant(rng)
    tensors = [_act("x", shape, scale, zp), _act("y", new_shape, scale, zp)]
    op = Op("RESHAPE", ["x"], ["y"], {"shape": new_shape}, name="reshape")
    return _graph("reshape", tensors, [op], ["x"], ["y"]), {"x": _rand_int8(rng, shape)}


def build_transpose(rng):
    rank = int(rng.integers(2, 5))
    shape = tuple(int(rng.integers(1, 6)) for _ in range(rank))
    perm = tuple(int(p) for p in rng.permutation(rank))
    scale, zp = _rand_act_quant(rng)
    tensors = [_act("x", shape, scale, zp), _act("y", tuple(shape[p] for p in perm), scale, zp)]
    op = Op("TRANSPOSE", ["x"], ["y"], {"perm": perm}, name="transpose")
    return _graph("transpose", tensors, [op], ["x"], ["y"]), {"x": _rand_int8(rng, shape)}


def build_concatenation(rng):
    k = int(rng.integers(2, 4))
    base = _rand_nhwc(rng, max_hw=6)
    axis = int(rng.integers(1, 4))
    shapes = []
    for _ in range(k):
        s = list(base)
        s[axis] = int(rng.integers(1, 6))
        shapes.append(tuple(s))
    quants = [_rand_act_quant(rng) for _ in range(k)]
    if rng.random() < 0.3:  # the common case: all inputs share the output quantization
        quants = [quants[0]] * k
        out_q = quants[0]
    else:
        out_q = (max(q[0] for q in quants) * _loguniform(rng, 0.7, 1.5), int(rng.integers(-40, 41)))
    out_shape = list(base)
    out_shape[axis] = sum(s[axis] for s in shapes)
    names = [f"x{i}" for i in range(k)]
    tensors = [_act(nm, s, *q) for nm, s, q in zip(names, shapes, quants)]
    tensors.append(_act("y", out_shape, *out_q))
    op = Op("CONCATENATION", names, ["y"], {"axis": axis, "act": "NONE"}, name="concat")
    inputs = {nm: _rand_int8(rng, s) for nm, s in zip(names, shapes)}
    return _graph("concatenation", tensors, [op], names, ["y"]), inputs


def build_pad(rng):
    shape = _rand_nhwc(rng, max_hw=6)
    paddings = ((0, 0),) + tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(3))
    out_shape = tuple(s + a + b for s, (a, b) in zip(shape, paddings))
    scale, zp = _rand_act_quant(rng)
    tensors = [_act("x", shape, scale, zp), _act("y", out_shape, scale, zp)]
    op = Op("PAD", ["x"], ["y"], {"paddings": paddings}, name="pad")
    return _graph("pad", tensors, [op], ["x"], ["y"]), {"x": _rand_int8(rng, shape)}


def _resize(rng, kind: str):
    shape = _rand_nhwc(rng, max_hw=6)
    size = (int(rng.integers(1, 13)), int(rng.integers(1, 13)))
    mode = int(rng.integers(0, 3))  # 0: neither, 1: align_corners, 2: half_pixel_centers
    scale, zp = _rand_act_quant(rng)
    out_shape = (shape[0], size[0], size[1], shape[3])
    tensors = [_act("x", shape, scale, zp), _act("y", out_shape, scale, zp)]
    attrs = {"size": size, "align_corners": mode == 1, "half_pixel_centers": mode == 2}
    op = Op(kind, ["x"], ["y"], attrs, name=kind.lower())
    return _graph(kind.lower(), tensors, [op], ["x"], ["y"]), {"x": _rand_int8(rng, shape)}


def build_resize_nearest_neighbor(rng):
    return _resize(rng, "RESIZE_NEAREST_NEIGHBOR")


def build_resize_bilinear(rng):
    return _resize(rng, "RESIZE_BILINEAR")


# --------------------------------------------------------------------------- activations and casts

def build_logistic(rng):
    shape = _rand_nhwc(rng, max_hw=5) if rng.random() < 0.5 else (1, int(rng.integers(1, 65)))
    in_scale, in_zp = _loguniform(rng, 0.01, 0.1), int(rng.integers(-100, 101))
    tensors = [_act("x", shape, in_scale, in_zp), _act("y", shape, 1.0 / 256.0, -128)]
    op = Op("LOGISTIC", ["x"], ["y"], {}, name="logistic")
    return _graph("logistic", tensors, [op], ["x"], ["y"]), {"x": _rand_int8(rng, shape)}


def build_softmax(rng):
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 33))) if rng.random() < 0.6 else _rand_nhwc(rng, 4)
    in_scale, in_zp = _loguniform(rng, 0.01, 0.15), int(rng.integers(-100, 101))
    beta = float(rng.choice([1.0, 1.0, 0.5, 2.0]))
    tensors = [_act("x", shape, in_scale, in_zp), _act("y", shape, 1.0 / 256.0, -128)]
    op = Op("SOFTMAX", ["x"], ["y"], {"beta": beta}, name="softmax")
    return _graph("softmax", tensors, [op], ["x"], ["y"]), {"x": _rand_int8(rng, shape)}


def build_quantize(rng, from_float: bool | None = None):
    """QUANTIZE float32 -> int8, or int8 -> int8 requantize (``from_float`` None: random)."""
    if from_float is None:
        from_float = bool(rng.random() < 0.5)
    shape = _rand_nhwc(rng, max_hw=5)
    out_scale, out_zp = _rand_act_quant(rng)
    if from_float:
        x = Tensor("x", shape, dtype="float32")
        data = rng.normal(0.0, 60 * out_scale, size=shape).astype(np.float32)
    else:
        in_scale, in_zp = _rand_act_quant(rng)
        x = _act("x", shape, in_scale, in_zp)
        out_scale = in_scale * _loguniform(rng, 0.5, 2.0)
        data = _rand_int8(rng, shape)
    tensors = [x, _act("y", shape, out_scale, out_zp)]
    op = Op("QUANTIZE", ["x"], ["y"], {}, name="quantize")
    return _graph("quantize", tensors, [op], ["x"], ["y"]), {"x": data}


def build_dequantize(rng):
    shape = _rand_nhwc(rng, max_hw=5)
    scale, zp = _rand_act_quant(rng)
    tensors = [_act("x", shape, scale, zp), Tensor("y", shape, dtype="float32")]
    op = Op("DEQUANTIZE", ["x"], ["y"], {}, name="dequantize")
    return _graph("dequantize", tensors, [op], ["x"], ["y"]), {"x": _rand_int8(rng, shape)}


def build_sign(rng):
    shape = _rand_nhwc(rng, max_hw=5)
    scale, zp = _rand_act_quant(rng)
    tensors = [_act("x", shape, scale, zp), _act("y", shape, 1.0, 0)]
    op = Op("SIGN", ["x"], ["y"], {}, name="sign")
    return _graph("sign", tensors, [op], ["x"], ["y"]), {"x": _rand_int8(rng, shape)}


#: op kind -> builder(rng) -> (IntGraph, {input name: array}); one entry per IntGraph op kind
OP_BUILDERS = {
    "CONV_2D": build_conv_2d,
    "DEPTHWISE_CONV_2D": build_depthwise_conv_2d,
    "BINARY_CONV_2D": build_binary_conv_2d,
    "FULLY_CONNECTED": build_fully_connected,
    "ADD": build_add,
    "MUL": build_mul,
    "AVERAGE_POOL_2D": build_average_pool_2d,
    "MAX_POOL_2D": build_max_pool_2d,
    "MEAN": build_mean,
    "RESHAPE": build_reshape,
    "TRANSPOSE": build_transpose,
    "CONCATENATION": build_concatenation,
    "PAD": build_pad,
    "RESIZE_NEAREST_NEIGHBOR": build_resize_nearest_neighbor,
    "RESIZE_BILINEAR": build_resize_bilinear,
    "LOGISTIC": build_logistic,
    "SOFTMAX": build_softmax,
    "QUANTIZE": build_quantize,
    "DEQUANTIZE": build_dequantize,
    "SIGN": build_sign,
}


def random_op_graph(kind: str, rng) -> tuple[IntGraph, dict[str, np.ndarray]]:
    """A random single-op graph of ``kind`` and matching random inputs."""
    if kind not in OP_BUILDERS:
        raise KeyError(f"no random builder for op kind {kind!r}; known: {', '.join(OP_BUILDERS)}")
    return OP_BUILDERS[kind](rng)



# --------------------------------------------------------------------------- networks (random_nets.py)

def random_multi_op_graph(rng) -> tuple[IntGraph, dict[str, np.ndarray]]:
    """A small network with residual ADD, CONCATENATION, depthwise, channel shuffle (RESHAPE ->
    TRANSPOSE -> RESHAPE), nearest upsample, pool, MEAN, FULLY_CONNECTED and SOFTMAX; input
    ``x`` int8 [1, H, W, 3]. Built in ``random_nets.py``."""
    from random_nets import random_multi_op_graph as build
    return build(rng)


def resnet8_graph(rng, size: int = 32, classes: int = 10) -> tuple[IntGraph, dict[str, np.ndarray]]:
    """A ResNet-8 shaped int8 graph on a [1, size, size, 3] input (see ``random_nets.py``)."""
    from random_nets import resnet8_graph as build
    return build(rng, size=size, classes=classes)


def wide_resnet8_graph(rng, size: int = 32, classes: int = 10, widths: tuple[int, int, int] = (58, 116, 232)
                       ) -> tuple[IntGraph, dict[str, np.ndarray]]:
    """ResNet-8 with ~3.6x the channels (58-116-232): a 1.02 MB weight blob (0.98 MiB) for
    transfer benchmarks, where the default ResNet-8's blob is 83 KB."""
    from random_nets import resnet8_graph as build
    return build(rng, size=size, classes=classes, widths=widths)


__all__ = ["OP_BUILDERS", "random_op_graph", "random_multi_op_graph", "resnet8_graph", "same_pads",
           "wide_resnet8_graph",
           *(builder.__name__ for builder in OP_BUILDERS.values())]
