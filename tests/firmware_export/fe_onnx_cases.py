"""Shared helpers for the QDQ ONNX importer tests: quantize torch models like EdgeSmith, build QDQ
graphs by hand, and compare the imported graph in the reference interpreter against onnxruntime.

Import from tests as ``from fe_onnx_cases import ...`` (this folder is on sys.path).

Parity is ``reference.run`` on the imported graph against onnxruntime running the same QDQ model
with graph optimizations off, i.e. the QDQ graph as written (DQ -> float op -> Q). onnxruntime
rescales in float, the reference in TFLite fixed point: at most 1 LSB on >= 99% of elements and
2 LSB anywhere. With optimizations on, onnxruntime's fused int8 kernels differed from the QDQ
graph by up to 32 LSB on an AVX2 machine without VNNI, and came back within 2 LSB when the model
was quantized with reduce_range=True, consistent with the int16 saturation of 8-bit u8s8
multiply-adds that onnxruntime documents for such CPUs.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from firmware_export import onnx_layout as L
from firmware_export import reference
from firmware_export.onnx_importer import OnnxImport, import_qdq_onnx


class CalibReader(CalibrationDataReader):
    def __init__(self, name: str, batches: list[np.ndarray]):
        self._it = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self._it, None)


def quantize_torch(model: nn.Module, shape, tmp_path, *, seed: int = 0, activation_type=QuantType.QInt8,
                   pin_probabilities: bool = True):
    """Export ``model`` (eval) like EdgeSmith's trainer and quantize it like EdgeSmith's quantizer.

    ``pin_probabilities``: give Sigmoid/Softmax outputs TFLite's fixed quantization (scale 1/256,
    zero point -128) with onnxruntime's TensorQuantOverrides, so LOGISTIC/SOFTMAX write the Q's
    tensor directly instead of being requantized (a second rounding, up to 2 LSB).
    """
    torch.manual_seed(seed)
    model.eval()
    for m in model.modules():  # non-trivial BN statistics so folding matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    fp32, qdq = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    torch.onnx.export(model, (torch.randn(*shape),), str(fp32), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    rng = np.random.default_rng(seed)
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]
    extra = {"WeightSymmetric": True, "ActivationSymmetric": False}
    if pin_probabilities:
        probs = [n.output[0] for n in onnx.load(str(fp32)).graph.node if n.op_type in ("Sigmoid", "Softmax")]
        extra["TensorQuantOverrides"] = {
            name: [{"scale": np.array(1 / 256, np.float32), "zero_point": np.array(-128, np.int8)}] for name in probs}
    quantize_static(str(fp32), str(qdq), CalibReader("input", calib), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=activation_type, weight_type=QuantType.QInt8,
                    extra_options=extra)
    return qdq


def ort_session(model_or_path, optimized: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session; graph optimizations off unless ``optimized``."""
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def compare_with_ort(qdq_path, n_samples: int = 3, seed: int = 1, optimized: bool = False):
    """Import ``qdq_path``; int8 differences reference vs onnxruntime over random inputs."""
    imported = import_qdq_onnx(qdq_path)
    (inp,) = imported.inputs
    sess = ort_session(qdq_path, optimized)
    rng = np.random.default_rng(seed)
    diffs = [int8_diff(imported, sess, inp.to_graph(rng.standard_normal(inp.onnx_shape).astype(np.float32)))
             for _ in range(n_samples)]
    return imported, np.concatenate(diffs)


def assert_close(diff: np.ndarray):
    """The parity bar: <= 1 LSB on >= 99% of elements and <= 2 LSB everywhere."""
    within1 = float(np.mean(diff <= 1))
    assert within1 >= 0.99 and diff.max() <= 2, f"max |diff| {diff.max()}, <=1 LSB on {within1:.2%}"


def kinds(graph) -> list[str]:
    return [op.kind for op in graph.ops]


def int8_diff(imported: OnnxImport, sess: ort.InferenceSession, q_in: np.ndarray) -> np.ndarray:
    """|reference - onnxruntime| in int8 steps for one int8 graph input, all outputs flattened.

    onnxruntime gets exactly the dequantized int8 input, so both sides see the same int8 values;
    its float outputs are requantized with the output Q's parameters.
    """
    (inp,) = imported.inputs
    ort_outs = sess.run(None, {inp.onnx_name: inp.from_graph(q_in)})
    ref = reference.run(imported.graph, {inp.tensor: q_in})
    diffs = []
    for out, y in zip(imported.outputs, ort_outs):
        q_ort = np.clip(np.rint(y / np.float32(out.scale)) + out.zero_point, -128, 127).astype(np.int64)
        diffs.append(np.abs(ref[out.tensor].astype(np.int64).transpose(L.inverse(out.perm)) - q_ort).reshape(-1))
    return np.concatenate(diffs)


# --------------------------------------------------------------------------- hand-built QDQ graphs


def qdq_graph(nodes, inits, outputs, inputs=(("x", [1, 2, 4, 4]),)):
    """A checked opset-17 model from nodes and {name: array} initializers (float inputs/outputs)."""
    graph = helper.make_graph(
        nodes, "handmade",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def act_q(name, scale, zp):
    """Initializers ``<name>_s`` / ``<name>_zp`` for an int8 activation quantization."""
    return {f"{name}_s": np.array(scale, np.float32), f"{name}_zp": np.array(zp, np.int8)}


def dq_node(x, y, params, **attrs):
    return helper.make_node("DequantizeLinear", [x, f"{params}_s", f"{params}_zp"], [y], **attrs)


def q_node(x, y, params):
    return helper.make_node("QuantizeLinear", [x, f"{params}_s", f"{params}_zp"], [y])


def conv_nodes(prefix, x, w, b, w_s, b_s, out_q):
    """DQ(w), DQ(b) -> Conv ``prefix`` on float ``x`` -> Q/DQ with ``out_q`` params -> ``<prefix>_y``."""
    return [helper.make_node("DequantizeLinear", [w, w_s, f"{w}_zp"], [f"{w}f"], axis=0),
            helper.make_node("DequantizeLinear", [b, b_s, f"{b}_zp"], [f"{b}f"], axis=0),
            helper.make_node("Conv", [x, f"{w}f", f"{b}f"], [f"{prefix}_c"], name=prefix),
            helper.make_node("QuantizeLinear", [f"{prefix}_c", f"{out_q}_s", f"{out_q}_zp"], [f"{prefix}_q"]),
            helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{out_q}_s", f"{out_q}_zp"], [f"{prefix}_y"])]
