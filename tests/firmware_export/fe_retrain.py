"""``retrained(graph, rng)``: the same architecture after retraining and requantizing (test helper).

Every constant gets new values, every activation and weight scale and every zero point moves,
except where op semantics fix them (SOFTMAX/LOGISTIC outputs 1/256 and -128, SIGN outputs 1 and
0, symmetric weights with zero point 0) and where TFLite requires an op's output to share its
input's quantization (reshape, transpose, resize, pooling, pad). Biases keep
``scale = input_scale * weight_scale``. The structure (ops, attributes, shapes) is untouched.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from firmware_export.intgraph import IntGraph, Op, Tensor

#: ops whose output carries its input's quantization (TFLite requires equal quantization)
SAME_QUANT = ("RESHAPE", "TRANSPOSE", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR",
              "AVERAGE_POOL_2D", "MAX_POOL_2D", "PAD")
#: (scale, zero point) pairs fixed by op semantics
FIXED = ((1.0 / 256.0, -128), (1.0, 0))
CONV_LIKE = ("CONV_2D", "DEPTHWISE_CONV_2D", "BINARY_CONV_2D", "FULLY_CONNECTED")


def _factor(rng, n: int = 1) -> np.ndarray:
    return np.exp(rng.uniform(math.log(0.6), math.log(1.7), n))


def _new_activation_quant(t: Tensor, rng) -> Tensor:
    if t.scale is None:
        return t
    scale, zp = float(np.asarray(t.scale).reshape(-1)[0]), int(np.asarray(t.zero_point).reshape(-1)[0])
    if (np.float32(scale), zp) in {(np.float32(s), z) for s, z in FIXED}:
        return t
    new_zp = int(np.clip(zp + rng.integers(-15, 16), -128, 127))
    return dataclasses.replace(t, scale=(np.asarray(t.scale, np.float32) * _factor(rng)).astype(np.float32),
                               zero_point=np.array([new_zp], np.int64))


def _new_constant(t: Tensor, rng) -> Tensor:
    data = np.asarray(t.data)
    if t.bits == 1:
        new = np.where(rng.random(data.shape) < 0.5, -1, 1).astype(np.int8)
    elif t.dtype == "int32":
        std = max(1.0, float(np.std(data.astype(np.float64))))
        new = np.round(rng.normal(0.0, std, data.shape)).astype(np.int32)
    else:
        info = np.iinfo(t.dtype)
        lo = -127 if t.dtype == "int8" and t.quant_axis is not None else info.min
        new = rng.integers(lo, int(info.max) + 1, data.shape).astype(t.dtype)
    scale, zp = t.scale, t.zero_point
    if scale is not None and t.dtype != "int32":
        is_weight = t.quant_axis is not None and np.all(np.asarray(zp) == 0)
        scale = (np.asarray(scale, np.float32) * _factor(rng, np.size(scale))).astype(np.float32)
        if not is_weight:  # a constant operand of ADD / MUL: asymmetric like an activation
            zp = np.clip(np.asarray(zp) + rng.integers(-15, 16, np.size(zp)), -128, 127).astype(np.int64)
    return dataclasses.replace(t, data=new, scale=scale, zero_point=zp)


def retrained(graph: IntGraph, rng) -> IntGraph:
    """A copy of ``graph`` with the same ``structure_hash()`` and new weights and quantization."""
    tensors = dict(graph.tensors)
    for name in graph.inputs:
        tensors[name] = _new_activation_quant(tensors[name], rng)
    for name, t in graph.tensors.items():
        if t.is_constant:
            tensors[name] = _new_constant(t, rng)
    for op in graph.ops:
        for name in op.outputs:
            out = tensors[name]
            if op.kind in SAME_QUANT and out.dtype == "int8":
                src = tensors[op.inputs[0]]
                tensors[name] = dataclasses.replace(out, scale=src.scale, zero_point=src.zero_point)
            else:
                tensors[name] = _new_activation_quant(out, rng)
        if op.kind in CONV_LIKE and len(op.inputs) > 2 and op.inputs[2]:
            x, w, b = tensors[op.inputs[0]], tensors[op.inputs[1]], tensors[op.inputs[2]]
            scale = (np.float32(x.per_tensor_scale()) * np.asarray(w.scale, np.float32)).astype(np.float32)
            if np.size(scale) == 1 and np.size(b.scale) > 1:
                scale = np.repeat(scale, np.size(b.scale))
            tensors[op.inputs[2]] = dataclasses.replace(b, scale=scale)
    ops = [Op(op.kind, list(op.inputs), list(op.outputs), dict(op.attrs), op.name) for op in graph.ops]
    new = IntGraph(tensors, ops, list(graph.inputs), list(graph.outputs), graph.name)
    new.validate()
    return new
