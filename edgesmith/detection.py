"""Detector stages behind the CLI: train → export ONNX (+ post-process JSON, parity) → manifest;
``eval`` (COCO mAP of a run) and ``detect`` (PNG files with boxes and labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesmith.errors import ConfigError, DataError
from edgesmith.manifest import record_artifact
from trainer.checkpoint import Checkpoint, build_model_from_checkpoint, load_checkpoint
from trainer.config import TrainConfig
from trainer.data.augment import Normalizer
from trainer.data.detection import letterbox, open_detection_dataset, undo_letterbox
from trainer.detection.evaluate import LETTERBOX_PAD, evaluate_detector, letterboxed_batches, to_input
from trainer.detection.export import POSTPROCESS_FILE, export_detector_onnx
from trainer.detection.postprocess import postprocess
from trainer.detection.postprocess_np import PostprocessParams
from trainer.detection.train import postprocess_params, train_detector
from trainer.engine import TrainResult
from trainer.engine.distributed import shutdown_distributed
from trainer.engine.setup import resolve_device

ONNX_FILE = "model.onnx"
PARITY_IMAGES = 16  # real validation images compared between PyTorch and onnxruntime
# Pictures for people: only confident boxes (mAP evaluation keeps down to detection.score_thr, 0.05).
DETECT_SCORE_THR = 0.35


def is_detection_checkpoint(ckpt: Checkpoint) -> bool:
    """True for a checkpoint written by the detector training loop."""
    return ckpt.train_state.get("task") == "detection"


def train_and_export_detector(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                              show_progress: bool = True) -> TrainResult:
    """Train a detector, then (main process, completed run) export ONNX + postprocess.json and the manifest."""
    try:
        result = train_detector(cfg, Path(run_dir), resume=resume, show_progress=show_progress)
        if result.dist.is_main:
            _write_run_files(result)
    finally:
        shutdown_distributed()
    return result


def _parity_images(result: TrainResult, hw: tuple[int, int]) -> torch.Tensor:
    split = result.dataset.val if len(result.dataset.val) else result.dataset.train
    images, _, _ = next(letterboxed_batches(split, hw, PARITY_IMAGES))
    pre = result.preprocessing
    return to_input(images, Normalizer(pre["mean"], pre["std"], torch.device("cpu"), False), torch.device("cpu"))


def _write_run_files(result: TrainResult) -> None:
    from edgesmith.pipeline import finish_run_manifest, run_manifest  # noqa: PLC0415 (pipeline imports this module)

    run_dir = result.run_dir
    cfg = result.config
    manifest = run_manifest(result, "detection")
    if not result.interrupted:
        params = postprocess_params(cfg, len(result.classes))
        report = export_detector_onnx(result.model, run_dir / ONNX_FILE, params,
                                      parity_inputs=_parity_images(result, params.input_hw),
                                      metadata={"classes": result.classes, "preprocessing": result.preprocessing})
        record_artifact(manifest, run_dir, ONNX_FILE, kind="onnx_fp32_detector", opset=17,
                        parity=report.to_dict() if report else None)
        record_artifact(manifest, run_dir, POSTPROCESS_FILE, kind="detection_postprocess")
    finish_run_manifest(manifest, result)


@dataclass
class DetectionEvalReport:
    metrics: dict[str, Any]
    classes: list[str]
    model_desc: str
    data_desc: str

    def to_dict(self) -> dict:
        return {"model": self.model_desc, "data": self.data_desc, **self.metrics}


def shipped_model(ckpt: Checkpoint) -> torch.nn.Module:
    """The run's model as exported to model.onnx: its EMA weights when the run kept an EMA."""
    model = build_model_from_checkpoint(ckpt)
    ema = {k[len("ema."):]: v for k, v in ckpt.extra_tensors.items() if k.startswith("ema.")}
    if ema:
        model.load_state_dict(ema, strict=True)
    return model.eval()


def _run_params(ckpt: Checkpoint, score_thr: float | None = None) -> PostprocessParams:
    d = dict(ckpt.train_state["postprocess"])
    if score_thr is not None:
        if not 0 <= score_thr < 1:
            raise ConfigError(f"--score-thr must be in [0, 1), got {score_thr}")
        d["score_thr"] = score_thr
    return PostprocessParams.from_dict(d)


def _open_run_data(st: dict, data: str | None):
    """The detection dataset a run was trained on (or ``data``), with the run's val carve; classes checked."""
    cfg = st.get("config", {})
    path = data if data is not None else cfg.get("data", {}).get("path")
    ds = open_detection_dataset(path, val_fraction=cfg.get("data", {}).get("val_fraction", 0.1),
                                seed=cfg.get("seed", 0))
    if list(ds.classes) != list(st["classes"]):
        raise DataError(f"the dataset's classes {ds.classes[:10]} do not match the model's {st['classes'][:10]}; "
                        "evaluate on data with the same class names")
    return ds


