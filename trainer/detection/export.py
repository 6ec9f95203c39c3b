"""ONNX export of a detector (raw head outputs) + post-process parameters, with detection parity.

The graph holds the network only: per level a class-logit map and a box-distribution map
(``cls_s8, reg_s8, ...``), no sigmoid, softmax, decoding or NMS, so it quantizes to int8
like any conv net. ``postprocess.json`` beside it holds what turns those maps into boxes
(strides, reg_max, thresholds, input size, preprocessing, class names), for
:func:`trainer.detection.postprocess_np.postprocess_np` or the C version.

Parity: PyTorch + torch post-processing and onnxruntime + numpy post-processing must give
the same detections on real images (same count and classes, boxes within ``tolerance``
pixels); otherwise nothing is written.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edgesmith.errors import ExportError
from trainer.checkpoint import atomic_write_bytes
from trainer.detection.postprocess import postprocess
from trainer.detection.postprocess_np import PostprocessParams, postprocess_np
from trainer.export import INPUT_NAME, MIN_OPSET, _cpu_float_copy, _materialise_shared_initializers, _session

POSTPROCESS_FILE = "postprocess.json"
_TRACE_BATCH = 2
_THRESHOLD_MARGIN = 1e-4  # parity ignores detections scored this close to score_thr (either side may drop them)
# The ops an int8 MCU runtime (TFLite Micro, CMSIS-NN) takes for nanodet-mcu after BN folding.
MCU_OPS = frozenset({"Conv", "Add", "Concat", "Resize", "Relu", "Clip", "MaxPool", "Reshape", "Transpose"})


@dataclass
class DetectionParityReport:
    """How closely onnxruntime + numpy reproduce PyTorch's detections."""

    num_images: int
    num_detections: int
    max_box_diff: float  # pixels of the model input
    max_score_diff: float
    max_output_diff: float  # raw head outputs
    tolerance: float
    passed: bool
    problem: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def export_detector_onnx(model: nn.Module, out_path: str | os.PathLike, params: PostprocessParams, *,
                         parity_inputs: torch.Tensor | None = None, opset: int = 17, tolerance: float = 1e-3,
                         metadata: dict | None = None) -> DetectionParityReport | None:
    """Export ``model`` to ``out_path`` and write ``postprocess.json`` beside it.

    ``parity_inputs``: a float NCHW batch of real, preprocessed images at ``params.input_hw``.
    ``metadata`` (classes, preprocessing, ...) is merged into ``postprocess.json``.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: EdgeSmith exports at opset >= {MIN_OPSET}")
    cpu_model = _cpu_float_copy(model)
    names = list(cpu_model.output_names())
    proto = _export(cpu_model, params.input_hw, opset, names)
    _materialise_shared_initializers(proto)
    _constants_to_initializers(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported detector ONNX model is invalid: {e}") from e
    data = proto.SerializeToString()
    report = None
    if parity_inputs is not None:
        report = detection_parity(cpu_model, data, parity_inputs.detach().cpu().float(), params, tolerance)
        if not report.passed:
            raise ExportError(
                f"ONNX export of {type(cpu_model).__name__} does not reproduce PyTorch's detections on "
                f"{report.num_images} images: {report.problem} (box tolerance {tolerance:g} px); {out_path} was "
                "not written. Check the model's forward for tracing-dependent behaviour."
            )
    out_path = Path(out_path)
    info = {"format": "edgesmith-detection-postprocess", "onnx": out_path.name, "input": INPUT_NAME,
            "outputs": names, **params.to_dict(), **(metadata or {})}
    try:
        atomic_write_bytes(out_path, data)
        atomic_write_bytes(out_path.parent / POSTPROCESS_FILE, json.dumps(info, indent=2).encode())
    except OSError as e:
        raise ExportError(f"could not write {out_path}: {e}; check free disk space and permissions") from e
    return report


def _export(model: nn.Module, hw: tuple[int, int], opset: int, names: list[str]) -> onnx.ModelProto:
    example = torch.randn((_TRACE_BATCH, 3, *hw), generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad(), torch.autocast("cpu", enabled=False):
            warnings.simplefilter("ignore")  # tracer warnings about int() sizes are intended (fixed shapes)
            torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=names,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}},
                              do_constant_folding=True)
    except Exception as e:  # tracing and symbolic errors come in many types
        raise ExportError(f"torch.onnx could not export {type(model).__name__} at opset {opset}: {e}") from e
    return onnx.load_model_from_string(buf.getvalue())


def _constants_to_initializers(proto: onnx.ModelProto) -> None:
    """Turn ``Constant`` nodes (e.g. the target shapes of the channel-shuffle Reshapes) into initializers,
    so the graph holds compute ops only, as importers of int8 runtimes expect."""
    keep = []
    for node in proto.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            array = numpy_helper.to_array(node.attribute[0].t)
            proto.graph.initializer.append(numpy_helper.from_array(array, name=node.output[0]))
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def run_onnx(session, images: np.ndarray) -> list[np.ndarray]:
    """Raw outputs of an ONNX detector session for a float NCHW batch."""
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})


def detection_parity(model: nn.Module, data: bytes, images: torch.Tensor, params: PostprocessParams,
                     tolerance: float) -> DetectionParityReport:
    """Compare PyTorch+torch post-processing with onnxruntime+numpy post-processing image by image."""
    try:
        session = _session(data)
    except Exception as e:
        raise ExportError(f"onnxruntime cannot load the exported detector: {e}") from e
    n_det, box_diff, score_diff, out_diff, problem = 0, 0.0, 0.0, 0.0, ""
    for i in range(len(images)):  # batch 1: differs from the trace batch, so a frozen batch axis shows
        x = images[i:i + 1]
        with torch.no_grad():
            expected_raw = model(x)
        got_raw = run_onnx(session, x.numpy())
        out_diff = max(out_diff, max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got_raw, expected_raw)))
        (eb, es, el), = postprocess(expected_raw, params)
        (gb, gs, gl), = postprocess_np(got_raw, params)
        eb, es, el = eb.numpy(), es.numpy(), el.numpy()
        if len(el) != len(gl) or not np.array_equal(el, gl):
            # Scores within float noise of the threshold may fall either side of it: compare the rest.
            e_keep, g_keep = es > params.score_thr + _THRESHOLD_MARGIN, gs > params.score_thr + _THRESHOLD_MARGIN
            eb, es, el, gb, gs, gl = eb[e_keep], es[e_keep], el[e_keep], gb[g_keep], gs[g_keep], gl[g_keep]
            if len(el) != len(gl) or not np.array_equal(el, gl):
                problem = problem or (f"image {i}: PyTorch found {len(el)} detections (classes {el.tolist()[:10]}), "
                                      f"onnxruntime {len(gl)} (classes {gl.tolist()[:10]})")
                continue
        n_det += len(el)
        if len(el):
            box_diff = max(box_diff, float(np.abs(eb - gb).max()))
            score_diff = max(score_diff, float(np.abs(es - gs).max()))
    if not problem and box_diff > tolerance:
        problem = f"boxes differ by up to {box_diff:.3g} px"
    return DetectionParityReport(len(images), n_det, box_diff, score_diff, out_diff, tolerance, not problem, problem)


def onnx_op_types(path_or_proto: str | os.PathLike | onnx.ModelProto) -> set[str]:
    """The set of op types in an ONNX graph (to check a model against an MCU runtime's op list)."""
    proto = path_or_proto if isinstance(path_or_proto, onnx.ModelProto) else onnx.load(str(path_or_proto))
    return {node.op_type for node in proto.graph.node}
