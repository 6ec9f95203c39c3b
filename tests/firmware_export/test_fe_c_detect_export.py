"""The C emitter's detector hook: postprocess.json -> MODEL_DETECT_* constants, the level table and
es_detect.c/.h next to the model; classifiers get none of it; mismatches are one clear error; the
detector sources and the firmware app build warning-free for Cortex-M7 and RV32IMAC."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fe_c_build import STRICT
from random_graphs import random_multi_op_graph

from edgesmith.errors import ExportError
from firmware_export.c_detect import DETECTION_BYTES, DetectionSpec, load_postprocess, work_bytes
from firmware_export.c_emitter import RUNTIME_DIR, emit_c
from firmware_export.export import export_model

_TG_TESTS = Path(__file__).resolve().parents[1] / "targets"
if str(_TG_TESTS) not in sys.path:
    sys.path.insert(0, str(_TG_TESTS))

from fw_detect_models import tiny_detector  # noqa: E402

FIRMWARE_DIR = Path(__file__).resolve().parents[2] / "targets" / "firmware"


@pytest.fixture(scope="module")
def det():
    return tiny_detector(0)


def _host_board() -> dict:
    from targets.boards import get_board

    board = get_board("host").to_dict()
    board.pop("toolchain")  # no code-size compile
    return board


def _defines(header: str) -> dict[str, str]:
    return dict(re.findall(r"#define (MODEL_DETECT\w*) (.+)", header))


def test_detector_export_writes_constants_and_runtime(det, tmp_path):
    result = export_model(det.graph, tmp_path, _host_board(), formats=["c", "blob"], postprocess=det.postprocess)
    c_dir = tmp_path / "c"
    assert (c_dir / "es_detect.c").is_file() and (c_dir / "es_detect.h").is_file()
    assert result.files["postprocess"] == [tmp_path / "postprocess.json"]
    assert load_postprocess(tmp_path / "postprocess.json") == load_postprocess(det.postprocess)
    d = _defines((c_dir / "model.h").read_text())
    p = det.params
    assert d["MODEL_DETECT"] == "1" and d["MODEL_DETECT_NUM_LEVELS"] == "3"
    assert (int(d["MODEL_DETECT_NUM_CLASSES"]), int(d["MODEL_DETECT_REG_MAX"])) == (p.num_classes, p.reg_max)
    assert float(d["MODEL_DETECT_SCORE_THR"].rstrip("f")) == np.float32(p.score_thr)
    assert int(d["MODEL_DETECT_MAX_DET"]) == p.max_det
    priors = sum((64 // s) ** 2 for s in p.strides)
    assert int(d["MODEL_DETECT_CAPACITY"]) == min(p.pre_nms_topk, priors * p.num_classes) == 150
    assert int(d["MODEL_DETECT_WORK_BYTES"]) == work_bytes(3, 150)
    source = (c_dir / "model.c").read_text()
    assert "{8, 8, 8, 0, 1}" in source and "{32, 2, 2, 4, 5}" in source  # stride, h, w, outputs
    assert "model_io_quant_default" in source
    # fit.json counts the post-processing RAM (work buffer + max_det records) on top of the arena
    fit = result.fit
    assert fit.postprocess_bytes == work_bytes(3, 150) + DETECTION_BYTES * p.max_det
    assert fit.ram_needed_bytes == fit.arena_bytes + fit.runtime_state_bytes + fit.postprocess_bytes
    assert any("post-processing" in m for m in fit.messages)
    # DETECTION_BYTES is sizeof(es_detection) as the C compiler lays it out
    probe = tmp_path / "sizeof.c"
    probe.write_text('#include "es_detect.h"\nint check[sizeof(es_detection) == %d ? 1 : -1];\n' % DETECTION_BYTES)
    if shutil.which("gcc"):
        proc = subprocess.run(["gcc", "-std=c99", "-c", "-I", str(c_dir), str(probe), "-o", str(tmp_path / "s.o")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_classifier_export_is_unchanged(tmp_path):
    g, _ = random_multi_op_graph(np.random.default_rng(3))
    paths = emit_c(g, tmp_path, prefix="net")
    assert not any(p.name.startswith("es_detect") for p in paths)
    header = (tmp_path / "net.h").read_text()
    assert "DETECT" not in header and "es_detect" not in (tmp_path / "net.c").read_text()


def test_work_bytes_agree_with_c(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    main = tmp_path / "main.c"
    main.write_text('#include <stdio.h>\n#include "es_detect.h"\nint main(void) {\n'
                    '    printf("%u %u %u\\n", (unsigned)es_detect_work_bytes(3, 150), '
                    '(unsigned)es_detect_work_bytes(4, 1000), (unsigned)es_detect_work_bytes(1, 1));\n    return 0;\n}\n')
    exe = tmp_path / "wb"
    subprocess.run(["gcc", *STRICT, "-I", str(RUNTIME_DIR), str(main), str(RUNTIME_DIR / "es_detect.c"), "-o", str(exe)],
                   check=True)
    got = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    assert got == [work_bytes(3, 150), work_bytes(4, 1000), work_bytes(1, 1)]


def test_mismatched_or_bad_postprocess_is_one_clear_error(det, tmp_path):
    wrong_classes = dict(det.postprocess, num_classes=5)
    with pytest.raises(ExportError, match=r"not the detector the post-processing describes.*5 classes"):
        export_model(det.graph, tmp_path / "a", _host_board(), formats=["c"], postprocess=wrong_classes)
    assert not (tmp_path / "a" / "c").exists()  # nothing half-written
    with pytest.raises(ExportError, match=r"input_hw"):
        emit_c(det.graph, tmp_path / "b", detection=dict(det.postprocess, input_hw=[60, 60]))  # same output sizes
    with pytest.raises(ExportError, match=r"iou_thr must be in \[0, 1\], got 1.5"):
        load_postprocess(dict(det.postprocess, iou_thr=1.5))
    with pytest.raises(ExportError, match=r"lacks reg_max"):
        load_postprocess({k: v for k, v in det.postprocess.items() if k != "reg_max"})
    with pytest.raises(ExportError, match=r"wrong type"):
        load_postprocess(dict(det.postprocess, strides="eight"))
    with pytest.raises(ExportError, match=r"no post-processing file"):
        load_postprocess(tmp_path / "missing.json")
    assert DetectionSpec(2, (8,), 7, (16, 16)).capacity == 8  # 4 priors x 2 classes < pre_nms_topk


_CROSS = [
    ("arm-none-eabi-gcc", ["arm-none-eabi-gcc", "-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=soft", "-Os"]),
    ("arm-none-eabi-gcc-fpu", ["arm-none-eabi-gcc", "-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard",
                               "-mfpu=fpv5-d16", "-Os"]),
    ("riscv64-unknown-elf-gcc", ["riscv64-unknown-elf-gcc", "-march=rv32imac", "-mabi=ilp32", "-ffreestanding", "-Os"]),
]


@pytest.mark.parametrize("name,cmd", _CROSS, ids=[c[0] for c in _CROSS])
def test_detector_sources_and_app_warning_free(det, tmp_path, name, cmd):
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} is not installed")
    emit_c(det.graph, tmp_path, detection=det.postprocess)
    sources = [tmp_path / "es_detect.c", tmp_path / "model.c", FIRMWARE_DIR / "es_app.c",
               FIRMWARE_DIR / "es_app_update.c", FIRMWARE_DIR / "es_app_detect.c"]
    for src in sources:
        proc = subprocess.run(cmd + STRICT + ["-I", str(tmp_path), "-I", str(FIRMWARE_DIR), "-c", str(src),
                                              "-o", str(tmp_path / (src.stem + ".o"))], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name} {src.name}:\n{proc.stderr[-4000:]}"
    # es_detect needs no libc and no libm
    text = (RUNTIME_DIR / "es_detect.c").read_text() + (RUNTIME_DIR / "es_detect.h").read_text()
    assert set(re.findall(r"#include <([^>]+)>", text)) <= {"stdint.h", "stddef.h"}
    nm = shutil.which(cmd[0][: -len("gcc")] + "nm")
    if nm:
        undefined = subprocess.run([nm, "-u", str(tmp_path / "es_detect.o")], capture_output=True, text=True).stdout
        called = {line.split()[-1] for line in undefined.splitlines() if line.strip()}
        assert not {c for c in called if not c.startswith("__")}, called  # only libgcc helpers (soft-float)


def test_spec_round_trip(det):
    spec = load_postprocess(det.postprocess)
    assert DetectionSpec.from_dict(spec.to_dict()) == spec
