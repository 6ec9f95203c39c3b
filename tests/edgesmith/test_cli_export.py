"""Train -> quantize -> export end to end: the exported .tflite (TFLite Micro), the generated C (host gcc)
and the numpy reference give the same bits on real images; onnxruntime's QDQ within 2 LSB."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgesmith.cli import main
from edgesmith.manifest import load_manifest
from firmware_export.export import load_model
from firmware_export.onnx_importer import import_qdq_onnx
from pipeline_checks import build_c, c_outputs, reference_outputs, tflm_outputs

@pytest.fixture(scope="module")
def exported(run):
    assert main(["quantize", str(run), "--calib-size", "48"]) == 0
    assert main(["export", str(run), "--target", "mps2-an500"]) == 0
    return run / "targets" / "mps2-an500"


def _images(run, n=16):
    st = json.loads((run / "manifest.json").read_text())
    from quantize.calibration import PreprocessSpec, sample_split
    from trainer.data import open_dataset

    pre = PreprocessSpec.from_run(st["model"]["preprocessing"])
    ds = open_dataset(st["dataset"]["source"])
    return pre.apply(sample_split(ds, n, seed=1, split="val"))


def test_export_writes_every_artifact_and_records_them(run, exported, capsys):
    for rel in ("model.tflite", "c/model.c", "c/model.h", "c/es_conv.c", "weights.bin", "memory.json", "fit.json"):
        assert (exported / rel).is_file(), rel
    fit = json.loads((exported / "fit.json").read_text())
    assert fit["fits"] and fit["macs"] > 0 and fit["code_bytes_estimated"] is False  # measured with arm-none-eabi-gcc
    arts = load_manifest(run)["artifacts"]
    assert arts["targets/mps2-an500/model.tflite"]["kind"] == "target_tflite"
    assert load_manifest(run)["lineage"][-1]["stage"] == "export"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host C compiler")
def test_tflm_c_and_reference_agree_bit_for_bit_on_real_images(run, exported, tmp_path):
    x = _images(run)
    imp = import_qdq_onnx(run / "variants" / "int8.onnx")
    graph, binding, out_binding = imp.graph, imp.inputs[0], imp.outputs[0]
    q = np.stack([binding.to_graph(img[None])[0] for img in x])  # float NCHW -> int8 NHWC
    want = reference_outputs(graph, q)

    # TFLite Micro on the exported .tflite, and the exported C built strictly with the host gcc
    np.testing.assert_array_equal(tflm_outputs((exported / "model.tflite").read_bytes(), q), want)
    exe = build_c(exported / "c", tmp_path)
    np.testing.assert_array_equal(c_outputs(exe, q, want.shape[1:]), want)

    # onnxruntime runs the QDQ graph in float between Q/DQ: within 2 LSB of the integer pipeline
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(run / "variants" / "int8.onnx"), opts, providers=["CPUExecutionProvider"])
    ort_out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ort_q = np.clip(np.round(ort_out / out_binding.scale) + out_binding.zero_point, -128, 127)
    assert np.abs(ort_q - want.reshape(ort_q.shape)).max() <= 2


def test_load_model_reads_both_formats_to_the_same_graph(exported, run):
    g_onnx = load_model(run / "variants" / "int8.onnx")
    g_tfl = load_model(exported / "model.tflite")
    assert [op.kind for op in g_tfl.ops] == [op.kind for op in g_onnx.ops]


@pytest.mark.parametrize("args, message", [
    (["--target", "cortexm"], "unknown board 'cortexm'"),
    (["--target", "host", "--variant", "int4"], "no variant 'int4'"),
    (["--target", "host", "--format", "tflite,bin"], "unknown export format bin"),
])
def test_export_errors_are_one_line(run, exported, args, message, capsys):
    assert main(["export", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_model_too_big_for_the_board_gets_the_fit_report_not_an_error(run, exported, capsys):
    assert main(["export", str(run), "--target", "gd32vf103", "--format", "c"]) == 0
    out = capsys.readouterr().out
    fit = json.loads((run / "targets" / "gd32vf103" / "fit.json").read_text())
    assert "fits gd32vf103:" in out
    if not fit["fits"]:
        assert "missing" in " ".join(fit["messages"])


def test_inspect_and_boards(exported, capsys):
    assert main(["inspect", str(exported / "model.tflite")]) == 0
    out = capsys.readouterr().out
    assert "CONV_2D" in out and "MACs" in out and "static arena" in out
    assert main(["boards"]) == 0
    out = capsys.readouterr().out
    assert "stm32h747" in out and "qemu-system-arm" in out
