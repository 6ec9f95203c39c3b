"""Detector post-processing for the C emitter: a run's ``postprocess.json`` becomes constants.

A detector graph (NanoDet / GFL head: per level a class-logit output ``[1, H, W, C]`` and a
distribution-logit output ``[1, H, W, 4 * (reg_max + 1)]``, NHWC int8) exported with its
post-processing parameters gets, besides the usual model code:

* in ``<prefix>.h``: ``<PREFIX>_DETECT_*`` defines (classes, levels, thresholds, ``MAX_DET``,
  ``CAPACITY`` = candidates into NMS, ``WORK_BYTES`` = the work buffer es_detect needs), the
  ``<prefix>_detect_config`` declaration and ``<prefix>_io_quant_default`` (the compiled-in
  weights' I/O quantization record);
* in ``<prefix>.c``: the level table and the config;
* the runtime files ``es_detect.h`` / ``es_detect.c`` next to the model.

Only structure goes into the code: the output scales and zero points are read at run time from
the weights table's I/O record, so a weight blob with new quantization runs on the same firmware.
This module reads plain dicts (``postprocess.json``); it does not import ``trainer``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from edgesmith.errors import ExportError
from firmware_export.intgraph import IntGraph

DETECT_RUNTIME_FILES = ("es_detect.h", "es_detect.c")
#: limits of firmware_export/runtime/es_detect.c
MAX_LEVELS = 8
MAX_REG_MAX = 64
_TABLE_SIZE = 256


@dataclasses.dataclass(frozen=True)
class DetectionSpec:
    """The post-processing parameters of a detector run (``postprocess.json``, PostprocessParams)."""

    num_classes: int
    strides: tuple[int, ...]
    reg_max: int
    input_hw: tuple[int, int]
    score_thr: float = 0.05
    iou_thr: float = 0.6
    max_det: int = 100
    pre_nms_topk: int = 1000

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "postprocess.json") -> "DetectionSpec":
        """Parse and check; any problem is one ExportError naming the field, the value and the rule."""
        required = ("num_classes", "strides", "reg_max", "input_hw")
        missing = [k for k in required if k not in d]
        if missing:
            raise ExportError(f"{source} lacks {', '.join(missing)}; it needs {', '.join(required)} (and optionally "
                              "score_thr, iou_thr, max_det, pre_nms_topk): use the file edgesmith train wrote")
        try:
            spec = cls(int(d["num_classes"]), tuple(int(s) for s in d["strides"]), int(d["reg_max"]),
                       (int(d["input_hw"][0]), int(d["input_hw"][1])), float(d.get("score_thr", 0.05)),
                       float(d.get("iou_thr", 0.6)), int(d.get("max_det", 100)), int(d.get("pre_nms_topk", 1000)))
        except (TypeError, ValueError, IndexError) as e:
            raise ExportError(f"{source} has a field of the wrong type ({e}); expected integers for num_classes, "
                              "reg_max, max_det, pre_nms_topk, lists of integers for strides and input_hw, numbers "
                              "for the thresholds") from None
        spec.check(source)
        return spec

    def check(self, source: str = "postprocess parameters") -> None:
        rules = [
            (self.num_classes >= 1, f"num_classes must be >= 1, got {self.num_classes}"),
            (1 <= len(self.strides) <= MAX_LEVELS and min(self.strides, default=0) >= 1,
             f"strides must be 1..{MAX_LEVELS} positive integers, got {list(self.strides)}"),
            (0 <= self.reg_max <= MAX_REG_MAX, f"reg_max must be in 0..{MAX_REG_MAX}, got {self.reg_max}"),
            (min(self.input_hw) >= 1, f"input_hw must be two positive integers, got {list(self.input_hw)}"),
            (math.isfinite(self.score_thr), f"score_thr must be a finite number, got {self.score_thr}"),
            (0.0 <= self.iou_thr <= 1.0, f"iou_thr must be in [0, 1], got {self.iou_thr}"),
            (self.max_det >= 1, f"max_det must be >= 1, got {self.max_det}"),
            (self.pre_nms_topk >= 1, f"pre_nms_topk must be >= 1, got {self.pre_nms_topk}"),
        ]
        bad = [msg for ok, msg in rules if not ok]
        if bad:
            raise ExportError(f"{source}: {'; '.join(bad)}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["strides"], d["input_hw"] = list(self.strides), list(self.input_hw)
        return d

    def level_hw(self) -> list[tuple[int, int]]:
        """Feature map size per level: ceil(input / stride), as the priors are laid out."""
        h, w = self.input_hw
        return [(-(-h // s), -(-w // s)) for s in self.strides]

    @property
    def num_priors(self) -> int:
        return sum(h * w for h, w in self.level_hw())

    @property
    def capacity(self) -> int:
        """Candidates that can reach NMS: pre_nms_topk, or every (prior, class) pair if fewer."""
        return min(self.pre_nms_topk, self.num_priors * self.num_classes)


def load_postprocess(source: "str | Path | dict | DetectionSpec") -> DetectionSpec:
    """A DetectionSpec from a ``postprocess.json`` path, its parsed dict, or a spec (returned as is)."""
    if isinstance(source, DetectionSpec):
        return source
    if isinstance(source, dict):
        return DetectionSpec.from_dict(source)
    path = Path(source)
    if not path.is_file():
        raise ExportError(f"no post-processing file at {path}; a detector run has postprocess.json next to "
                          "model.onnx (written by edgesmith train)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {path}: {e}; it should be the JSON file edgesmith train wrote") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path} holds a {type(data).__name__}, expected a JSON object of post-processing fields")
    return DetectionSpec.from_dict(data, str(path))


@dataclasses.dataclass(frozen=True)
class DetectLevel:
    stride: int
    height: int
    width: int
    cls_output: int
    reg_output: int


def detector_levels(graph: IntGraph, spec: DetectionSpec) -> list[DetectLevel]:
    """Match the graph's outputs to the levels (``[cls_l, reg_l, ...]``); ExportError on any mismatch.

    ``graph`` is the stripped graph the C model runs (int8 NHWC inputs and outputs).
    """
    outs = [graph.tensor(n) for n in graph.outputs]
    bins = 4 * (spec.reg_max + 1)
    want = []
    for (h, w) in spec.level_hw():
        want += [(1, h, w, spec.num_classes), (1, h, w, bins)]
    have = [tuple(int(s) for s in t.shape) for t in outs]
    if have != want:
        raise ExportError(f"graph {graph.name!r} is not the detector the post-processing describes: its outputs are "
                          f"{have}, a {list(spec.input_hw)} input with strides {list(spec.strides)}, "
                          f"{spec.num_classes} classes and reg_max {spec.reg_max} gives NHWC outputs {want} "
                          "(class logits, then box distributions, per level). Export with the postprocess.json "
                          "of the run this model came from")
    if graph.inputs:
        t = graph.tensor(graph.inputs[0])
        if len(t.shape) == 4 and tuple(int(s) for s in t.shape[1:3]) != tuple(spec.input_hw):
            raise ExportError(f"graph input {graph.inputs[0]!r} is {list(t.shape)} (NHWC) but postprocess.json says "
                              f"input_hw {list(spec.input_hw)}; export with the run's own postprocess.json")
    return [DetectLevel(s, h, w, 2 * i, 2 * i + 1) for i, (s, (h, w)) in enumerate(zip(spec.strides, spec.level_hw()))]


def work_bytes(num_levels: int, capacity: int) -> int:
    """Bytes of es_detect work buffer (mirrors es_detect_work_bytes() in es_detect.c)."""
    words = 3 + (4 + 1 + 2 * _TABLE_SIZE) * num_levels + 7 * capacity + (capacity + 3) // 4
    return 4 * words


#: sizeof(es_detection): box x1, y1, x2, y2, score (float32) and label (int32)
DETECTION_BYTES = 24


def detection_ram_bytes(spec: DetectionSpec) -> int:
    """Static RAM the firmware's post-processing needs: the work buffer and max_det results."""
    return work_bytes(len(spec.strides), spec.capacity) + DETECTION_BYTES * spec.max_det


