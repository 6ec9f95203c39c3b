"""Detectors on the device: ``edgesmith run`` for a detector run, and the reference it is held to.

The device runs the int8 network and then ``es_detect.c`` (decode + class-aware NMS) on its
outputs. The reference is :func:`trainer.detection.postprocess_np.postprocess_np` applied to the
dequantized outputs of the numpy reference interpreter on the same int8 input. Equal means: the
same number of detections with the same labels in the same order, scores within
:data:`SCORE_TOLERANCE` and box corners within :data:`BOX_TOLERANCE_PX` (float32 exp differs by
an ulp or two between numpy and the device; box decoding sums in another order).
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgesmith.errors import ConfigError

SCORE_TOLERANCE = 1e-6
BOX_TOLERANCE_PX = 1e-3
POSTPROCESS_FILE = "postprocess.json"
#: the host firmware's default weight-slot size (hal_host.c DEFAULT_SLOT_SIZE)
HOST_SLOT_BYTES = 512 * 1024


def dequantize_outputs(graph: Any, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The graph's int8 NHWC outputs as float32 NCHW arrays, ``(q - zp) * scale`` in float32
    (what the device computes from the I/O record), in graph output order."""
    out = []
    for name in graph.outputs:
        t = graph.tensor(name)
        q = np.asarray(values[name]).astype(np.float32)
        x = (q - np.float32(t.per_tensor_zero_point())) * np.float32(t.per_tensor_scale())
        out.append(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x)
    return out


def reference_detections(graph: Any, x: np.ndarray, params: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [K, 4] in input pixels, scores [K], labels [K]) of postprocess_np on the reference
    interpreter's outputs for the int8 input ``x``; ``graph`` is the int8 graph the device runs."""
    from firmware_export.c_emitter import strip_float_edges  # noqa: PLC0415
    from firmware_export.reference import run  # noqa: PLC0415
    from trainer.detection.postprocess_np import postprocess_np  # noqa: PLC0415

    g = strip_float_edges(graph)
    values = run(g, {g.inputs[0]: x})
    (result,) = postprocess_np(dequantize_outputs(g, values), params)
    return result


def compare_detections(device: Sequence[Any], reference: tuple[np.ndarray, np.ndarray, np.ndarray],
                       score_tol: float = SCORE_TOLERANCE, box_tol: float = BOX_TOLERANCE_PX) -> list[str]:
    """What differs between the device's detections (objects with x1..y2, score, label) and the
    reference's, one line per difference; empty when they are equal."""
    boxes, scores, labels = reference
    problems = []
    if len(device) != len(scores):
        problems.append(f"device found {len(device)} detections, the reference {len(scores)}")
    for k, (d, box, score, label) in enumerate(zip(device, boxes, scores, labels)):
        got = np.array([d.x1, d.y1, d.x2, d.y2], np.float64)
        if int(d.label) != int(label):
            problems.append(f"#{k}: label {d.label}, reference {int(label)} (score {d.score:.7f} vs {float(score):.7f})")
        elif abs(float(d.score) - float(score)) > score_tol:
            problems.append(f"#{k}: score {d.score:.8f}, reference {float(score):.8f} (tolerance {score_tol:g})")
        elif np.abs(got - box).max() > box_tol:
            problems.append(f"#{k}: box {got.round(4).tolist()}, reference {np.asarray(box).round(4).tolist()} "
                            f"(tolerance {box_tol:g} px)")
    return problems


# --------------------------------------------------------------------------- edgesmith run

@dataclasses.dataclass
class DetectRunReport:
    """One image through a detector on the device, next to the reference."""

    board: str
    #: (class name, score, [x1, y1, x2, y2] in original-image pixels), best first
    detections: list[tuple[str, float, list[float]]]
    equal: bool
    problems: list[str]
    network_cycles: int
    postprocess_cycles: int
    flash_seconds: float

    @property
    def bit_exact(self) -> bool:  # what cmd_run checks for either kind of run
        return self.equal


def is_detector_run(run_dir: Path) -> bool:
    """A detector run has postprocess.json next to model.onnx (edgesmith train writes it)."""
    return (Path(run_dir) / POSTPROCESS_FILE).is_file()


