"""Post-training INT8 quantization to QDQ ONNX with TFLite-compatible parameters.

The scheme (the contract with ``firmware_export``, TensorRT and onnxruntime):

* weights: int8, symmetric (zero point 0), values in [-127, 127], per output channel (axis 0),
  or per tensor with ``per_channel=False``;
* activations: int8, asymmetric, one scale per tensor, from calibrated ranges;
* biases: int32 with scale = input scale x weight scale, zero point 0;
* BatchNorm folded into the preceding conv (onnxruntime's pre-processing), ReLU / Clip fused: the
  QDQ quantizer drops them and the output's int8 range (zero point at -128 for ReLU) does the
  clamping — exactly TFLite's fused activation;
* LeakyReLU fused into the Conv / Gemm before it (``fuse_leaky_relu``): no QuantizeLinear between
  them, so the accumulator goes through LeakyReLU before it is requantized once, with the
  LeakyReLU output's range. Quantizing the conv output first costs the positive half about a bit
  (its range also covers the negative tail LeakyReLU then shrinks ten-fold); on the NanoDet-m
  benchmark that double rounding was the whole INT8 mAP loss. TensorRT fuses Conv+LeakyReLU the
  same way; TFLite has no fused LeakyReLU (nor has ``firmware_export``, which takes ReLU/ReLU6
  models), so pass ``fuse_leaky_relu=False`` for a converter that needs the int8 conv output.

Built on ``onnxruntime.quantization`` (pre-processing, calibrators, QDQ insertion); EdgeSmith adds
the MSE calibrator, ranges from QAT, the checks before and after, and clear errors.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgesmith.errors import ConfigError, ExportError
from quantize.calibrators import compute_ranges, quiet_onnxruntime
from quantize.scheme import check_qdq_scheme

#: ONNX op types the INT8 scheme quantizes: what onnxruntime's QDQ quantizer handles, plus ops that
#: carry no arithmetic of their own. Anything else must be kept in float explicitly (``keep_float``).
#: (Firmware export accepts a subset; its importer lists what it cannot compile.)
PASS_THROUGH_OPS = frozenset({"Relu", "Clip", "Identity", "Dropout", "Sign", "GlobalMaxPool", "ReduceMean",
                              "BatchNormalization"})
QUANTIZABLE_OPS = frozenset(QLinearOpsRegistry) | frozenset(QDQRegistry) | PASS_THROUGH_OPS
#: ops whose outputs TFLite fixes to scale 1/256, zero point -128 (int8 LOGISTIC / SOFTMAX): pinning
#: them here saves the firmware a second rounding
PROBABILITY_OPS = ("Sigmoid", "Softmax")
PROBABILITY_SCALE, PROBABILITY_ZERO_POINT = 1 / 256, -128


@dataclass
class Int8Result:
    """What a quantization run produced: the file, its parameters and the checks it passed."""

    path: Path
    method: str
    per_channel: bool
    keep_float: list[str]
    num_quantized_tensors: int
    calibration_images: int
    notes: list[str] = field(default_factory=list)
    leaky_relu_fused_into: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "method": self.method, "per_channel": self.per_channel,
                "keep_float": self.keep_float, "quantized_activations": self.num_quantized_tensors,
                "calibration_images": self.calibration_images, "notes": self.notes,
                "leaky_relu_fused_into": len(self.leaky_relu_fused_into)}


def preprocess_model(fp32_path: str | Path, out_path: str | Path) -> Path:
    """onnxruntime's recommended pre-processing: shape inference and BN / constant folding."""
    try:
        with quiet_onnxruntime():
            # onnx shape inference only: onnxruntime's symbolic pass fails on some detectors and
            # then leaves a temp file in the working directory
            quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    except Exception as e:  # onnxruntime raises many types for models it cannot optimise
        raise ExportError(f"onnxruntime could not pre-process {fp32_path} for quantization: {e}") from e
    return Path(out_path)


def unsupported_nodes(model: onnx.ModelProto, keep_float: Sequence[str]) -> list[str]:
    """Nodes computing on float tensors whose op type the scheme cannot quantize, not kept in float.

    Shape arithmetic (ops producing only integer tensors, e.g. Shape -> Gather -> Div -> Concat
    feeding a Reshape) is not quantized and is fine.
    """
    keep = set(keep_float)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}

    def computes_on_floats(n: onnx.NodeProto) -> bool:
        return any(types.get(o, onnx.TensorProto.FLOAT) in floats for o in n.output)

    return [f"{n.name or '(unnamed)'} ({n.op_type})" for n in model.graph.node
            if n.op_type not in QUANTIZABLE_OPS and n.op_type != "Constant" and n.name not in keep
            and computes_on_floats(n)]


def probability_overrides(model: onnx.ModelProto, keep_float: Sequence[str]) -> dict:
    """onnxruntime TensorQuantOverrides pinning Sigmoid/Softmax outputs to TFLite's fixed parameters."""
    return {n.output[0]: [{"scale": np.array(PROBABILITY_SCALE, np.float32),
                           "zero_point": np.array(PROBABILITY_ZERO_POINT, np.int8)}]
            for n in model.graph.node if n.op_type in PROBABILITY_OPS and n.name not in set(keep_float)}


