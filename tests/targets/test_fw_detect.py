"""DETECT on the host firmware over a pty: a PTQ'd tiny nanodet-mcu, exported with its
postprocess.json, runs the network and es_detect.c on the device; the detections equal
postprocess_np on the reference interpreter's dequantized outputs, also after a weight-blob
update with new quantization. (es_detect.c under ASan/UBSan: tests/firmware_export/test_fe_c_detect.py;
mps2-an500 under QEMU: test_tg_qemu_detect.py.)
"""
from __future__ import annotations

import numpy as np
import pytest
from fw_detect_models import WORK, export_detector, tiny_detector
from tg_device_env import HOST_TIMEOUTS, have_gcc

from edgesmith.device_detect import compare_detections, reference_detections
from firmware_export.blob import write_blob
from targets.protocol import MAX_INLINE_DETECTIONS, Cmd, DeviceCommandError, ErrCode
from targets.runner import HostFirmware

SLOT_BYTES = 1024 * 1024  # the detector's blob (~0.5 MB) outgrows the host build's default slots


@pytest.fixture(scope="module")
def host_fw():
    if not have_gcc():
        pytest.skip("gcc is not installed: no host firmware")
    from targets.build import build_host

    det = tiny_detector(0)
    exp = export_detector(det, WORK / "export-host")
    return det, build_host(exp, WORK / "fw-host").elf


def _check(answer, det, graph=None):
    ref = reference_detections(graph or det.graph, det.x, det.params)
    assert compare_detections(answer.detections, ref) == []
    assert answer.count == len(answer.detections) == len(ref[1])
    return ref


def test_fw_detect_host_equals_reference_and_pages(host_fw, tmp_path):
    det, elf = host_fw
    with HostFirmware(elf, tmp_path / "flash.bin", slot_size=SLOT_BYTES) as fw, fw.open(**HOST_TIMEOUTS) as dev:
        answer = dev.detect(det.x.tobytes())
        _check(answer, det)
        # more survivors than one frame carries (DETECTIONS pages) and than max_det (cut)
        assert answer.count == det.params.max_det > MAX_INLINE_DETECTIONS
        assert answer.network_cycles > 0 and answer.postprocess_cycles > 0
        print(f"host: network {answer.network_cycles} ns, post-processing {answer.postprocess_cycles} ns, "
              f"{answer.count} detections")
        # the same input again: the same answer (tables are cached, nothing leaks between runs)
        again = dev.detect(det.x.tobytes())
        assert again.detections == answer.detections
        # an empty image (all padding) still answers, with its own reference
        blank = np.full_like(det.x, det.x.min())
        blank_answer = dev.detect(blank.tobytes())
        ref = reference_detections(det.graph, blank, det.params)
        assert compare_detections(blank_answer.detections, ref) == []
        with pytest.raises(DeviceCommandError) as e:
            dev.command(Cmd.DETECTIONS, (blank_answer.count).to_bytes(2, "little") + (1).to_bytes(2, "little"))
        assert e.value.code == ErrCode.BAD_ARGS and "range" in e.value.device_message
        with pytest.raises(DeviceCommandError) as e:
            dev.command(Cmd.DETECT, b"\x00" * 10)
        assert e.value.code == ErrCode.INPUT_SIZE


def test_fw_detect_after_blob_update_with_new_quantization(host_fw, tmp_path):
    """Same structure, other weights and output quantization: the device rebuilds its tables
    from the running blob's I/O record and still equals the reference."""
    from targets.flasher import flash_blob

    det, elf = host_fw
    other = tiny_detector(1)
    assert other.graph.structure_hash() == det.graph.structure_hash()
    scales = [(det.graph.tensor(a).per_tensor_scale(), other.graph.tensor(b).per_tensor_scale())
              for a, b in zip(det.graph.outputs, other.graph.outputs)]
    assert any(s0 != s1 for s0, s1 in scales)  # the update really changes the output quantization
    with HostFirmware(elf, tmp_path / "flash.bin", slot_size=SLOT_BYTES) as fw:
        flash_blob(fw.url, write_blob(other.graph))
        with fw.open(**HOST_TIMEOUTS) as dev:
            assert dev.info().active_slot in (0, 1)
            answer = dev.detect(det.x.tobytes())
    ref = _check(answer, det, other.graph)
    # and it is not the compiled-in model's answer
    old = reference_detections(det.graph, det.x, det.params)
    assert compare_detections(answer.detections, old) != [] and len(ref[1]) > 0


def test_fw_classifier_firmware_refuses_detect(tmp_path):
    if not have_gcc():
        pytest.skip("gcc is not installed: no host firmware")
    from fw_models import small_firmware

    with HostFirmware(small_firmware(), tmp_path / "flash.bin") as fw, fw.open(**HOST_TIMEOUTS) as dev:
        for cmd in (Cmd.DETECT, Cmd.DETECTIONS):
            with pytest.raises(DeviceCommandError) as e:
                dev.command(cmd, b"")
            assert e.value.code == ErrCode.UNKNOWN_COMMAND and "classifier" in e.value.device_message
        assert dev.info().protocol_version == 1  # still serving