def letterboxed_input(image_path: Path, preprocessing: dict, hw: tuple[int, int], graph: Any):
    """(int8 NHWC input, letterbox info): the image letterboxed as ``edgesmith detect`` does,
    normalized with the run's preprocessing and quantized to the graph's input."""
    from PIL import Image  # noqa: PLC0415

    from firmware_export.fixedpoint import round_half_away_array  # noqa: PLC0415
    from quantize.calibration import PreprocessSpec  # noqa: PLC0415
    from trainer.data.detection.transforms import letterbox  # noqa: PLC0415
    from trainer.detection.evaluate import LETTERBOX_PAD  # noqa: PLC0415

    t = graph.tensor(graph.inputs[0])
    if t.dtype != "int8" or len(t.shape) != 4 or tuple(t.shape[1:3]) != tuple(hw):
        raise ConfigError(f"the detector's input is {t.dtype} {list(t.shape)}; edgesmith run feeds one int8 NHWC "
                          f"image of {list(hw)} (postprocess.json input_hw)")
    try:
        with Image.open(image_path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read image {image_path}: {e}; pass a JPEG/PNG/BMP file") from None
    boxed, _, info = letterbox(rgb, None, tuple(hw), preprocessing.get("pad_value", LETTERBOX_PAD))
    spec = dataclasses.replace(PreprocessSpec.from_run(preprocessing), layout="NHWC", size=tuple(hw))
    x = spec.apply(boxed[None])
    q = round_half_away_array(x / np.float32(t.per_tensor_scale())) + t.per_tensor_zero_point()
    return np.clip(q, -128, 127).astype(np.int8), info


def run_detector(run_dir: Path, board: str, input_path: Path, export_dir: Path, model_path: Path,
                 variant: str | None = None, log: Callable[[str], None] = print) -> DetectRunReport:
    """Build the firmware, flash the run's blob, DETECT one image, print the detections in
    original-image pixels and whether they equal the reference."""
    from edgesmith.device import build  # noqa: PLC0415 (device imports this module)
    from edgesmith.manifest import load_manifest  # noqa: PLC0415
    from firmware_export.c_emitter import strip_float_edges  # noqa: PLC0415
    from firmware_export.export import load_model  # noqa: PLC0415
    from targets.flasher import flash_blob  # noqa: PLC0415
    from targets.runner import HostFirmware, QemuBoard  # noqa: PLC0415
    from trainer.data.detection.transforms import undo_letterbox  # noqa: PLC0415
    from trainer.detection.postprocess_np import PostprocessParams  # noqa: PLC0415

    import json  # noqa: PLC0415

    params = PostprocessParams.from_dict(json.loads((export_dir / POSTPROCESS_FILE).read_text()))
    model = load_manifest(run_dir).get("model", {})
    pre = model.get("preprocessing")
    if not pre:
        raise ConfigError(f"run {run_dir} records no preprocessing in manifest.json (model.preprocessing)")
    graph = strip_float_edges(load_model(model_path))
    x, info = letterboxed_input(Path(input_path), pre, params.input_hw, graph)  # bad images fail before the build
    image = build(run_dir, board, variant=variant, log=log)
    blob = (export_dir / "weights.bin").read_bytes()
    with tempfile.TemporaryDirectory(prefix="edgesmith-run-") as tmp:
        if board == "mps2-an500":
            target = QemuBoard(image.elf)
        else:  # detector blobs outgrow the host build's default 512 KiB slots
            slot = max(HOST_SLOT_BYTES, -(-len(blob) // 4096) * 4096)
            target = HostFirmware(image.elf, Path(tmp) / "flash.bin", slot_size=slot)
        with target:
            flashed = flash_blob(target.url, blob, log=log)
            with target.open() as dev:
                answer = dev.detect(x.tobytes())
    reference = reference_detections(graph, x, params)
    problems = compare_detections(answer.detections, reference)
    classes = model.get("classes") or []
    dets = []
    if answer.detections:
        boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in answer.detections], np.float32)
        for d, box in zip(answer.detections, undo_letterbox(boxes, info)):
            name = classes[d.label] if d.label < len(classes) else str(d.label)
            dets.append((name, float(d.score), [round(float(v), 1) for v in box]))
    log(f"{len(dets)} detections on {board} (network {answer.network_cycles} cycles, "
        f"post-processing {answer.postprocess_cycles} cycles); boxes in original-image pixels:")
    for name, score, box in dets:
        log(f"  {name:<16} {score:.3f}  x1={box[0]:.1f} y1={box[1]:.1f} x2={box[2]:.1f} y2={box[3]:.1f}")
    verdict = "equals" if not problems else "DIFFERS FROM"
    log(f"device detection result {verdict} the reference (postprocess_np on the reference interpreter's outputs)")
    for line in problems[:10]:
        log(f"  {line}")
    return DetectRunReport(board, dets, not problems, problems, answer.network_cycles, answer.postprocess_cycles,
                           flashed.total_seconds)
