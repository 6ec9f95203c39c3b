"""`edgesmith quantize` and `edgesmith eval --variant` end to end on a real (tiny) run and a user's ONNX."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from PIL import Image

from edgesmith.cli import main
from edgesmith.manifest import load_manifest
from quantize.scheme import check_qdq_scheme

def test_quantize_run_writes_variants_reports_and_manifest(run, capsys):
    assert main(["quantize", str(run), "--int8", "--fp16", "--calib-size", "48", "--method", "mse"]) == 0
    out = capsys.readouterr().out
    assert "calibration: 48 images" in out and "SQNR" in out
    int8 = run / "variants" / "int8.onnx"
    assert int8.is_file() and (run / "variants" / "fp16.onnx").is_file()
    assert check_qdq_scheme(onnx.load(str(int8))) == []
    sens = json.loads((run / "reports" / "sensitivity-int8.json").read_text())
    assert sens and all(np.isfinite(r["sqnr_db"]) for r in sens)
    arts = load_manifest(run)["artifacts"]
    assert arts["variants/int8.onnx"]["kind"] == "onnx_int8_qdq" and arts["variants/int8.onnx"]["method"] == "mse"
    assert arts["variants/fp16.onnx"]["kind"] == "onnx_fp16"
    assert load_manifest(run)["lineage"][-1]["stage"] == "quantize"

    assert main(["eval", str(run), "--variant", "all", "--json"]) == 0
    entries = {e["variant"]: e for e in json.loads(capsys.readouterr().out)}
    assert {"fp32", "fp16", "int8"} <= set(entries)
    assert entries["int8"]["bytes"] < entries["fp16"]["bytes"] < entries["fp32"]["bytes"]
    assert entries["int8"]["macs"] == entries["fp32"]["macs"] > 0
    assert all(0 <= e["top1"] <= 1 and e["cpu_latency_ms"] > 0 for e in entries.values())
    report = json.loads((run / "reports" / "variants.json").read_text())
    assert {e["variant"] for e in report["variants"]} >= {"fp32", "fp16", "int8"}
    assert (run / "reports" / "variants.png").stat().st_size > 1000


def test_qat_from_the_cli(run, capsys):
    assert main(["quantize", str(run), "--qat", "--epochs", "1", "--calib-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "QAT epoch 1/1" in out
    q = onnx.load(str(run / "variants" / "int8-qat.onnx"))
    assert check_qdq_scheme(q) == []
    assert load_manifest(run)["artifacts"]["variants/int8-qat.onnx"]["qat_epochs"] == 1


def test_user_onnx_without_a_run_directory(run, tmp_path, capsys):
    model = shutil.copy(run / "model.onnx", tmp_path / "mine.onnx")
    assert main(["quantize", str(model)]) == 2
    assert "--calib-data" in capsys.readouterr().err
    images = tmp_path / "calib" / "nested"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    assert main(["quantize", str(model), "--calib-data", str(tmp_path / "calib"), "--mean", "0.5,0.5,0.5",
                 "--std", "0.25,0.25,0.25", "--name", "mine-int8"]) == 0
    out = tmp_path / "variants" / "mine-int8.onnx"
    assert check_qdq_scheme(onnx.load(str(out))) == []
    assert "calibration: 6 images" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--keep-float", "nope"], "no node called nope"),
    (["--calib-size", "0"], "--calib-size must be >= 1"),
])
def test_bad_quantize_input_is_one_clear_error(run, args, message, capsys):
    assert main(["quantize", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_mismatched_calibration_images_and_missing_model(run, tmp_path, capsys):
    model = shutil.copy(run / "model.onnx", tmp_path / "mine.onnx")
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    assert main(["quantize", str(model), "--calib-data", str(tmp_path / "imgs"), "--input-size", "8,8"]) == 2
    assert "shaped 1x3x8x8 but the model expects Nx3x32x32" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["quantize", str(model), "--calib-data", str(tmp_path / "empty")]) == 2
    assert "no images" in capsys.readouterr().err
    broken_run = tmp_path / "broken"
    shutil.copytree(run, broken_run)
    (broken_run / "model.onnx").unlink()
    assert main(["quantize", str(broken_run)]) == 2
    assert "has no model.onnx" in capsys.readouterr().err
    assert main(["eval", str(run), "--variant", "int4"]) == 2
    assert "no variant 'int4'" in capsys.readouterr().err