def _float_literal(x: float) -> str:
    text = f"{float(np.float32(x)):.9g}"
    if "e" not in text and "." not in text and "inf" not in text and "nan" not in text:
        text += ".0"
    return text + "f"


def header_lines(prefix: str, spec: DetectionSpec, levels: list[DetectLevel]) -> list[str]:
    """The detector block of ``<prefix>.h``."""
    P = prefix.upper()
    return [
        "/* ---- detector post-processing (es_detect.h), from the run's postprocess.json */",
        '#include "es_detect.h"',
        f"#define {P}_DETECT 1",
        f"#define {P}_DETECT_NUM_LEVELS {len(levels)}",
        f"#define {P}_DETECT_NUM_CLASSES {spec.num_classes}",
        f"#define {P}_DETECT_REG_MAX {spec.reg_max}",
        f"#define {P}_DETECT_INPUT_H {spec.input_hw[0]}",
        f"#define {P}_DETECT_INPUT_W {spec.input_hw[1]}",
        f"#define {P}_DETECT_SCORE_THR {_float_literal(spec.score_thr)}",
        f"#define {P}_DETECT_IOU_THR {_float_literal(spec.iou_thr)}",
        f"#define {P}_DETECT_MAX_DET {spec.max_det}",
        f"#define {P}_DETECT_PRE_NMS_TOPK {spec.pre_nms_topk}",
        "/* candidates into NMS: min(pre_nms_topk, priors x classes) */",
        f"#define {P}_DETECT_CAPACITY {spec.capacity}",
        "/* bytes of caller-owned work buffer for es_detect_run (4-byte aligned) */",
        f"#define {P}_DETECT_WORK_BYTES {work_bytes(len(levels), spec.capacity)}",
        f"extern const es_detect_config {prefix}_detect_config;",
        "/* I/O quantization record of the compiled-in weights; a weight blob's is its table entry",
        f" * {P}_IO_QUANT_INDEX: pass the running one to es_detect_run() */",
        f"extern const int32_t *const {prefix}_io_quant_default;",
        "",
    ]


