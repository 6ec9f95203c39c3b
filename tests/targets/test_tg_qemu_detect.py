"""DETECT on mps2-an500 (Cortex-M7) under QEMU: a PTQ'd tiny nanodet-mcu with the compiled-in
weights; the detections equal postprocess_np on the reference interpreter's outputs, and the
instruction counts of the network and of the post-processing are reported (``-icount shift=0``).
"""
from __future__ import annotations

import shutil

import pytest
from fw_detect_models import WORK, export_detector, tiny_detector

from edgesmith.device_detect import compare_detections, reference_detections
from targets.runner import QemuBoard, qemu_available

pytestmark = pytest.mark.skipif(not (qemu_available() and shutil.which("arm-none-eabi-gcc")),
                                reason="qemu-system-arm or arm-none-eabi-gcc is not installed")


def test_tg_qemu_detect_equals_reference_and_counts_instructions():
    from targets.build import build_firmware

    det = tiny_detector(0)
    exp = export_detector(det, WORK / "export-mps2", board="mps2-an500")
    elf = build_firmware(exp, "mps2-an500", WORK / "fw-mps2").elf
    with QemuBoard(elf) as board, board.open() as dev:
        answer = dev.detect(det.x.tobytes())
        again = dev.detect(det.x.tobytes())
    ref = reference_detections(det.graph, det.x, det.params)
    assert compare_detections(answer.detections, ref) == []
    assert answer.count == det.params.max_det and again.detections == answer.detections
    print(f"tiny nanodet-mcu 64x64 on mps2-an500: network {answer.network_cycles} instructions, "
          f"post-processing {answer.postprocess_cycles} instructions, {answer.count} detections")
    assert 0 < answer.postprocess_cycles < answer.network_cycles
    # instructions, not time: the same work costs the same (up to the SysTick granularity)
    assert abs(again.postprocess_cycles - answer.postprocess_cycles) <= 1e-3 * answer.postprocess_cycles
