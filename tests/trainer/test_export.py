"""ONNX export: clean opset>=17 graph, dynamic batch, parity against PyTorch, atomic and clear failures."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgesmith.errors import ExportError
from trainer.export import ParityReport, export_onnx, onnx_logits
from trainer.models import build_model

SHAPE = (3, 32, 32)


def _trained_like(name: str, width_mult: float) -> nn.Module:
    """A model whose BN layers carry non-trivial statistics, as after training.

    Freshly built ResNets zero-init the last BN of each block, which would make every
    residual branch vanish and hide export bugs in it.
    """
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, width_mult=width_mult)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


def _images(n: int, seed: int = 2) -> torch.Tensor:
    return torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,width", [("resnet8", 1.0), ("resnet18", 0.25)])
def test_export_passes_parity_with_dynamic_batch(tmp_path, capfd, name, width):
    model = _trained_like(name, width).train()  # exporting must not flip the caller's mode
    images = _images(8)
    out = tmp_path / "model.onnx"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_onnx(model, out, input_shape=SHAPE, parity_inputs=images)

    assert [str(w.message) for w in caught] == []  # exporter warnings are suppressed
    assert isinstance(report, ParityReport) and report.passed
    assert report.num_images == 8 and report.top1_agreement == 1.0 and report.max_abs_diff <= 1e-3
    assert set(report.to_dict()) == {"max_abs_diff", "top1_agreement", "num_images", "tolerance", "passed"}
    assert model.training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # one file, no external data
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # exporter noise is suppressed

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(SHAPE)
    ops = {n.op_type for n in proto.graph.node}
    # BatchNorm folded into Conv, no Identity plumbing: the graph the INT8 stage expects.
    assert ops <= {"Conv", "Relu", "Add", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Gemm", "MatMul"}
    assert {"Conv", "Add", "Gemm"} <= ops

    model.eval()
    with torch.no_grad():
        expected = model(images[:7]).numpy()
    for batch_size in (1, 7):
        got = onnx_logits(out, images[:7].numpy(), batch_size=batch_size)
        assert got.shape == (7, 10) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised by torch.compile's own imports
def test_export_of_compiled_channels_last_model_leaves_it_untouched(tmp_path):
    model = _trained_like("resnet8", 0.5).to(memory_format=torch.channels_last).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compiled = torch.compile(model)  # not run: export must unwrap _orig_mod, not compile

    report = export_onnx(compiled, tmp_path / "m.onnx", input_shape=SHAPE, parity_inputs=_images(3))

    assert report.passed
    assert model.training and model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats not updated


def test_export_without_parity_inputs_returns_none(tmp_path):
    out = tmp_path / "m.onnx"
    assert export_onnx(_trained_like("resnet8", 0.5), out, input_shape=SHAPE) is None
    assert onnx_logits(out, _images(2).numpy()).shape == (2, 10)


def test_fresh_model_has_no_shared_initializers(tmp_path):
    # Untrained BN folds into identical zero biases, which constant folding would share via Identity.
    torch.manual_seed(0)
    out = tmp_path / "m.onnx"
    export_onnx(build_model("resnet8", num_classes=10), out, input_shape=SHAPE, parity_inputs=_images(2))
    proto = onnx.load(str(out))
    assert "Identity" not in {n.op_type for n in proto.graph.node}
    consumers = [name for n in proto.graph.node for name in n.input if name in {t.name for t in proto.graph.initializer}]
    assert len(consumers) == len(set(consumers)) == len(proto.graph.initializer)


class _TracingDiffers(nn.Module):
    """A forward that changes behaviour while being exported: ONNX and PyTorch disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.net = build_model("resnet8", num_classes=10, width_mult=0.5)

    def forward(self, x):
        logits = self.net(x)
        if torch.onnx.is_in_onnx_export():
            logits = logits + 0.5
        return logits


class _FrozenBatch(nn.Module):
    """Reshapes to the trace batch size: works at batch 2, wrong at any other."""

    def forward(self, x):
        return x.mean(dim=(2, 3)).reshape(2, -1)


def test_parity_failure_raises_and_writes_nothing(tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"max \|logit diff\| 0\.5.*tolerance 0\.001.*was not written"):
        export_onnx(_TracingDiffers(), out, input_shape=SHAPE, parity_inputs=_images(4))
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_the_previous_file(tmp_path):
    out = tmp_path / "model.onnx"
    export_onnx(_trained_like("resnet8", 0.5), out, input_shape=SHAPE)
    before = out.read_bytes()
    with pytest.raises(ExportError):
        export_onnx(_TracingDiffers(), out, input_shape=SHAPE, parity_inputs=_images(4))
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_frozen_batch_axis_is_caught(tmp_path):
    with pytest.raises(ExportError, match="batch"):
        export_onnx(_FrozenBatch(), tmp_path / "m.onnx", input_shape=SHAPE, parity_inputs=_images(4))
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_clear_errors(tmp_path):
    model = _trained_like("resnet8", 0.5)
    with pytest.raises(ExportError, match="opset 13 is too old.*>= 17"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=SHAPE, opset=13)
    with pytest.raises(ExportError, match=r"parity_inputs must be a non-empty \(N, 3, 32, 32\).*\(4, 1, 32, 32\)"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=SHAPE, parity_inputs=torch.zeros(4, 1, 32, 32))
    assert list(tmp_path.iterdir()) == []


def test_onnx_logits_checks_input_shape(tmp_path):
    out = tmp_path / "m.onnx"
    export_onnx(_trained_like("resnet8", 0.5), out, input_shape=SHAPE)
    with pytest.raises(ExportError, match=r"expects input \(N, 3, 32, 32\), got .*\(5, 1, 32, 32\): channels 1 instead of 3"):
        onnx_logits(out, np.zeros((5, 1, 32, 32), np.float32))
    with pytest.raises(ExportError, match=r"height 28 instead of 32"):
        onnx_logits(out, np.zeros((5, 3, 28, 32), np.float32))
    with pytest.raises(ExportError, match=r"expects 4-D input.*got 3-D"):
        onnx_logits(out, np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ExportError, match="float images.*uint8"):
        onnx_logits(out, np.zeros((1, 3, 32, 32), np.uint8))
    with pytest.raises(ExportError, match="no ONNX model at"):
        onnx_logits(tmp_path / "missing.onnx", np.zeros((1, 3, 32, 32), np.float32))
