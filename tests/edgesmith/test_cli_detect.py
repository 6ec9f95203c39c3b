"""`edgesmith train/eval/detect` with a detector: run directory, mAP printout, PNGs with boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import copy_detector_run
from edgesmith.cli import main
from trainer.checkpoint import save_checkpoint
from trainer.models import build_model


@pytest.fixture(scope="module")
def detector_run(pristine_detector_run, tmp_path_factory):
    return copy_detector_run(pristine_detector_run, tmp_path_factory.mktemp("det"))


def test_train_writes_detector_run_directory(detector_run, capsys):
    _, run = detector_run
    for name in ("checkpoint.safetensors", "model.onnx", "postprocess.json", "manifest.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["task"] == "detection" and manifest["model"]["name"] == "nanodet-mcu"
    assert manifest["artifacts"]["model.onnx"]["parity"]["passed"]


def test_eval_prints_map(detector_run, capsys):
    _, run = detector_run
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "mAP@[.5:.95]:" in out and "mAP@.5:" in out
    assert main(["eval", str(run), "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["map50"] <= 1.0 and set(report["per_class"]) <= {"box", "disc"}


def test_detect_writes_pngs_with_boxes(detector_run, tmp_path, capsys):
    data, run = detector_run
    images = sorted((data / "JPEGImages").glob("*.png"))[:2]
    out = tmp_path / "out"
    # score threshold 0: every image gets detections, so boxes are drawn
    assert main(["detect", str(run), *map(str, images), "--out", str(out), "--score-thr", "0.0",
                 "--device", "cpu"]) == 0
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == [p.name for p in images]
    assert capsys.readouterr().out.split() == [str(p) for p in written]
    for src, dst in zip(images, written):
        a, b = np.asarray(Image.open(src).convert("RGB")), np.asarray(Image.open(dst).convert("RGB"))
        assert a.shape == b.shape  # drawn at the original size, boxes mapped back from the letterbox
        assert (a != b).any(axis=-1).sum() > 50  # outlines and labels were drawn

    # a higher threshold draws nothing on an untrained model's near-prior scores
    assert main(["detect", str(run), str(images[0]), "--out", str(tmp_path / "none"), "--score-thr", "0.99",
                 "--device", "cpu"]) == 0
    assert (np.asarray(Image.open(tmp_path / "none" / images[0].name).convert("RGB"))
            == np.asarray(Image.open(images[0]).convert("RGB"))).all()


def test_detect_errors_are_user_errors(detector_run, tmp_path, capsys):
    _, run = detector_run
    classifier = build_model("resnet8", num_classes=10)
    save_checkpoint(tmp_path / "cls", model_name="resnet8",
                    model_args={"num_classes": 10, "width_mult": 1.0, "in_channels": 3},
                    state_dict=classifier.state_dict(), train_state={"classes": [str(i) for i in range(10)]})
    assert main(["detect", str(tmp_path / "cls"), "x.png", "--out", str(tmp_path / "o")]) == 2
    assert "needs a detector run" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["detect", str(run), str(tmp_path / "bad.png"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["detect", str(run), str(tmp_path / "bad.png"), "--score-thr", "1.5"]) == 2
    assert "--score-thr" in capsys.readouterr().err


def test_eval_and_detect_use_the_exported_ema_weights(tmp_path):
    from edgesmith.detection import shipped_model
    from trainer.checkpoint import load_checkpoint

    model = build_model("nanodet-mcu", num_classes=2, width_mult=0.5)
    ema = {f"ema.{k}": v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "run", model_name="nanodet-mcu",
                    model_args={"num_classes": 2, "width_mult": 0.5, "in_channels": 3},
                    state_dict=model.state_dict(), train_state={"task": "detection"}, extra_tensors=ema)
    got = shipped_model(load_checkpoint(tmp_path / "run")).state_dict()
    for k, v in got.items():
        torch.testing.assert_close(v, ema[f"ema.{k}"], msg=k)


def test_detector_int8_variant_gets_map_and_compiles_bit_exact(detector_run, tmp_path, capsys):
    """A NanoDet-style network through PTQ (letterboxed calibration), eval --variant (mAP with float
    post-processing), and firmware export: reference, TFLite Micro and C agree bit for bit."""
    import shutil

    import numpy as np

    from firmware_export.onnx_importer import import_qdq_onnx
    from pipeline_checks import three_way

    _data, trained = detector_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["quantize", str(run), "--calib-size", "6"]) == 0
    assert "letterboxed" in capsys.readouterr().out
    assert main(["eval", str(run), "--variant", "all", "--json"]) == 0
    entries = {e["variant"]: e for e in json.loads(capsys.readouterr().out)}
    assert {"fp32", "int8"} <= set(entries) and all(0 <= e["map50"] <= 1 for e in entries.values())
    imp = import_qdq_onnx(run / "variants" / "int8.onnx")
    assert len(imp.graph.outputs) > 1  # raw head outputs of several levels
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (2, *imp.graph.tensor(imp.graph.inputs[0]).shape[1:]), dtype=np.int8)
    if shutil.which("gcc") is None:
        pytest.skip("needs a host C compiler for the C leg")
    out = three_way(imp.graph, x, tmp_path / "fw")
    np.testing.assert_array_equal(out["tflm"], out["reference"])
    np.testing.assert_array_equal(out["c"], out["reference"])
