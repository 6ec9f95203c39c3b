"""QDQ ONNX importer on torch models: export -> onnxruntime quantize_static (QDQ) -> IntGraph.

Each topology hazard (residual add, concat, depthwise and grouped conv, channel shuffle, upsample,
pads, pools, flatten into a linear head, SE gating, unfolded BN) is checked for parity with
onnxruntime and for the structure it must import to (see ``fe_onnx_cases`` for the parity bar).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fe_onnx_cases import assert_close, compare_with_ort, kinds, quantize_torch
from onnx import numpy_helper
from onnxruntime.quantization import QuantType

from edgesmith.errors import ExportError
from firmware_export import onnx_layout as L
from firmware_export.onnx_importer import read_qdq_onnx

# --------------------------------------------------------------------------- models


def conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class ResidualConcat(nn.Module):
    """conv+bn+relu chain, residual add, depthwise, grouped conv, concat, ReLU6, 4-D output."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, stride=2)
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw_mult = nn.Conv2d(8, 16, 3, 1, 1, groups=8)
        self.grouped = conv_bn(16, 8, k=1, groups=4)
        self.proj = nn.Conv2d(16, 12, 1)

    def forward(self, x):
        y = self.stem(x)
        z = self.dw(y) + y
        w = self.grouped(self.dw_mult(z))
        return self.proj(torch.cat([z, w], dim=1))


class ChannelShuffle(nn.Module):
    def __init__(self, groups=2):
        super().__init__()
        self.groups = groups
        self.a = conv_bn(3, 8)
        self.b = conv_bn(8, 8, k=1, groups=2)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.b(y)


class UpsamplePad(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = conv_bn(3, 6, stride=2)
        self.b = nn.Conv2d(12, 4, 3)

    def forward(self, x):
        y = self.a(x)
        near = F.interpolate(y, scale_factor=2, mode="nearest")
        bil = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        bil_ac = F.interpolate(y, size=(10, 12), mode="bilinear", align_corners=True)
        z = torch.cat([near, bil], dim=1)
        return self.b(F.pad(z, (1, 2, 0, 1))), bil_ac


class PoolHead(nn.Module):
    """maxpool / avgpool (padded, count_include_pad) / GAP + linear + softmax, and a sigmoid branch."""

    def __init__(self):
        super().__init__()
        self.a = conv_bn(3, 8)
        self.mp = nn.MaxPool2d(3, 2, padding=1)
        self.ap = nn.AvgPool2d(3, 1, padding=1)
        self.ap2 = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.ap(self.mp(self.a(x)))
        y = self.ap2(y)
        g = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return torch.softmax(self.fc(g), dim=1), torch.sigmoid(y)


class FlattenHead(nn.Module):
    """Flatten of a 4x4 map into a Linear: the FC weight columns must follow NHWC order."""

    def __init__(self):
        super().__init__()
        self.a = conv_bn(3, 6, stride=2)
        self.fc1 = nn.Linear(6 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        y = torch.flatten(self.a(x), 1)
        return self.fc2(F.relu(self.fc1(y)))


class SqueezeExcite(nn.Module):
    """SE block (GAP, 1x1 convs, sigmoid gate broadcast by Mul), ReduceMean, MatMul + Add head."""

    def __init__(self):
        super().__init__()
        self.a = conv_bn(3, 8)
        self.squeeze, self.excite = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.w = nn.Parameter(torch.randn(8, 5) * 0.3)
        self.b = nn.Parameter(torch.randn(5) * 0.1)

    def forward(self, x):
        y = self.a(x)
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(y, 1)))))
        return (y * gate).mean(dim=(2, 3)) @ self.w + self.b


class AddThenBatchNorm(nn.Module):
    """A BatchNormalization that cannot be folded into a conv (it follows a residual Add)."""

    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)

    def forward(self, x):
        y = self.a(x)
        return F.relu(self.bn(y + F.relu(y)))


PARITY_MODELS = {
    "residual_concat": (ResidualConcat, (1, 3, 16, 16)),
    "channel_shuffle": (ChannelShuffle, (1, 3, 8, 8)),
    "upsample_pad": (UpsamplePad, (1, 3, 12, 10)),
    "pool_head": (PoolHead, (1, 3, 14, 14)),
    "flatten_head": (FlattenHead, (1, 3, 8, 8)),
    "squeeze_excite": (SqueezeExcite, (1, 3, 8, 8)),
    "add_batchnorm": (AddThenBatchNorm, (1, 3, 8, 8)),
}


# --------------------------------------------------------------------------- parity and structure


