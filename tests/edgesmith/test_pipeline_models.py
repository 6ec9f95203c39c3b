"""Whole models through the real pipeline (PyTorch -> ONNX -> PTQ -> IntGraph): the numpy reference,
TFLite Micro on our .tflite and our C agree bit for bit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from firmware_export.onnx_importer import import_qdq_onnx
from pipeline_checks import three_way
from quantize.calibration import batches_of
from quantize.ptq import quantize_int8
from trainer.export import export_onnx
from trainer.models import build_model

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host C compiler")


def _randomise_bn(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics, so folding and per-channel scales are exercised (untrained weights)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("name, width, size", [("resnet18", 0.125, 32), ("resnet8", 0.5, 32)])
def test_model_is_bit_exact_three_ways(name, width, size, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, width_mult=width).eval()
    _randomise_bn(model)
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(model, fp32, input_shape=(3, size, size))
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, 3, size, size)).astype(np.float32)
    q = quantize_int8(fp32, tmp_path / "int8.onnx", [{"input": b} for b in batches_of(calib)])
    imp = import_qdq_onnx(q.path)
    x = np.stack([imp.inputs[0].to_graph(img[None])[0] for img in rng.standard_normal((6, 3, size, size)).astype(np.float32)])
    out = three_way(imp.graph, x, tmp_path / "run")
    assert len(np.unique(out["reference"])) > 3  # not a saturated, constant output
    np.testing.assert_array_equal(out["tflm"], out["reference"])
    np.testing.assert_array_equal(out["c"], out["reference"])
