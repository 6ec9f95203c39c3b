"""The INT8 QDQ scheme, checked node by node.

``check_qdq_scheme(model)`` returns every way a QDQ ONNX model breaks the TFLite-compatible
conventions EdgeSmith promises (see ``quantize/ptq.py``); an empty list means the model is
consumable as it is by ``firmware_export``, TensorRT's explicit quantization and onnxruntime.
No torch: targets may use it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

WEIGHT_QMAX = 127
#: ops whose input 1 is a weight and input 2 a bias
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
BIAS_RTOL = 1e-4


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _dq_of(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """DequantizeLinear / QuantizeLinear nodes by output name."""
    return {n.output[0]: n for n in model.graph.node if n.op_type in ("DequantizeLinear", "QuantizeLinear")}


def activation_params(model: onnx.ModelProto, dq_out: str, inits: dict, nodes: dict) -> tuple[float, int] | None:
    """(scale, zero_point) of the activation DequantizeLinear producing ``dq_out``, or None."""
    node = nodes.get(dq_out)
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] in inits:
        return None
    scale = inits.get(node.input[1])
    zp = inits.get(node.input[2]) if len(node.input) > 2 else np.zeros((), np.int8)
    if scale is None or zp is None:
        return None
    return float(np.asarray(scale).reshape(-1)[0]), int(np.asarray(zp).reshape(-1)[0])


def check_qdq_scheme(model: onnx.ModelProto, keep_float: Sequence[str] = ()) -> list[str]:
    """Every violation of the scheme in ``model``, as readable strings naming the node.

    Nodes named in ``keep_float`` were left in float on purpose and are not checked.
    """
    inits = _initializers(model)
    nodes = _dq_of(model)
    problems: list[str] = []
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            zp = inits.get(node.input[2]) if len(node.input) > 2 else None
            scale = inits.get(node.input[1])
            if zp is None or zp.dtype != np.int8:
                problems.append(f"{node.name}: activations must be int8 (zero point dtype "
                                f"{None if zp is None else zp.dtype})")
            if scale is None or scale.size != 1:
                problems.append(f"{node.name}: activations need one scale per tensor")
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.name in keep_float:
            continue
        w_dq = nodes.get(node.input[1])
        if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in inits:
            problems.append(f"{node.name} ({node.op_type}): weight is not an int8 initializer behind DequantizeLinear")
            continue
        w = inits[w_dq.input[0]]
        w_scale = np.asarray(inits[w_dq.input[1]], np.float64).reshape(-1)
        w_zp = inits.get(w_dq.input[2]) if len(w_dq.input) > 2 else np.zeros(1, np.int8)
        if w.dtype != np.int8:
            problems.append(f"{node.name}: weight dtype {w.dtype}, expected int8")
        if np.any(np.asarray(w_zp) != 0):
            problems.append(f"{node.name}: weight zero point must be 0 (symmetric), got {np.unique(w_zp)[:4]}")
        if w.size and (int(w.min()) < -WEIGHT_QMAX or int(w.max()) > WEIGHT_QMAX):
            problems.append(f"{node.name}: weight values must lie in [-127, 127], got [{w.min()}, {w.max()}]")
        if w_scale.size > 1:
            axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
            if w.shape[axis] != w_scale.size:
                problems.append(f"{node.name}: {w_scale.size} weight scales do not match axis {axis} of {w.shape}")
        if len(node.input) < 3 or not node.input[2]:
            continue
        b_dq = nodes.get(node.input[2])
        if b_dq is None or b_dq.op_type != "DequantizeLinear" or b_dq.input[0] not in inits:
            problems.append(f"{node.name}: bias is not an int32 initializer behind DequantizeLinear")
            continue
        b = inits[b_dq.input[0]]
        b_scale = np.asarray(inits[b_dq.input[1]], np.float64).reshape(-1)
        if b.dtype != np.int32:
            problems.append(f"{node.name}: bias dtype {b.dtype}, expected int32")
        x = activation_params(model, node.input[0], inits, nodes)
        if x is None:
            problems.append(f"{node.name}: input is not a quantized activation")
            continue
        expected = x[0] * w_scale
        if expected.size == 1 and b_scale.size > 1:
            expected = np.full_like(b_scale, expected[0])
        if expected.shape != b_scale.shape or not np.allclose(b_scale, expected, rtol=BIAS_RTOL, atol=0):
            problems.append(f"{node.name}: bias scale must equal input scale x weight scale "
                            f"(max rel. error {np.max(np.abs(b_scale / expected - 1)) if expected.shape == b_scale.shape else 'shape'})")
    return problems
