"""Tiny PTQ'd nanodet-mcu detectors for the firmware DETECT tests (cached per test session).

:func:`tiny_detector` builds the real ``nanodet-mcu`` architecture (width 0.5) at a small input,
gives its output convolutions larger random weights than the focal-loss initialisation (so the
untrained network has many candidates above the score threshold, overlapping boxes and more
survivors than ``max_det``), exports it with ``postprocess.json``, quantizes it with
quantize.ptq (the same PTQ as ``edgesmith quantize``) and imports the QDQ ONNX as an IntGraph.
Two seeds give the same structure with other weights and other output quantization: a weight
blob update.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from conftest import session_tmpdir
import numpy as np

WORK = session_tmpdir("es_detect_models_")


@dataclasses.dataclass(frozen=True)
class TinyDetector:
    graph: object  # IntGraph, float edges stripped (what the firmware runs)
    params: object  # trainer PostprocessParams
    postprocess: dict  # postprocess.json contents
    x: np.ndarray  # one int8 NHWC input


def detector_params(hw: tuple[int, int], num_classes: int, **overrides):
    from trainer.detection.postprocess_np import PostprocessParams

    base = dict(num_classes=num_classes, strides=(8, 16, 32), reg_max=7, input_hw=hw, score_thr=0.3, iou_thr=0.5,
                max_det=60, pre_nms_topk=150)
    base.update(overrides)
    return PostprocessParams(**base)


@functools.lru_cache(maxsize=None)
def tiny_detector(seed: int = 0, hw: tuple[int, int] = (64, 64), num_classes: int = 3,
                  head_std: float = 1.0, width_mult: float = 0.5, **params) -> TinyDetector:
    """A PTQ'd nanodet-mcu with lively random heads; ``params`` override :func:`detector_params`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: one thread is much faster than two
    try:
        return _build(torch, seed, hw, num_classes, head_std, width_mult, params)
    finally:
        torch.set_num_threads(threads)


def _build(torch, seed, hw, num_classes, head_std, width_mult, overrides) -> TinyDetector:
    from firmware_export.c_emitter import strip_float_edges
    from firmware_export.export import load_model
    from quantize.ptq import quantize_int8
    from trainer.detection.export import export_detector_onnx
    from trainer.models import build_model

    torch.manual_seed(seed)
    model = build_model("nanodet-mcu", num_classes=num_classes, width_mult=width_mult)
    with torch.no_grad():
        # batch-norm statistics of structured random images: unit-variance features that vary
        # across the image (fresh running stats leave an untrained tower nearly constant)
        model.train()
        for _ in range(8):
            model(_blobs_images(torch, 4, hw))
        model.eval()
        for conv in model.head.cls_out:
            conv.weight.normal_(0.0, head_std)
            conv.bias.normal_(-0.5, 0.5)
        bins = torch.arange(model.reg_max + 1, dtype=torch.float32).repeat(4)
        for conv in model.head.reg_out:  # short sides: boxes about a stride wide, many survive NMS
            conv.weight.normal_(0.0, head_std)
            conv.bias.copy_(-0.8 * bins + 0.5 * torch.randn_like(bins))
    params = detector_params(hw, num_classes, **overrides)
    tag = "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
    folder = WORK / f"det-{seed}-{hw[0]}x{hw[1]}-{num_classes}-{width_mult}{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    export_detector_onnx(model, folder / "model.onnx", params)
    rng = np.random.default_rng(seed)
    images = _blobs_images(torch, 5, hw).numpy()
    feeds = [{"input": images[i:i + 1]} for i in range(4)]
    quantize_int8(folder / "model.onnx", folder / "int8.onnx", feeds)
    graph = strip_float_edges(load_model(folder / "int8.onnx"))
    t = graph.tensor(graph.inputs[0])
    q = np.round(images[4:5].transpose(0, 2, 3, 1) / t.per_tensor_scale()) + t.per_tensor_zero_point()
    x = np.clip(q, -128, 127).astype(np.int8)
    return TinyDetector(graph, params, params.to_dict(), x)


def _blobs_images(torch, n: int, hw: tuple[int, int]):
    """Smooth random images (bright rectangles on noise), normalized like ImageNet inputs."""
    x = torch.randn(n, 3, *hw) * 0.3
    for i in range(n):
        for _ in range(3):
            y0, x0 = (int(v) for v in torch.randint(0, hw[0] - 8, (2,)))
            size = int(torch.randint(6, max(7, hw[0] // 2), (1,)))
            x[i, :, y0:y0 + size, x0:x0 + size] += torch.randn(3, 1, 1) * 2
    return x


def export_detector(det: TinyDetector, out_dir: Path, board: str = "host") -> Path:
    """C sources (with es_detect) + weights.bin of ``det`` for ``board``."""
    from firmware_export.export import export_model
    from targets.boards import get_board

    profile = get_board(board).to_dict()
    profile.pop("toolchain")  # skip export_model's code-size compile: the firmware build compiles it
    export_model(det.graph, out_dir, profile, formats=["c", "blob"], postprocess=det.postprocess)
    return out_dir
