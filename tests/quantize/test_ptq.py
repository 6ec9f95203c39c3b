"""PTQ to QDQ ONNX: the scheme node by node, every calibrator, --keep-float, per-tensor, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from edgesmith.errors import ConfigError, DataError, ExportError
from qmodels import SmallNet, export, normalise, stripe_images, train_small
from quantize.calibration import batches_of, check_batches_fit, model_input
from quantize.calibrators import METHODS, compute_ranges, mse_optimal_range, quantization_mse
from quantize.ptq import preprocess_model, quantize_int8
from quantize.scheme import check_qdq_scheme


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A trained SmallNet, its FP32 ONNX, calibration feeds and validation data."""
    rng = np.random.default_rng(0)
    tr_x, tr_y = stripe_images(512, rng)
    va_x, va_y = stripe_images(256, rng)
    torch.manual_seed(0)
    model = train_small(SmallNet(), tr_x, tr_y, epochs=4)
    d = tmp_path_factory.mktemp("ptq")
    fp32 = export(model, d / "fp32.onnx")
    feeds = [{"input": b} for b in batches_of(normalise(tr_x[:128]))]
    return {"model": model, "fp32": fp32, "feeds": feeds, "val": (normalise(va_x), va_y), "dir": d}


def _run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _inits(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _producer(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_qdq_structure_follows_the_tflite_scheme_node_by_node(small):
    out = quantize_int8(small["fp32"], small["dir"] / "int8.onnx", small["feeds"])
    q = onnx.load(str(out.path))
    inits, prod = _inits(q), _producer(q)
    fp32 = onnx.load(str(preprocess_model(small["fp32"], small["dir"] / "pre.onnx")))
    fp_inits = _inits(fp32)
    fp_convs = [n for n in fp32.graph.node if n.op_type in ("Conv", "Gemm")]
    convs = [n for n in q.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(convs) == len(fp_convs) == 4  # conv1 (BN folded), conv2, shortcut, fc
    assert not [n for n in q.graph.node if n.op_type in ("Relu", "BatchNormalization")], "ReLU/BN must be fused"
    for node, fp_node in zip(convs, fp_convs):
        w_dq, b_dq = prod[node.input[1]], prod[node.input[2]]
        w, w_scale, w_zp = (inits[i] for i in w_dq.input)
        w_float = fp_inits[fp_node.input[1]]
        assert w.dtype == np.int8 and np.all(w_zp == 0), node.name
        assert w.min() >= -127 and w.max() <= 127, node.name
        # per channel (axis 0): one scale per output channel, max |w| maps to 127
        assert w_scale.shape == (w.shape[0],)
        np.testing.assert_allclose(w_scale, np.abs(w_float).reshape(len(w), -1).max(1) / 127, rtol=1e-5)
        assert np.all(np.abs(w).reshape(len(w), -1).max(1) == 127)
        # int32 bias, scale = input scale x weight scale, zero point 0
        b, b_scale, b_zp = (inits[i] for i in b_dq.input)
        x_dq = prod[node.input[0]]
        x_scale, x_zp = inits[x_dq.input[1]], inits[x_dq.input[2]]
        assert b.dtype == np.int32 and np.all(b_zp == 0)
        np.testing.assert_allclose(b_scale, float(x_scale) * w_scale, rtol=1e-6)
        assert x_zp.dtype == np.int8 and x_scale.size == 1  # asymmetric int8, per tensor
    # conv1 + ReLU: the fused ReLU is the output range starting at 0 -> zero point -128
    q_after_conv1 = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == convs[0].output[0])
    assert int(inits[q_after_conv1.input[2]]) == -128
    assert check_qdq_scheme(q) == []


@pytest.mark.parametrize("method", METHODS)
def test_every_calibrator_gives_a_runnable_accurate_model(small, method):
    out = quantize_int8(small["fp32"], small["dir"] / f"int8-{method}.onnx", small["feeds"], method=method)
    x, y = small["val"]
    ref = _run(small["fp32"], x)
    got = _run(out.path, x)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert check_qdq_scheme(onnx.load(str(out.path))) == []


def test_calibrators_differ_and_clip_inside_minmax(small):
    pre = preprocess_model(small["fp32"], small["dir"] / "pre-cal.onnx")
    ranges = {m: compute_ranges(pre, small["feeds"], m).data for m in METHODS}

    def width(td):
        lo, hi = td.range_value
        return float(np.asarray(hi).reshape(-1)[0]) - float(np.asarray(lo).reshape(-1)[0])

    names = sorted(ranges["minmax"])
    for m in ("percentile", "entropy", "mse"):
        # histogram methods round thresholds to bin edges: allow 2% over the observed range
        assert all(width(ranges[m][n]) <= width(ranges["minmax"][n]) * 1.02 for n in names), m
        assert any(width(ranges[m][n]) < width(ranges["minmax"][n]) * 0.99 for n in names), f"{m} never clipped"


def test_mse_range_search_clips_outliers_and_beats_full_range():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 200_000), [60.0, -55.0]])  # two rare outliers
    hist, edges = np.histogram(values, bins=2048, range=(-60, 60))
    hist = hist.astype(float)
    lo, hi = mse_optimal_range(hist, edges, values.min(), values.max())
    centres = (edges[:-1] + edges[1:]) / 2
    full = quantization_mse(hist, centres, values.min(), values.max())
    best = quantization_mse(hist, centres, lo, hi)
    assert hi < 0.9 * values.max() and lo > 0.9 * values.min()  # the outliers are clipped
    assert best < 0.8 * full
    # no range on a finer grid does meaningfully better
    finer = min(quantization_mse(hist, centres, f * values.min(), f * values.max()) for f in np.linspace(0.02, 1, 400))
    assert best <= finer * 1.02