def evaluate_detection_run(run_dir: str | Path, *, data: str | None = None, split: str = "val",
                           device: str = "auto", batch_size: int = 16) -> DetectionEvalReport:
    """COCO mAP of a detector run's checkpoint on ``split`` of ``data`` (default: its training data)."""
    ckpt = load_checkpoint(run_dir, load_optimizer=False)
    st = ckpt.train_state
    ds = _open_run_data(st, data)
    dev = resolve_device(device)
    model = shipped_model(ckpt).to(dev)
    metrics = evaluate_detector(model, getattr(ds, split), list(ds.classes), _run_params(ckpt),
                                st["preprocessing"], dev, batch_size)
    return DetectionEvalReport(metrics, list(ds.classes), f"{ckpt.model_name} (PyTorch, {run_dir})",
                               f"{ds.source} [{split}]")


def evaluate_detection_onnx(run_dir: str | Path, onnx_path: str | Path, *, data: str | None = None,
                            split: str = "val", batch_size: int = 16) -> DetectionEvalReport:
    """COCO mAP of an ONNX file of a detector run (model.onnx or a variant) in onnxruntime.

    The network runs in onnxruntime (INT8 / FP16 as the file says); post-processing stays in float,
    exactly as for the run's PyTorch evaluation.
    """
    from trainer.detection.evaluate import score_predictions  # noqa: PLC0415

    preds, samples, classes, source = predict_detection_onnx(run_dir, onnx_path, data=data, split=split,
                                                             batch_size=batch_size)
    metrics = score_predictions(preds, samples, classes)
    metrics["num_images"] = len(samples)
    return DetectionEvalReport(metrics, classes, f"{onnx_path} (onnxruntime)", source)


def predict_detection_onnx(run_dir: str | Path, onnx_path: str | Path, *, data: str | None = None,
                           split: str = "val", batch_size: int = 16) -> tuple[list, list, list[str], str]:
    """Per-image detections of an ONNX file of a detector run on one split, in onnxruntime.

    Returns (predictions, ground-truth samples, class names, data description); score any subset
    with ``trainer.detection.evaluate.score_predictions`` (e.g. a paired bootstrap over images).
    """
    import onnxruntime as ort  # noqa: PLC0415

    from trainer.detection.evaluate import predict_split  # noqa: PLC0415

    ckpt = load_checkpoint(run_dir, load_optimizer=False)
    st = ckpt.train_state
    ds = _open_run_data(st, data)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor):
        return tuple(torch.from_numpy(o) for o in sess.run(None, {name: x.cpu().numpy()}))

    preds, samples = predict_split(torch.nn.Identity(), getattr(ds, split), _run_params(ckpt), st["preprocessing"],
                                   torch.device("cpu"), batch_size, run=run)
    return preds, samples, list(ds.classes), f"{ds.source} [{split}]"


def calibration_images(run_dir: str | Path, n: int) -> tuple[np.ndarray, str]:
    """Up to ``n`` letterboxed training images (uint8 NHWC) of a detector run, for INT8 calibration."""
    ckpt = load_checkpoint(run_dir, load_optimizer=False)
    st = ckpt.train_state
    ds = _open_run_data(st, None)
    images = []
    for batch, _infos, _samples in letterboxed_batches(ds.train, _run_params(ckpt).input_hw, 16):
        images.append(batch)
        if sum(len(b) for b in images) >= n:
            break
    return np.concatenate(images)[:n], f"{ds.source} [train, letterboxed]"


def detect(run_dir: str | Path, images: list[str | Path], out_dir: str | Path, *, score_thr: float | None = None,
           device: str = "auto") -> list[Path]:
    """Run a detector run on image files; write ``<out_dir>/<stem>.png`` with boxes and labels drawn.

    ``score_thr`` defaults to :data:`DETECT_SCORE_THR` (0.35).
    """
    from PIL import Image

    ckpt = load_checkpoint(run_dir, load_optimizer=False)
    if not is_detection_checkpoint(ckpt):
        raise ConfigError(f"{run_dir} is a '{ckpt.model_name}' classifier run; `edgesmith detect` needs a detector run "
                          "(trained with --model nanodet-m, nanodet-plus-m or nanodet-mcu)")
    st = ckpt.train_state
    params = _run_params(ckpt, DETECT_SCORE_THR if score_thr is None else score_thr)
    pre, classes = st["preprocessing"], st["classes"]
    dev = resolve_device(device)
    model = shipped_model(ckpt).to(dev)
    normalizer = Normalizer(pre["mean"], pre["std"], dev, channels_last=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in map(Path, images):
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {path}: {e}; pass JPEG/PNG/BMP image files") from None
        boxed, _, info = letterbox(rgb, None, params.input_hw, LETTERBOX_PAD)
        with torch.no_grad():
            outputs = model(to_input(boxed[None], normalizer, dev))
        (boxes, scores, labels), = postprocess(outputs, params)
        boxes = undo_letterbox(boxes.cpu().numpy(), info)
        target = out_dir / f"{path.stem}.png"
        draw_detections(rgb, boxes, scores.cpu().numpy(), labels.cpu().numpy(), classes).save(target)
        written.append(target)
    return written


_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128)]


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    classes: list[str]):
    """A PIL image with each box outlined in its class colour and labelled ``class score``."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 200))
    for box, score, label in zip(boxes, scores, labels):
        colour = _PALETTE[int(label) % len(_PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{classes[int(label)]} {float(score):.2f}"
        tx, ty = x1, max(0.0, y1 - 12)
        left, top, right, bottom = draw.textbbox((tx, ty), text)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=colour)
        draw.text((tx, ty), text, fill=(255, 255, 255))
    return canvas
