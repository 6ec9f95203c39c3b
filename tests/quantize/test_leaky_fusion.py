"""LeakyReLU fused into the conv before it: one int8 rounding per conv, not two."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgesmith.errors import ExportError
from firmware_export.onnx_importer import read_qdq_onnx
from quantize.ptq import quantize_int8
from quantize.scheme import check_qdq_scheme
from tests.quantize.qmodels import export


class LeakyNet(nn.Module):
    """conv-bn-leaky ×2; the first conv output also feeds a residual add (must stay quantized)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(x)
        y = self.act(self.bn2(self.conv2(self.act(a))))
        return self.act(self.conv3(y)) + a


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    torch.manual_seed(0)
    model = LeakyNet().eval()
    with torch.no_grad():
        model.bn2.running_var.fill_(0.05)  # BN that folds into conv2 with a visible scale
    tmp = tmp_path_factory.mktemp("leaky")
    fp32 = export(model, tmp / "fp32.onnx")
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.normal(0, 1, (16, 3, 16, 16)).astype(np.float32)} for _ in range(2)]
    test = rng.normal(0, 1, (32, 3, 16, 16)).astype(np.float32)
    return fp32, feeds, test, tmp


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _run(path, x) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_leaky_relu_reads_its_conv_directly_and_only_private_pairs_are_fused(leaky):
    fp32, feeds, _, tmp = leaky
    result = quantize_int8(fp32, tmp / "fused.onnx", feeds, method="minmax")
    q = onnx.load(str(result.path))
    prod = _producers(q)
    leakies = [n for n in q.graph.node if n.op_type == "LeakyRelu"]
    from_conv = [n for n in leakies if prod[n.input[0]].op_type == "Conv"]
    # conv2 -> leaky and conv3 -> leaky are fused; conv1's output also feeds the Add, so its
    # LeakyRelu still reads a DequantizeLinear
    assert len(leakies) == 3 and len(from_conv) == 2
    assert result.notes == ["LeakyReLU fused into 2 conv(s): no int8 rounding between them"]
    for n in leakies:
        users = [u for u in q.graph.node if n.output[0] in u.input]
        assert [u.op_type for u in users] == ["QuantizeLinear"]  # the activation output stays int8
    conv1 = next(n for n in q.graph.node if n.op_type == "Conv")  # topological order: the first conv
    assert [u.op_type for u in q.graph.node if conv1.output[0] in u.input] == ["QuantizeLinear"]
    assert check_qdq_scheme(q) == []
    used = {i for n in q.graph.node for i in n.input}
    assert all(init.name in used for init in q.graph.initializer), "the removed pairs' parameters are dropped"

    unfused = onnx.load(str(quantize_int8(fp32, tmp / "unfused.onnx", feeds, method="minmax",
                                          fuse_leaky_relu=False).path))
    uprod = _producers(unfused)
    assert all(uprod[n.input[0]].op_type == "DequantizeLinear" for n in unfused.graph.node if n.op_type == "LeakyRelu")


def test_fusing_halves_the_error_of_a_conv_with_a_wide_negative_tail(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.1)).eval()
    with torch.no_grad():
        # pre-activations mostly negative and wide, as a trained detector's stem has: LeakyReLU
        # shrinks that tail ten-fold, so a rounding before it wastes range the positive half needs
        model[0].bias.fill_(-3.0)
    fp32 = export(model, tmp_path / "fp32.onnx")
    rng = np.random.default_rng(1)
    feeds = [{"input": rng.normal(0, 1, (32, 3, 16, 16)).astype(np.float32)}]
    test = rng.normal(0, 1, (32, 3, 16, 16)).astype(np.float32)
    ref = _run(fp32, test)
    err = {}
    for fuse in (True, False):
        path = quantize_int8(fp32, tmp_path / f"{fuse}.onnx", feeds, method="minmax", fuse_leaky_relu=fuse).path
        err[fuse] = float(np.sqrt(np.mean((_run(path, test) - ref) ** 2)))
    assert err[True] < 0.5 * err[False], err


def test_firmware_export_reports_a_leaky_relu_model_once_per_op_type(leaky):
    fp32, feeds, _, tmp = leaky
    path = quantize_int8(fp32, tmp / "fw.onnx", feeds, method="minmax").path
    with pytest.raises(ExportError) as info:
        read_qdq_onnx(path)
    message = str(info.value)
    # one problem (the op type, 3 nodes), nothing about the convs or Q nodes around them
    assert "1 problem:" in message and "3 nodes (LeakyRelu:" in message, message
    assert "in float" not in message and "reads float tensor" not in message, message
    assert "nanodet-mcu" in message


def test_cli_fuses_by_default_and_no_fuse_leaky_relu_keeps_the_conv_output_in_int8(tmp_path, capsys):
    from PIL import Image  # noqa: PLC0415

    from edgesmith.cli import main  # noqa: PLC0415

    torch.manual_seed(0)
    model = export(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.1)).eval(), tmp_path / "mine.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    common = ["quantize", str(model), "--calib-data", str(calib), "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    assert main([*common, "--name", "fused"]) == 0
    assert main([*common, "--name", "unfused", "--no-fuse-leaky-relu"]) == 0
    reads = {}
    for name in ("fused", "unfused"):
        q = onnx.load(str(tmp_path / "variants" / f"{name}.onnx"))
        leaky = next(n for n in q.graph.node if n.op_type == "LeakyRelu")
        reads[name] = _producers(q)[leaky.input[0]].op_type
    assert reads == {"fused": "Conv", "unfused": "DequantizeLinear"}