@pytest.mark.parametrize("name", sorted(PARITY_MODELS))
def test_parity_with_onnxruntime(name, tmp_path):
    cls, shape = PARITY_MODELS[name]
    torch.manual_seed(0)
    path = quantize_torch(cls(), shape, tmp_path)
    imported, diff = compare_with_ort(path)
    assert_close(diff)
    used = kinds(imported.graph)
    expected = {
        "residual_concat": {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "CONCATENATION"},
        "channel_shuffle": {"CONV_2D", "RESHAPE", "TRANSPOSE"},
        "upsample_pad": {"RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR", "PAD", "CONCATENATION"},
        "pool_head": {"MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX", "LOGISTIC"},
        "flatten_head": {"FULLY_CONNECTED", "RESHAPE"},
        "squeeze_excite": {"MEAN", "LOGISTIC", "MUL", "FULLY_CONNECTED"},
        "add_batchnorm": {"CONV_2D", "ADD", "DEPTHWISE_CONV_2D"},
    }[name]
    assert expected <= set(used), used
    # graph inputs and 4-D outputs are NHWC; the bindings say so
    assert imported.inputs[0].perm == L.NHWC
    for out in imported.outputs:
        assert out.perm == L.natural_layout(len(out.onnx_shape))
        assert imported.graph.tensor(out.tensor).shape == L.stored_shape(out.onnx_shape, out.perm)


def test_channel_shuffle_is_one_nhwc_transpose(tmp_path):
    path = quantize_torch(ChannelShuffle(), (1, 3, 8, 8), tmp_path)
    graph = read_qdq_onnx(path)
    transposes = [op for op in graph.ops if op.kind == "TRANSPOSE"]
    # NHWC [1,H,W,g,C/g] -> [1,H,W,C/g,g]: only the two channel sub-axes move
    assert len(transposes) == 1 and tuple(transposes[0].attrs["perm"]) == (0, 1, 2, 4, 3)
    assert graph.tensor(transposes[0].inputs[0]).shape == (1, 8, 8, 2, 4)


def test_flatten_into_linear_permutes_weights_instead_of_transposing(tmp_path):
    model = FlattenHead()
    path = quantize_torch(model, (1, 3, 8, 8), tmp_path)
    graph = read_qdq_onnx(path)
    assert "TRANSPOSE" not in kinds(graph)
    fc = next(op for op in graph.ops if op.kind == "FULLY_CONNECTED")
    w_graph = graph.tensor(fc.inputs[1]).data
    qmodel = onnx.load(str(path))
    w_onnx = numpy_helper.to_array(next(i for i in qmodel.graph.initializer if i.name == "fc1.weight_quantized"))
    # column j of the graph's weight is NHWC element j = ONNX (NCHW) element flat_order[j]
    order = L.flat_order((1, 6, 4, 4), L.NHWC)
    np.testing.assert_array_equal(w_graph, w_onnx[:, order])


def test_weights_bias_and_quantization_match_onnx_node_by_node(tmp_path):
    path = quantize_torch(ResidualConcat(), (1, 3, 16, 16), tmp_path)
    graph = read_qdq_onnx(path)
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    users = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    ops = {op.name: op for op in graph.ops}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 5
    for node in convs:
        op = ops[node.name]
        w_dq, b_dq = producers[node.input[1]], producers[node.input[2]]
        w_q, w_scale = inits[w_dq.input[0]], inits[w_dq.input[1]]
        b_q, b_scale = inits[b_dq.input[0]], inits[b_dq.input[1]]
        wt, bt, yt = (graph.tensor(n) for n in (op.inputs[1], op.inputs[2], op.outputs[0]))
        group = next(a.i for a in node.attribute if a.name == "group")
        if op.kind == "DEPTHWISE_CONV_2D":
            np.testing.assert_array_equal(wt.data, w_q.transpose(1, 2, 3, 0))
            assert wt.quant_axis == 3 and op.attrs["depth_multiplier"] == w_q.shape[0] // group
        else:
            assert op.kind == "CONV_2D"
            np.testing.assert_array_equal(wt.data, w_q.transpose(0, 2, 3, 1))
            assert wt.quant_axis == 0 and wt.shape[3] == w_q.shape[1]
        np.testing.assert_array_equal(wt.scale, w_scale)
        assert not np.any(wt.zero_point)
        np.testing.assert_array_equal(bt.data, b_q)
        np.testing.assert_allclose(bt.scale, b_scale, rtol=1e-6)
        # the op's int8 output carries the QuantizeLinear's scale and zero point
        (q,) = users[node.output[0]]
        assert q.op_type == "QuantizeLinear"
        assert yt.per_tensor_scale() == pytest.approx(float(inits[q.input[1]]), rel=1e-6)
        assert yt.per_tensor_zero_point() == int(inits[q.input[2]])
        x_dq = producers[node.input[0]]
        assert graph.tensor(op.inputs[0]).per_tensor_scale() == pytest.approx(float(inits[x_dq.input[1]]))


