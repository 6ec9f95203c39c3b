"""Per-layer sensitivity: SQNR between FP32 and INT8 activations on the calibration set.

For every activation the QDQ model quantizes, the FP32 model's tensor is compared with the INT8
model's dequantized tensor at the same point (errors accumulate from the input onwards):
``SQNR = 10 log10(sum x^2 / sum (x - x_q)^2)``. ``loss_db`` is how many dB a layer loses relative
to the worst of its quantized inputs — the layers with the largest loss are the ones to keep in
float (``--keep-float``) or to fix (outliers, too-wide ranges). No torch.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from quantize.ptq import preprocess_model

QUANT_INPUT_SUFFIX = "_QuantizeLinear_Input"


@dataclass
class LayerSQNR:
    tensor: str
    node: str
    op_type: str
    sqnr_db: float
    loss_db: float | None

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "node": self.node, "op_type": self.op_type,
                "sqnr_db": round(self.sqnr_db, 2), "loss_db": None if self.loss_db is None else round(self.loss_db, 2)}


def with_extra_outputs(model: onnx.ModelProto, names: Sequence[str]) -> bytes:
    """A copy of ``model`` that also returns the named tensors (types left to onnxruntime)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return m.SerializeToString()


def quant_points(qdq: onnx.ModelProto) -> list[tuple[str, str, str, str]]:
    """(fp32 tensor, int8 dequantized tensor, producing node, op type) for each quantized activation."""
    inits = {i.name for i in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    dq_by_input = {n.input[0]: n for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    points = []
    for q in qdq.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in inits or q.output[0] not in dq_by_input:
            continue
        t = q.input[0]
        dq_out = dq_by_input[q.output[0]].output[0]
        fp32_name = dq_out if t.endswith(QUANT_INPUT_SUFFIX) else t  # graph outputs keep their name on the DQ
        node = producer.get(t)
        points.append((fp32_name, dq_out, node.name if node else "(graph input)", node.op_type if node else "Input"))
    return points


def sensitivity_report(fp32_path: str | Path, qdq_path: str | Path,
                       feeds: Sequence[dict[str, np.ndarray]]) -> list[LayerSQNR]:
    """SQNR per quantized activation of ``qdq_path`` against ``fp32_path`` over ``feeds``, in graph order."""
    qdq = onnx.load(str(qdq_path))
    with tempfile.TemporaryDirectory(prefix="edgesmith-sqnr-") as tmp:
        # the QDQ model was made from the pre-processed FP32 model: compare against the same graph
        fp32 = onnx.load(str(preprocess_model(fp32_path, Path(tmp) / "pre.onnx")))
    fp32_tensors = {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input}
    points = [p for p in quant_points(qdq) if p[0] in fp32_tensors]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s_fp = ort.InferenceSession(with_extra_outputs(fp32, [p[0] for p in points]), opts, providers=["CPUExecutionProvider"])
    s_q = ort.InferenceSession(with_extra_outputs(qdq, [p[1] for p in points]), opts, providers=["CPUExecutionProvider"])
    signal = np.zeros(len(points))
    noise = np.zeros(len(points))
    for feed in feeds:
        a = s_fp.run([p[0] for p in points], feed)
        b = s_q.run([p[1] for p in points], feed)
        for i, (x, y) in enumerate(zip(a, b)):
            x64 = x.astype(np.float64)
            signal[i] += np.sum(x64 * x64)
            noise[i] += np.sum((x64 - y) ** 2)
    sqnr = 10 * np.log10(np.maximum(signal, 1e-30) / np.maximum(noise, 1e-30))
    by_dq = {p[1]: i for i, p in enumerate(points)}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    report = []
    for i, (fp_name, dq_out, node, op) in enumerate(points):
        q_input = fp_name + QUANT_INPUT_SUFFIX if dq_out == fp_name else fp_name
        src = producer.get(q_input)
        upstream = [sqnr[by_dq[t]] for t in (src.input if src is not None else []) if t in by_dq]
        loss = float(min(upstream) - sqnr[i]) if upstream else None
        report.append(LayerSQNR(fp_name, node, op, float(sqnr[i]), loss))
    return report


def worst_layers(report: Sequence[LayerSQNR], n: int = 5) -> list[LayerSQNR]:
    """The ``n`` layers that lose the most SQNR relative to their inputs."""
    ranked = [r for r in report if r.loss_db is not None]
    return sorted(ranked, key=lambda r: r.loss_db, reverse=True)[:n]


def format_report(report: Sequence[LayerSQNR], n: int = 5) -> str:
    lines = [f"{'layer':<44} {'op':<18} {'SQNR dB':>8} {'loss dB':>8}"]
    for r in worst_layers(report, n):
        lines.append(f"{r.node[-44:]:<44} {r.op_type:<18} {r.sqnr_db:8.2f} {r.loss_db:8.2f}")
    final = report[-1] if report else None
    if final:
        lines.append(f"output {final.tensor}: SQNR {final.sqnr_db:.2f} dB")
    return "\n".join(lines)
