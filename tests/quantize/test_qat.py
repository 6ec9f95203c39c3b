"""QAT: fake quantization placed where the QDQ quantizer puts Q/DQ, export with identical conventions,
and it recovers accuracy PTQ loses on a model with an outlier activation channel."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from qmodels import MEAN, STD, SmallNet, add_outlier_channel, export, normalise, split, stripe_images, train_small
from quantize.calibration import batches_of
from quantize.fake_quant import QatConvBn2d, act_scale_zero_point
from quantize.ptq import quantize_int8
from quantize.qat import ClassifierQatTask, QatSettings, fuse_for_qat, qat_to_qdq
from quantize.scheme import check_qdq_scheme


def _top1(path, x, y):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1) == y).mean())


@pytest.fixture(scope="module")
def outlier_case(tmp_path_factory):
    rng = np.random.default_rng(0)
    tr_x, tr_y = stripe_images(768, rng)
    va_x, va_y = stripe_images(384, rng)
    torch.manual_seed(2)  # seeded model init: the outlier's damage to PTQ is asserted below, not assumed
    model = add_outlier_channel(train_small(SmallNet(), tr_x, tr_y, epochs=5, seed=2), channel=0, gain=300.0)
    d = tmp_path_factory.mktemp("qat")
    fp32 = export(model, d / "fp32.onnx")
    feeds = [{"input": b} for b in batches_of(normalise(tr_x[:128]))]
    return dict(model=model, fp32=fp32, feeds=feeds, train=split(tr_x, tr_y), val=(normalise(va_x), va_y), dir=d)


def test_qat_beats_ptq_on_outlier_activations_and_exports_what_it_trained(outlier_case):
    c = outlier_case
    x, y = c["val"]
    fp32_top1 = _top1(c["fp32"], x, y)
    ptq = quantize_int8(c["fp32"], c["dir"] / "ptq.onnx", c["feeds"])
    ptq_top1 = _top1(ptq.path, x, y)
    settings = QatSettings(epochs=2, batch_size=32, lr=2e-4, crop_padding=0, flip=False)
    task = ClassifierQatTask(c["train"], (16, 16), MEAN, STD, settings)
    res = qat_to_qdq(copy.deepcopy(c["model"]), c["fp32"], c["dir"] / "qat.onnx", task=task, feeds=c["feeds"],
                     settings=settings, log=lambda _m: None)
    qat_top1 = _top1(res.int8.path, x, y)
    assert fp32_top1 > 0.95
    assert ptq_top1 < fp32_top1 - 0.2, "the outlier channel should hurt per-tensor activation PTQ"
    assert qat_top1 > ptq_top1 + 0.2, (fp32_top1, ptq_top1, qat_top1)
    assert res.matched_activations == res.total_activations

    # identical conventions: same graph as PTQ, same scheme checks
    q, p = onnx.load(str(res.int8.path)), onnx.load(str(ptq.path))
    assert [n.op_type for n in q.graph.node] == [n.op_type for n in p.graph.node]
    assert check_qdq_scheme(q) == []
    # the exported file computes what QAT trained: torch fake-quant model vs onnxruntime QDQ
    with torch.no_grad():
        torch_logits = res.model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(res.int8.path), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(None, {"input": x})[0]
    assert (torch_logits.argmax(1) == ort_logits.argmax(1)).mean() >= 0.97


def test_conv_bn_is_fused_and_frozen_bn_computes_the_folded_conv():
    torch.manual_seed(0)
    model = SmallNet()
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, 16, 16))  # give BN non-trivial running statistics
    model.eval()
    gm = fuse_for_qat(model)
    fused = [m for m in gm.modules() if isinstance(m, QatConvBn2d)]
    assert len(fused) == 2 and not any(isinstance(m, torch.nn.BatchNorm2d) and m not in [f.bn for f in fused]
                                       for m in gm.modules())
    f = fused[0]
    f.quantize_weight = False
    f.bn_frozen = True
    f.train()
    x = torch.randn(4, 3, 16, 16)
    conv = f.to_float()
    torch.testing.assert_close(f(x), conv(x), rtol=1e-4, atol=1e-5)
    # and it matches the original conv + BN in eval mode (the BN module is shared: back to eval)
    model.eval()
    torch.testing.assert_close(conv(x), model.bn1(model.conv1(x)), rtol=1e-4, atol=1e-5)


def test_activation_grid_matches_onnxruntime():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    for lo, hi in [(-1.0, 3.0), (0.0, 6.0), (-2.5, -0.5), (0.3, 0.9)]:
        scale, zp = act_scale_zero_point(torch.tensor(lo), torch.tensor(hi))
        ort_zp, ort_scale = compute_scale_zp(np.float32(lo), np.float32(hi), np.int8(-128), np.int8(127))
        assert int(zp) == int(ort_zp)
        assert float(scale) == pytest.approx(float(ort_scale), rel=1e-6)
