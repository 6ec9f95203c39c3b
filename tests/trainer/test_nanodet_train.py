"""Detector training end to end: overfitting 8 synthetic images, exact resume, backbone init, ONNX parity."""

import json

import numpy as np
import pytest
import torch

from edgesmith.detection import train_and_export_detector
from edgesmith.errors import CheckpointError
from trainer.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from trainer.config import config_from_dict
from trainer.data.detection import open_detection_dataset
from trainer.detection.backbone_init import init_backbone_from_run
from trainer.detection.evaluate import evaluate_detector, letterboxed_batches, predict_split
from trainer.detection.export import POSTPROCESS_FILE, run_onnx
from trainer.detection.postprocess_np import PostprocessParams, postprocess_np, undo_letterbox_np
from trainer.detection.synthetic import write_synthetic_voc
from trainer.detection.train import train_detector
from trainer.export import _session
from trainer.models import build_model


@pytest.fixture
def one_thread():
    # On a busy 2-core machine two OpenMP threads spin-wait on each other; one is several times faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(data, **over):
    cfg = {
        "model": {"name": "nanodet-mcu", "width_mult": 0.5},
        "data": {"path": str(data), "image_size": [128, 128], "num_workers": 0},
        "epochs": 70, "batch_size": 8, "seed": 0, "log_every": 5, "device": "cpu",
        "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
        "schedule": {"name": "cosine", "warmup_epochs": 5},
        "detection": {"eval_every": 1000, "augment": {"flip": 0.5, "scale": [1.0, 1.0], "translate": 0.0,
                                                      "hsv": [0.0, 0.0, 0.0]}},
    }
    for key, value in over.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return config_from_dict(cfg)


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("data")
    data = write_synthetic_voc(root / "voc", n=9, size=128, seed=1, val=1)  # 8 train + 1 val
    run_dir = root / "run"
    result = train_and_export_detector(_cfg(data), run_dir, show_progress=False)
    torch.set_num_threads(before)
    return data, run_dir, result


def test_overfits_eight_synthetic_images(overfit_run, one_thread):
    data, run_dir, result = overfit_run
    ds = open_detection_dataset(data)
    assert len(ds.train) == 8 and ds.classes == ["box", "disc"]
    ckpt = load_checkpoint(run_dir)
    model = build_model_from_checkpoint(ckpt)
    params = PostprocessParams.from_dict(ckpt.train_state["postprocess"])
    metrics = evaluate_detector(model, ds.train, ds.classes, params, ckpt.train_state["preprocessing"],
                                torch.device("cpu"))
    assert metrics["num_images"] == 8
    assert metrics["map50"] > 0.9, metrics
    assert result.metrics["epochs_completed"] == 70 and "map50" in result.metrics["val"]


def test_export_writes_raw_outputs_postprocess_json_and_parity(overfit_run, one_thread):
    data, run_dir, _ = overfit_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    parity = manifest["artifacts"]["model.onnx"]["parity"]
    assert parity["passed"] and parity["num_detections"] > 0 and parity["max_box_diff"] <= 1e-3
    info = json.loads((run_dir / POSTPROCESS_FILE).read_text())
    assert info["outputs"] == ["cls_s8", "reg_s8", "cls_s16", "reg_s16", "cls_s32", "reg_s32"]
    assert info["classes"] == ["box", "disc"] and info["input_hw"] == [128, 128]

    # onnxruntime + numpy post-processing on the 8 real training images == PyTorch detections
    ckpt = load_checkpoint(run_dir)
    model = build_model_from_checkpoint(ckpt)
    params = PostprocessParams.from_dict(info)
    ds = open_detection_dataset(data)
    torch_preds, _ = predict_split(model, ds.train, params, info["preprocessing"], torch.device("cpu"))
    session = _session(str(run_dir / "model.onnx"))
    mean = np.array(info["preprocessing"]["mean"], np.float32)[None, :, None, None]
    std = np.array(info["preprocessing"]["std"], np.float32)[None, :, None, None]
    onnx_preds = []
    for images, infos, _ in letterboxed_batches(ds.train, params.input_hw, 3):  # batch 3: dynamic batch axis
        x = (images.transpose(0, 3, 1, 2).astype(np.float32) / 255 - mean) / std
        for (b, s, lab), lb in zip(postprocess_np(run_onnx(session, x), params), infos):
            onnx_preds.append((undo_letterbox_np(b, lb.scale, lb.pad_x, lb.pad_y, lb.orig_hw), s, lab))
    assert sum(len(p[2]) for p in onnx_preds) >= 8
    for (tb, ts, tl), (ob, os_, ol) in zip(torch_preds, onnx_preds):
        assert tl.tolist() == ol.tolist()
        np.testing.assert_allclose(ob, tb, atol=1e-2)  # original-image pixels (input pixels / scale ~1)
        np.testing.assert_allclose(os_, ts, atol=1e-4)