def source_lines(prefix: str, spec: DetectionSpec, levels: list[DetectLevel], io_index: int,
                 num_inputs: int, num_outputs: int) -> list[str]:
    """The detector block of ``<prefix>.c`` (level table, config, default I/O record pointer)."""
    P = prefix.upper()
    rows = ",\n".join(f"    {{{lv.stride}, {lv.height}, {lv.width}, {lv.cls_output}, {lv.reg_output}}}"
                      for lv in levels)
    return [
        "/* ---- detector post-processing: {stride, height, width, class output, box output} per level */",
        f"static const es_detect_level {prefix}_detect_levels[{P}_DETECT_NUM_LEVELS] = {{", rows, "};", "",
        f"const es_detect_config {prefix}_detect_config = {{",
        f"    {P}_DETECT_NUM_LEVELS, {prefix}_detect_levels, {P}_DETECT_NUM_CLASSES, {P}_DETECT_REG_MAX,",
        f"    {P}_DETECT_INPUT_H, {P}_DETECT_INPUT_W, {P}_DETECT_SCORE_THR, {P}_DETECT_IOU_THR,",
        f"    {P}_DETECT_MAX_DET, {P}_DETECT_CAPACITY, {num_inputs}, {num_outputs}", "};", "",
        f"const int32_t *const {prefix}_io_quant_default = {prefix}_w{io_index};", "",
    ]


__all__ = ["DETECT_RUNTIME_FILES", "DetectLevel", "DetectionSpec", "detector_levels", "header_lines",
           "load_postprocess", "source_lines", "work_bytes", "detection_ram_bytes", "DETECTION_BYTES"]
