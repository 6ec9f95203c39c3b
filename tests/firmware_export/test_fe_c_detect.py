"""es_detect.c (decode + class-aware NMS in C) against postprocess_np, built with ASan/UBSan.

Each case is a detector's int8 NHWC outputs plus their quantization; the reference is
trainer.detection.postprocess_np on the dequantized outputs. Equal: the same labels in the same
order, scores within 1e-6, boxes within 1e-3 px (edgesmith.device_detect.compare_detections).
Cases run in one process with one shared work buffer, as on the device: a case with other
quantization (a weight-blob update) or another score threshold must rebuild the tables.
"""
from __future__ import annotations

import dataclasses
import shutil
import struct
import subprocess

import numpy as np
import pytest
from fe_c_build import SANITIZE, STRICT

from edgesmith.device_detect import compare_detections
from firmware_export.c_emitter import RUNTIME_DIR
from targets.protocol import Detection
from trainer.detection.postprocess_np import PostprocessParams, postprocess_np

HARNESS = RUNTIME_DIR.parents[1] / "tests" / "firmware_export" / "es_detect_harness.c"
ES_OK, ES_ERR_PARAM = 0, 3

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the C harness")


@dataclasses.dataclass
class Case:
    name: str
    params: PostprocessParams
    outputs: list[np.ndarray]  # int8 NHWC, [cls_l, reg_l, ...]
    quant: list[tuple[float, int]]  # (scale, zero point) per output
    inputs_quant: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    expect_status: int = ES_OK

    def dequantized(self) -> list[np.ndarray]:
        return [((o.astype(np.float32) - np.float32(zp)) * np.float32(s)).transpose(0, 3, 1, 2)
                for o, (s, zp) in zip(self.outputs, self.quant)]

    def capacity(self) -> int:
        h, w = self.params.input_hw
        priors = sum(-(-h // s) * -(-w // s) for s in self.params.strides)
        return min(self.params.pre_nms_topk, priors * self.params.num_classes)

    def encode(self) -> bytes:
        p = self.params
        levels = len(p.strides)
        head = struct.pack("<5i2f4i", levels, p.num_classes, p.reg_max, *p.input_hw, p.score_thr, p.iou_thr,
                           p.max_det, self.capacity(), len(self.inputs_quant), 2 * levels)
        for i, s in enumerate(p.strides):
            head += struct.pack("<5i", s, -(-p.input_hw[0] // s), -(-p.input_hw[1] // s), 2 * i, 2 * i + 1)
        for scale, zp in self.inputs_quant + self.quant:
            head += struct.pack("<ii", zp, struct.unpack("<i", struct.pack("<f", scale))[0])
        return head + b"".join(np.ascontiguousarray(o).tobytes() for o in self.outputs)


def _params(**kw) -> PostprocessParams:
    base = dict(num_classes=3, strides=(8, 16, 32), reg_max=7, input_hw=(64, 64), score_thr=0.5, iou_thr=0.6,
                max_det=100, pre_nms_topk=1000)
    base.update(kw)
    return PostprocessParams(**base)


def _shapes(p: PostprocessParams) -> list[tuple[int, ...]]:
    out = []
    for s in p.strides:
        h, w = -(-p.input_hw[0] // s), -(-p.input_hw[1] // s)
        out += [(1, h, w, p.num_classes), (1, h, w, 4 * (p.reg_max + 1))]
    return out


def _random_outputs(rng, p, cls_range=(-128, 128), reg_fn=None):
    outs = []
    for k, shape in enumerate(_shapes(p)):
        if k % 2 == 0:
            outs.append(rng.integers(*cls_range, shape).astype(np.int8))
        else:
            outs.append((reg_fn(rng, shape) if reg_fn else rng.integers(-128, 128, shape)).astype(np.int8))
    return outs


def _small_boxes(rng, shape):
    """Distributions peaked at bin 0-1: boxes about a stride wide, neighbours barely overlap."""
    bins = shape[-1] // 4
    base = np.tile(-40 * np.arange(bins), 4)
    return np.clip(base + rng.integers(-20, 20, shape), -128, 127)


def _quant(rng, n_levels, cls_scale=(0.03, 0.08), reg_scale=(0.02, 0.3)):
    q = []
    for _ in range(n_levels):
        q += [(float(np.float32(rng.uniform(*cls_scale))), int(rng.integers(-30, 30))),
              (float(np.float32(rng.uniform(*reg_scale))), int(rng.integers(-128, 128)))]
    return q


def _cases() -> list[Case]:
    rng = np.random.default_rng(2024)
    cases = []
    p = _params()
    outs = _random_outputs(rng, p)
    cases.append(Case("random", p, outs, _quant(rng, 3), inputs_quant=[(0.02, -3)]))
    # same outputs, new quantization (a blob update) and then a new threshold: tables rebuilt
    cases.append(Case("requantized", p, outs, _quant(rng, 3)))
    cases.append(Case("other_threshold", dataclasses.replace(p, score_thr=0.45), outs, cases[-1].quant))
    # far more candidates than pre_nms_topk (the bounded heap keeps the best 25, ties by index)
    p = _params(score_thr=0.05, pre_nms_topk=25)
    cases.append(Case("topk", p, _random_outputs(rng, p, (-20, 128)), _quant(rng, 3)))
    # many separated small boxes: more survivors than max_det
    p = _params(score_thr=0.2, max_det=7, num_classes=2)
    cases.append(Case("max_det", p, _random_outputs(rng, p, reg_fn=_small_boxes), _quant(rng, 3)))
    # exact ties: two logit values, one quantization for every level, identical boxes per level
    p = _params(score_thr=0.3, num_classes=2, max_det=40)
    outs = _random_outputs(rng, p, (40, 42))
    for k in range(1, len(outs), 2):
        outs[k][:] = rng.integers(-128, 128, outs[k].shape[-1]).astype(np.int8)
    same = [(0.05, 0), (0.1, 0)] * 3
    cases.append(Case("ties", p, outs, same))
    # heavy overlap: big boxes everywhere (chains of suppression), classes never suppress each other
    p = _params(score_thr=0.1, iou_thr=0.3, num_classes=4)
    outs = _random_outputs(rng, p, (-60, 128),
                           reg_fn=lambda r, s: np.clip(np.tile(20 * np.arange(s[-1] // 4), 4) - 60 + r.integers(0, 4, s),
                                                       -128, 127))
    cases.append(Case("overlap", p, outs, _quant(rng, 3)))
    # saturated sigmoid: many scores are exactly 1.0 (ties broken by index)
    p = _params(score_thr=0.9, num_classes=2)
    cases.append(Case("saturated", p, _random_outputs(rng, p, (60, 128)), [(0.3, -128), (0.1, 5)] * 3))
    # nothing above the threshold
    p = _params(score_thr=0.5)
    cases.append(Case("zero", p, _random_outputs(rng, p, (-128, -100)), _quant(rng, 3)))
    # four levels, a non-square input that the strides do not divide, one class, reg_max 4
    p = _params(strides=(8, 16, 32, 64), input_hw=(50, 70), num_classes=1, reg_max=4, score_thr=0.4, iou_thr=0.5)
    cases.append(Case("odd_size", p, _random_outputs(rng, p), _quant(rng, 4)))
    # reg_max 0: every box has zero size (area 0, IoU 0: nothing suppressed)
    p = _params(reg_max=0, score_thr=0.6, max_det=500)
    cases.append(Case("reg_max0", p, _random_outputs(rng, p), _quant(rng, 3)))
    # IoU exactly at the threshold (one-hot distributions give integer boxes): not suppressed
    p = _params(num_classes=1, score_thr=0.5, iou_thr=0.5)
    outs = [np.full(shape, -128, np.int8) for shape in _shapes(p)]
    outs[0][0, 1, 1, 0], outs[0][0, 2, 1, 0] = 100, 90  # priors (x 1, y 1) and (x 1, y 2) of stride 8
    for (y, x), sides in (((1, 1), (1, 1, 1, 1)), ((2, 1), (1, 1, 1, 0))):  # [4,4,20,20] and [4,12,20,20]
        for k, bin_ in enumerate(sides):
            outs[1][0, y, x, 8 * k + bin_] = 127
    cases.append(Case("iou_at_threshold", p, outs, [(0.05, 0), (1.0, 0)] * 3))
    # refused: a negative IoU threshold, a zero point out of int8, a zero scale (corrupt record)
    p = _params()
    outs = _random_outputs(rng, p)
    cases.append(Case("bad_iou", dataclasses.replace(p, iou_thr=-0.1), outs, _quant(rng, 3), expect_status=ES_ERR_PARAM))
    cases.append(Case("bad_zero_point", p, outs, [(0.05, 300)] + _quant(rng, 3)[1:], expect_status=ES_ERR_PARAM))
    cases.append(Case("bad_scale", p, outs, [(0.05, 0), (0.0, 0)] + _quant(rng, 2), expect_status=ES_ERR_PARAM))
    return cases


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    work = tmp_path_factory.mktemp("es_detect")
    exe = work / "harness"
    cmd = ["gcc", *STRICT, *SANITIZE, "-I", str(RUNTIME_DIR), str(HARNESS), str(RUNTIME_DIR / "es_detect.c"),
           "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return exe, work


def _read_result(path) -> tuple[int, list[Detection]]:
    raw = path.read_bytes()
    status, count = struct.unpack_from("<ii", raw)
    dets = [Detection(*struct.unpack_from("<5fi", raw, 8 + 24 * k)) for k in range(count)]
    return status, dets


def test_c_detect_equals_postprocess_np(harness):
    exe, work = harness
    cases = _cases()
    jobs = []
    for case in cases:
        (work / f"{case.name}.in").write_bytes(case.encode())
        jobs.append(f"{work / case.name}.in {work / case.name}.out\n")
    (work / "jobs.txt").write_text("".join(jobs))
    proc = subprocess.run([str(exe), str(work / "jobs.txt")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = {}
    for case in cases:
        status, dets = _read_result(work / f"{case.name}.out")
        assert status == case.expect_status, (case.name, status)
        if status != ES_OK:
            assert dets == []
            continue
        (ref,) = postprocess_np(case.dequantized(), case.params)
        assert compare_detections(dets, ref) == [], case.name
        seen[case.name] = (len(dets), case.capacity())
    # the adversarial cases really are what they claim
    assert seen["zero"][0] == 0
    assert seen["max_det"][0] == 7 and seen["topk"][1] == 25
    assert seen["iou_at_threshold"][0] == 2
    assert seen["random"][0] > 20 and seen["overlap"][0] > 0 and seen["ties"][0] > 2
    (ties,) = postprocess_np(cases[5].dequantized(), cases[5].params)
    assert len(np.unique(ties[1])) < len(ties[1])  # equal scores really occur
    (sat,) = postprocess_np(cases[7].dequantized(), cases[7].params)
    assert (sat[1] == 1.0).sum() > 1


def test_c_expf_matches_float64_exp_rounded(harness):
    """es_detect_expf is exp rounded to float32 (what builds the sigmoid and softmax tables)."""
    exe, work = harness
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-110, 95, 200_000), np.linspace(-1, 1, 20_001),
                        [0.0, -0.0, 88.72, 88.73, 89.5, -103.9, -104.5, -200.0, 300.0, np.nan]]).astype(np.float32)
    (work / "expf.in").write_bytes(x.tobytes())
    proc = subprocess.run([str(exe), "--expf", str(work / "expf.in"), str(work / "expf.out")], capture_output=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.frombuffer((work / "expf.out").read_bytes(), np.float32)
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64)).astype(np.float32)
    finite = np.isfinite(want) & (want > 0)
    ulps = np.abs(got[finite].view(np.int32).astype(np.int64) - want[finite].view(np.int32))
    assert ulps.max() <= 1 and (ulps == 0).mean() > 0.999
    assert np.array_equal(np.isinf(got), np.isinf(want)) and np.isnan(got[-1])
    assert (got[(want == 0)] == 0).all()