def test_sigmoid_with_calibrated_output_range_is_requantized(tmp_path):
    """Without pinned 1/256 output quantization, LOGISTIC writes TFLite's fixed quantization and a
    QUANTIZE maps it to the Q's: two roundings, so up to 2 LSB (never more) against onnxruntime."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sigmoid())
    path = quantize_torch(model, (1, 3, 8, 8), tmp_path, pin_probabilities=False)
    imported, diff = compare_with_ort(path)
    graph = imported.graph
    assert kinds(graph) == ["CONV_2D", "LOGISTIC", "QUANTIZE"]
    logistic_out = graph.tensor(graph.ops[1].outputs[0])
    assert (logistic_out.per_tensor_scale(), logistic_out.per_tensor_zero_point()) == (1 / 256, -128)
    assert graph.ops[2].outputs == graph.outputs
    assert diff.max() <= 2 and np.mean(diff <= 1) >= 0.95


def test_nhwc_model_input_and_output_need_no_transpose(tmp_path):
    """A model taking and returning NHWC (Transpose at both ends, as tf2onnx writes) stays NHWC."""

    class Nhwc(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = conv_bn(3, 4)

        def forward(self, x):
            return self.a(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    torch.manual_seed(0)
    path = quantize_torch(Nhwc(), (1, 6, 5, 3), tmp_path)
    imported, diff = compare_with_ort(path)
    assert kinds(imported.graph) == ["CONV_2D"]
    assert imported.inputs[0].perm == (0, 1, 2, 3) and imported.outputs[0].perm == (0, 1, 2, 3)
    assert imported.graph.tensor(imported.graph.inputs[0]).shape == (1, 6, 5, 3)
    assert diff.max() <= 1


def test_weights_shared_through_identity(tmp_path):
    """Equal weights are exported once and shared via Identity; onnxruntime then re-quantizes the
    second use as an activation (per-tensor, zero point -128). The importer keeps the int8 weight."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1, bias=False), nn.Conv2d(4, 4, 1, bias=False)
            self.c = nn.Conv2d(4, 4, 1, bias=False)
            with torch.no_grad():  # 0/1 selection weights, equal in b and c (like NanoDet-MCU's)
                self.b.weight.copy_(torch.eye(4).reshape(4, 4, 1, 1))
                self.c.weight.copy_(self.b.weight)

        def forward(self, x):
            return self.c(F.relu(self.b(F.relu(self.a(x)))))

    torch.manual_seed(0)
    path = quantize_torch(Shared(), (1, 3, 6, 6), tmp_path)
    assert any(n.op_type == "Identity" for n in onnx.load(str(path)).graph.node)
    imported, diff = compare_with_ort(path)
    convs = [op for op in imported.graph.ops if op.kind == "CONV_2D"]
    assert len(convs) == 3
    for op in convs[1:]:
        w = imported.graph.tensor(op.inputs[1])
        assert not np.any(w.zero_point)
        np.testing.assert_array_equal(w.data.reshape(4, 4) != 0, np.eye(4, dtype=bool))
    assert_close(diff)


# --------------------------------------------------------------------------- errors


def test_unsupported_ops_are_all_listed_in_one_error(tmp_path):
    class Gelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.b(F.gelu(self.a(x))) + F.gelu(x[:, :1].mean(dim=(2, 3), keepdim=True))

    path = quantize_torch(Gelu(), (1, 3, 8, 8), tmp_path)
    erfs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Erf"]
    assert len(erfs) == 2
    with pytest.raises(ExportError) as info:
        read_qdq_onnx(path)
    message = str(info.value)
    # one problem per op type, naming its nodes; the advice once at the end
    assert f"2 nodes (Erf: {erfs[0]!r}, {erfs[1]!r})" in message
    assert message.count("op type Erf has no integer kernel") == 1
    assert message.count("firmware export has integer kernels for:") == 1


def test_uint8_activations_are_refused(tmp_path):
    path = quantize_torch(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), (1, 3, 8, 8), tmp_path,
                          activation_type=QuantType.QUInt8)
    with pytest.raises(ExportError, match="uint8 activations are not supported"):
        read_qdq_onnx(path)