def test_per_tensor_weights_have_one_scale(small):
    out = quantize_int8(small["fp32"], small["dir"] / "pt.onnx", small["feeds"], per_channel=False)
    q = onnx.load(str(out.path))
    inits, prod = _inits(q), _producer(q)
    for node in (n for n in q.graph.node if n.op_type in ("Conv", "Gemm")):
        assert inits[prod[node.input[1]].input[1]].size == 1
    assert check_qdq_scheme(q) == []


def test_keep_float_leaves_the_named_node_in_float(small):
    fp32 = onnx.load(str(small["fp32"]))
    first_conv = next(n.name for n in fp32.graph.node if n.op_type == "Conv")
    out = quantize_int8(small["fp32"], small["dir"] / "kf.onnx", small["feeds"], keep_float=[first_conv])
    q = onnx.load(str(out.path))
    node = next(n for n in q.graph.node if n.name == first_conv)
    inits = _inits(q)
    assert inits[node.input[1]].dtype == np.float32  # weight stays a float initializer
    assert not any(n.op_type == "DequantizeLinear" and n.output[0] == node.input[0] for n in q.graph.node)
    prod = _producer(q)
    assert sum(n.op_type == "Conv" and n.input[1] in prod and prod[n.input[1]].op_type == "DequantizeLinear"
               for n in q.graph.node) == 2  # the other convs are still int8
    with pytest.raises(ConfigError, match="no node called nope"):
        quantize_int8(small["fp32"], small["dir"] / "kf2.onnx", small["feeds"], keep_float=["nope"])


def _model_with_erf(path):
    x = helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
             helper.make_node("Erf", ["c"], ["e"], name="gelu_erf"),
             helper.make_node("Conv", ["e", "w"], ["out"], name="conv_out")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return path


def test_unquantizable_ops_are_listed_by_node_name(tmp_path):
    path = _model_with_erf(tmp_path / "erf.onnx")
    feeds = [{"input": np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)}]
    with pytest.raises(ExportError, match=r"gelu_erf \(Erf\)"):
        quantize_int8(path, tmp_path / "q.onnx", feeds)
    out = quantize_int8(path, tmp_path / "q.onnx", feeds, keep_float=["gelu_erf"])
    assert any(n.op_type == "Erf" for n in onnx.load(str(out.path)).graph.node)


def test_calibration_data_must_fit_the_model(small):
    _, dims = model_input(small["fp32"])
    with pytest.raises(DataError, match="shaped 4x3x8x8 but the model expects Nx3x16x16"):
        check_batches_fit([np.zeros((4, 3, 8, 8), np.float32)], dims, "imgs/")
    with pytest.raises(DataError, match="empty"):
        check_batches_fit([], dims, "imgs/")


def test_scheme_checker_catches_broken_models(small):
    out = quantize_int8(small["fp32"], small["dir"] / "tamper.onnx", small["feeds"])
    q = onnx.load(str(out.path))
    prod = _producer(q)
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    w_name = prod[conv.input[1]].input[0]
    b_scale_name = prod[conv.input[2]].input[1]
    for init in q.graph.initializer:
        if init.name == w_name:
            w = numpy_helper.to_array(init).copy()
            w.flat[0] = -128
            init.CopyFrom(numpy_helper.from_array(w, w_name))
        if init.name == b_scale_name:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, b_scale_name))
    problems = " | ".join(check_qdq_scheme(q))
    assert "[-127, 127]" in problems and "bias scale" in problems


class _ShuffleSigmoid(torch.nn.Module):
    """Channel shuffle written with the batch size read at run time (Shape/Gather/Div in ONNX) and a sigmoid head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return torch.sigmoid(self.head(x))


def test_shape_arithmetic_is_not_an_unsupported_op_and_sigmoid_gets_tflite_parameters(tmp_path):
    torch.manual_seed(0)
    fp32 = export(_ShuffleSigmoid().eval(), tmp_path / "shuffle.onnx")
    ops = {n.op_type for n in onnx.load(str(fp32)).graph.node}
    assert ops & {"Shape", "Gather", "Div"}, ops  # the model really has shape arithmetic
    feeds = [{"input": np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)}]
    q = onnx.load(str(quantize_int8(fp32, tmp_path / "q.onnx", feeds).path))
    inits, prod = _inits(q), _producer(q)
    sig = next(n for n in q.graph.node if n.op_type == "Sigmoid")
    q_node = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == sig.output[0])
    assert float(inits[q_node.input[1]]) == 1 / 256 and int(inits[q_node.input[2]]) == -128
    assert check_qdq_scheme(q) == []
