"""Detector QAT: a NanoDet-style run fine-tuned with fake quantization on the GFL loss, exported as QDQ."""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from conftest import train_tiny_detector
from edgesmith.cli import main
from edgesmith.errors import ExportError
from quantize.fake_quant import QatConvBn2d
from quantize.qat import QatSettings, _check_all_matched, fuse_for_qat, qat_to_qdq
from quantize.qat_detection import DetectorQatTask
from quantize.scheme import check_qdq_scheme
from trainer.checkpoint import load_checkpoint
from trainer.models import build_model


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    """nanodet-m: Ghost-PAN and ShuffleNetV2 with in-place LeakyReLU, the shapes QAT must handle."""
    return train_tiny_detector(tmp_path_factory.mktemp("qatdet"), model="nanodet-m", n=8, seed=5)[1]


def _feeds(run, n=8):
    from edgesmith.detection import calibration_images
    from quantize.calibration import PreprocessSpec

    st = load_checkpoint(run, load_optimizer=False).train_state["preprocessing"]
    spec = PreprocessSpec(size=tuple(st["image_size"]), mean=tuple(st["mean"]), std=tuple(st["std"]), layout="NCHW")
    images, _ = calibration_images(run, n)
    return [{"input": spec.apply(images).astype(np.float32)}]


def test_ghost_and_shufflenet_detectors_trace_for_qat():
    """Shape-dependent code (channel shuffle, Ghost trimming) must not stop torch.fx."""
    for name in ("nanodet-m", "nanodet-mcu"):  # Ghost-PAN + ShuffleNetV2; the MCU config's conv split
        model = build_model(name, num_classes=2, width_mult=0.5).eval()
        gm = fuse_for_qat(copy.deepcopy(model))
        x = torch.randn(1, 3, 64, 64)
        for a, b in zip(model(x), gm(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_detector_qat_trains_on_the_detection_loss_and_exports_what_it_trained(det_run, tmp_path):
    from edgesmith.detection import shipped_model

    ckpt = load_checkpoint(det_run, load_optimizer=False)
    model = shipped_model(ckpt)
    settings = QatSettings(epochs=2, lr=1e-3, batch_size=4, freeze_bn_epoch=0, freeze_observer_epoch=0, init_method="percentile")
    task = DetectorQatTask(ckpt.train_state, settings)
    feeds = _feeds(det_run)
    res = qat_to_qdq(model, det_run / "model.onnx", tmp_path / "qat.onnx", task=task, feeds=feeds, settings=settings,
                     log=lambda _m: None)
    # trained on the GFL loss: every epoch logs its parts, and the weights moved
    assert [h["epoch"] for h in res.history] == [1, 2] and all({"qfl", "giou", "dfl"} <= set(h) for h in res.history)
    fused = {name: m for name, m in res.model.named_modules() if isinstance(m, QatConvBn2d)}
    assert fused  # torch.fx keeps module paths: each fused conv sits where the model's conv was
    moved = [not torch.equal(m.conv.weight.detach(), model.get_submodule(name).weight.detach())
             for name, m in fused.items()]
    assert sum(moved) > len(moved) // 2
    # frozen from the first epoch: BN statistics stay the checkpoint's
    want = sorted(float(v.sum()) for k, v in model.state_dict().items() if k.endswith("running_var"))
    got = sorted(float(m.bn.running_var.sum()) for m in fused.values())
    assert got == pytest.approx(want, rel=1e-6)

    q = onnx.load(str(res.int8.path))
    assert check_qdq_scheme(q) == []
    outputs = [o.name for o in q.graph.output]
    assert len(outputs) == 2 * len(model.strides)
    # the QDQ file computes what QAT trained: torch fake-quant model vs onnxruntime, output by output,
    # within a few steps of each output's quantization grid
    x = feeds[0]["input"][:4]
    with torch.no_grad():
        torch_out = [o.numpy() for o in res.model(torch.from_numpy(x))]
    ort_out = ort.InferenceSession(str(res.int8.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    for name, t, o in zip(outputs, torch_out, ort_out):
        step = (float(o.max()) - float(o.min())) / 255  # the output's int8 grid
        diff = np.abs(t - o)
        assert float(np.mean(diff <= 4 * step)) >= 0.99, (name, float(diff.max()), step)


def test_qat_refuses_to_train_a_function_it_would_not_export():
    """A quantized Conv output the PyTorch model does not produce is an error, not a silent mismatch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])
    w = onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                           helper.make_node("Reshape", ["c", "shape"], ["y"], name="reshape")],
                          "g", [x], [y], [w, onnx.numpy_helper.from_array(np.array([1, 1, 4, 4]), "shape")])
    m = helper.make_model(g)
    _check_all_matched(m, ["x", "c", "y"], {"x": "a", "c": "b"}, "m.onnx")  # Reshape shares its input's scale
    with pytest.raises(ExportError, match=r"could not find 1 quantized activation.*c \(Conv\)"):
        _check_all_matched(m, ["x", "c", "y"], {"x": "a"}, "m.onnx")


def test_quantize_qat_on_a_detector_run_from_the_cli(det_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(det_run, run)
    assert main(["quantize", str(run), "--qat", "--epochs", "1", "--calib-size", "8", "--method", "percentile"]) == 0
    out = capsys.readouterr().out
    assert "QAT epoch 1/1" in out and "qfl" in out
    art = json.loads((run / "manifest.json").read_text())["artifacts"]["variants/int8-qat.onnx"]
    assert art["qat_epochs"] == 1 and "QAT 1 epoch(s), lr 0.0001" in " ".join(art.get("notes", []))