def test_interrupted_run_resumes_exactly(tmp_path, one_thread):
    data = write_synthetic_voc(tmp_path / "voc", n=6, size=64, seed=2)
    cfg = _cfg(data, **{"epochs": 3, "batch_size": 2, "data.image_size": [64, 64], "model.name": "nanodet-plus-m",
                        "detection.augment.scale": [0.8, 1.2], "detection.augment.hsv": [0.01, 0.3, 0.3]})
    full = train_detector(cfg, tmp_path / "full", show_progress=False)

    def stop_at_3(step, model, stop):
        if step == 3:
            stop.request("test")

    part = train_detector(cfg, tmp_path / "part", on_step=stop_at_3, show_progress=False)
    assert part.interrupted and part.metrics["global_step"] == 3
    resumed = train_detector(cfg, tmp_path / "part", resume=True, show_progress=False)
    assert not resumed.interrupted and resumed.metrics["global_step"] == full.metrics["global_step"] == 6
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=k)


def test_init_backbone_from_a_classifier_run(tmp_path):
    classifier = build_model("shufflenetv2", num_classes=10, width_mult=0.5)
    save_checkpoint(tmp_path / "cls", model_name="shufflenetv2",
                    model_args={"num_classes": 10, "width_mult": 0.5, "in_channels": 3},
                    state_dict=classifier.state_dict(), train_state={})
    detector = build_model("nanodet-m", num_classes=2, width_mult=0.5)
    count = init_backbone_from_run(detector, tmp_path / "cls")
    assert count == len(detector.backbone.state_dict())
    for k, v in detector.backbone.state_dict().items():
        torch.testing.assert_close(v, classifier.backbone.state_dict()[k], msg=k)

    wide = build_model("nanodet-m", num_classes=2, width_mult=1.0)
    with pytest.raises(CheckpointError, match=r"width_mult 0.5\) does not fit this detector \(width_mult 1.0\)"):
        init_backbone_from_run(wide, tmp_path / "cls")
    resnet = build_model("resnet8", num_classes=10)
    save_checkpoint(tmp_path / "resnet", model_name="resnet8",
                    model_args={"num_classes": 10, "width_mult": 1.0, "in_channels": 3},
                    state_dict=resnet.state_dict(), train_state={})
    with pytest.raises(CheckpointError, match="without ShuffleNetV2 backbone"):
        init_backbone_from_run(detector, tmp_path / "resnet")


@pytest.mark.parametrize("over, message", [
    ({"data": {"image_size": [300, 320]}}, "multiple of 32"),
    ({"detection": {"assigner": "simota"}}, "choose from: auto, atss, dynamic"),
    ({"detection": {"augment": {"flip": 1.5}}}, "detection.augment.flip"),
    ({"detection": {"augment": {"mosaics": 0.5}}}, "unknown config key 'detection.augment.mosaics'"),
    ({"detection": {"iou_thr": 0}}, "detection.iou_thr"),
])
def test_detection_config_is_strict(over, message):
    from edgesmith.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        config_from_dict({"model": {"name": "nanodet-m"}, **over})