def check_keep_float(model: onnx.ModelProto, keep_float: Sequence[str]) -> None:
    names = [n.name for n in model.graph.node]
    missing = [k for k in keep_float if k not in names]
    if missing:
        shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
        raise ConfigError(f"--keep-float names no node called {', '.join(missing)}; the model's nodes are: {shown}")


def quantize_int8(fp32_path: str | Path, out_path: str | Path, feeds: Sequence[dict[str, np.ndarray]], *,
                  method: str = "minmax", per_channel: bool = True, keep_float: Sequence[str] = (),
                  ranges: TensorsData | None = None, calibration_images: int = 0,
                  fuse_leaky_relu: bool = True) -> Int8Result:
    """Quantize the FP32 ONNX at ``fp32_path`` to QDQ int8 at ``out_path``.

    ``feeds`` are onnxruntime input dicts of preprocessed calibration batches. ``ranges`` (from
    QAT) replaces calibration for the tensors it names. ``keep_float`` lists node names left in
    float (mixed precision). ``fuse_leaky_relu`` drops the Q/DQ between a Conv and the LeakyRelu
    that alone consumes it (see the module docstring). Raises ExportError listing every node the
    scheme cannot quantize.
    """
    out_path = Path(out_path)
    keep_float = list(keep_float)
    with tempfile.TemporaryDirectory(prefix="edgesmith-ptq-") as tmp:
        pre = preprocess_model(fp32_path, Path(tmp) / "pre.onnx")
        model = onnx.load(str(pre))
        check_keep_float(model, keep_float)
        bad = unsupported_nodes(model, keep_float)
        if bad:
            raise ExportError(
                f"the INT8 scheme cannot quantize {len(bad)} node(s) of {fp32_path}: {', '.join(bad)}; "
                "replace those ops in the model, or keep them in float with --keep-float NODE... "
                "(runs in onnxruntime/TensorRT, but firmware export needs every op quantized)")
        merged = _as_tuples(compute_ranges(pre, feeds, method))
        if ranges is not None:
            merged.update(_as_tuples(ranges))
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, merged), cache)
        tmp_out = Path(tmp) / "int8.onnx"
        try:
            with quiet_onnxruntime():
                quantize_static(
                    str(pre), str(tmp_out), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, reduce_range=False, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=keep_float,
                    calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                   "QDQKeepRemovableActivations": False,
                                   "TensorQuantOverrides": probability_overrides(model, keep_float)})
        except Exception as e:
            raise ExportError(f"onnxruntime could not quantize {fp32_path}: {e}") from e
        qmodel = onnx.load(str(tmp_out))
        fused = fuse_weighted_leaky_relu(qmodel) if fuse_leaky_relu else []
        problems = check_qdq_scheme(qmodel, keep_float)
        if problems:
            raise ExportError("the quantized model breaks the INT8 scheme (a bug in EdgeSmith or onnxruntime): "
                              + "; ".join(problems[:10]))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        from trainer.checkpoint import atomic_write_bytes  # noqa: PLC0415 (keeps import light)

        atomic_write_bytes(out_path, qmodel.SerializeToString())
    n_act = sum(1 for n in qmodel.graph.node if n.op_type == "QuantizeLinear")
    notes = [f"LeakyReLU fused into {len(fused)} conv(s): no int8 rounding between them"] if fused else []
    return Int8Result(out_path, method, per_channel, keep_float, n_act, calibration_images, notes, fused)


#: producers a LeakyRelu is fused into: ops with an int32 accumulator in the integer model
FUSABLE_PRODUCERS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def fuse_weighted_leaky_relu(model: onnx.ModelProto) -> list[str]:
    """Remove QuantizeLinear -> DequantizeLinear between a weighted op and a LeakyRelu, in place.

    Only where the pair is private to them: the weighted op's output feeds nothing but the
    QuantizeLinear, which feeds one DequantizeLinear, which feeds the LeakyRelu alone, and none of
    these is a graph output. Returns the names of the weighted ops now fused.
    """
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    outputs = {o.name for o in graph.output}

    def only_consumer(tensor: str, op_type: str) -> onnx.NodeProto | None:
        users = consumers.get(tensor, [])
        if tensor in outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    fused, dead = [], []
    for node in graph.node:
        if node.op_type not in FUSABLE_PRODUCERS:
            continue
        q = only_consumer(node.output[0], "QuantizeLinear")
        dq = q and only_consumer(q.output[0], "DequantizeLinear")
        act = dq and only_consumer(dq.output[0], "LeakyRelu")
        if act is None:
            continue
        act.input[0] = node.output[0]
        dead += [q, dq]
        fused.append(node.name)
    for n in dead:
        graph.node.remove(n)
    # the removed pair's scale and zero point, unless something else still reads them
    params = {name for n in dead for name in n.input[1:]} - {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name in params]:
        graph.initializer.remove(init)
    return fused


def _as_tuples(data: TensorsData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name, td in data.data.items():
        if isinstance(td, tuple):
            lo, hi = td
        else:
            lo, hi = td.range_value
        out[name] = (np.asarray(lo, np.float32), np.asarray(hi, np.float32))
    return out


def ranges_to_json(data: TensorsData) -> str:
    """A readable dump of the activation ranges (kept in reports for debugging)."""
    return json.dumps({k: [float(lo), float(hi)] for k, (lo, hi) in _as_tuples(data).items()}, indent=1)
