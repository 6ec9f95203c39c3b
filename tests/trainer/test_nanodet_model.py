"""NanoDet models: output shapes per named config, channel shuffle, the MCU channel split, ONNX ops."""

import pytest
import torch

from edgesmith.errors import ConfigError
from trainer.detection.export import MCU_OPS, detection_parity, export_detector_onnx, onnx_op_types
from trainer.detection.postprocess_np import PostprocessParams
from trainer.models import build_model, model_names
from trainer.models.nanodet import DETECTOR_SPECS, detector_spec
from trainer.models.nanodet.shufflenet import ShuffleUnit, channel_shuffle


@pytest.fixture(autouse=True)
def one_thread():
    # On a busy 2-core machine two OpenMP threads spin-wait on each other; one is several times faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,width,side", [("nanodet-m", 0.5, 64), ("nanodet-m", 1.0, 64),
                                             ("nanodet-plus-m", 1.0, 128), ("nanodet-plus-m", 0.5, 96), ("nanodet-mcu", 0.5, 64),
                                             ("nanodet-m", 1.5, 64)])
def test_head_outputs_per_level(name, width, side):
    model = build_model(name, num_classes=3, width_mult=width).eval()
    spec = detector_spec(name)
    with torch.no_grad():
        outs = model(torch.randn(2, 3, side, side))
    assert len(outs) == 2 * len(spec.strides)
    for level, s in enumerate(spec.strides):
        cls, reg = outs[2 * level], outs[2 * level + 1]
        n = -(-side // s)
        assert cls.shape == (2, 3, n, n)
        assert reg.shape == (2, 4 * (spec.reg_max + 1), n, n)
    assert model.output_names()[:2] == [f"cls_s{spec.strides[0]}", f"reg_s{spec.strides[0]}"]


def test_registry_lists_detectors_and_classifier():
    names = model_names()
    for n in ("nanodet-m", "nanodet-plus-m", "nanodet-mcu", "shufflenetv2", "resnet8"):
        assert n in names
    assert DETECTOR_SPECS["nanodet-plus-m"].strides == (8, 16, 32, 64)
    assert DETECTOR_SPECS["nanodet-plus-m"].assigner == "dynamic"
    assert DETECTOR_SPECS["nanodet-m"].assigner == "atss"
    assert DETECTOR_SPECS["nanodet-mcu"].input_size == 160
    # one-class detectors are fine (background is implicit), classifiers need two classes
    build_model("nanodet-m", num_classes=1, width_mult=0.5)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("shufflenetv2", num_classes=1)


def test_unsupported_width_is_a_clear_error():
    with pytest.raises(ConfigError, match="choose width_mult from: 0.5, 1.0, 1.5"):
        build_model("nanodet-m", num_classes=2, width_mult=0.75)


def test_param_counts_of_named_configs():
    # ShuffleNetV2 1.0x + Ghost-PAN (96 ch) + 2-conv GFL head, 80 classes: ~1.13 M
    # (NanoDet-m with its plain PAN publishes 0.95 M; NanoDet-Plus-m 1.17 M).
    assert 1.0e6 < _params(build_model("nanodet-m", num_classes=80)) < 1.25e6
    assert 1.1e6 < _params(build_model("nanodet-plus-m", num_classes=80)) < 1.3e6
    assert _params(build_model("nanodet-mcu", num_classes=80, width_mult=0.5)) < 0.35e6


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_selection_conv_split_equals_slice_split():
    torch.manual_seed(0)
    sliced = ShuffleUnit(16, 16, 1, "relu6", split="slice").eval()
    conv = ShuffleUnit(16, 16, 1, "relu6", split="conv").eval()
    missing, unexpected = conv.load_state_dict(sliced.state_dict(), strict=False)
    assert unexpected == [] and set(missing) == {"keep.weight", "take.weight"}
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), sliced(x), rtol=0, atol=1e-6)


def _onnx_ops(model, side, tmp_path):
    path = tmp_path / f"{model.spec.name}.onnx"
    params = PostprocessParams(model.num_classes, model.strides, model.reg_max, (side, side))
    export_detector_onnx(model, path, params)  # no parity images: graph only
    return onnx_op_types(path)


def test_mcu_config_exports_only_mcu_ops(tmp_path):
    ops = _onnx_ops(build_model("nanodet-mcu", num_classes=2, width_mult=0.5), 64, tmp_path)
    assert ops <= MCU_OPS, f"ops outside the MCU set: {sorted(ops - MCU_OPS)}"
    assert {"Conv", "Reshape", "Transpose", "Concat", "Resize", "Clip"} <= ops
    # the default configs use LeakyReLU and slice the channels, which is why the MCU config exists
    default_ops = _onnx_ops(build_model("nanodet-m", num_classes=2, width_mult=0.5), 64, tmp_path)
    assert "LeakyRelu" in default_ops and default_ops & {"Split", "Slice"}


def test_detection_parity_passes_for_the_graph_and_fails_for_other_weights(tmp_path):
    torch.manual_seed(0)
    model = build_model("nanodet-mcu", num_classes=2, width_mult=0.5).eval()
    other = build_model("nanodet-mcu", num_classes=2, width_mult=0.5).eval()
    # An untrained head scores every prior ~0.01 (near-ties that float noise may reorder); spread the
    # scores as training does, so the comparison is about the graph and not about ties.
    with torch.no_grad():
        for conv in model.head.cls_out:
            conv.weight.normal_(0, 1.0)
    params = PostprocessParams(2, model.strides, model.reg_max, (64, 64), score_thr=0.0, max_det=20)
    images = torch.randn(3, 3, 64, 64)
    report = export_detector_onnx(model, tmp_path / "m.onnx", params, parity_inputs=images)
    assert report.passed and report.num_detections > 30 and report.max_box_diff <= 1e-3
    bad = detection_parity(other, (tmp_path / "m.onnx").read_bytes(), images, params, 1e-3)
    assert not bad.passed and bad.problem
