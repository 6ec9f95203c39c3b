"""Stages that span packages: train → export ONNX (with parity) → manifest.

The CLI calls these; so can Python users. Each stage writes its files into the
run directory and records them (sha256, metrics) in ``manifest.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesmith.manifest import load_manifest, new_manifest, now_iso, record_artifact, write_manifest
from trainer.checkpoint import CHECKPOINT_FILE, OPTIMIZER_FILE
from trainer.config import TrainConfig
from trainer.data import ArraySplit, Dataset
from trainer.data.augment import Normalizer
from trainer.data.loader import make_loader
from trainer.engine import TrainResult, train
from trainer.engine.distributed import shutdown_distributed
from trainer.engine.loop import METRICS_FILE
from trainer.export import export_onnx

ONNX_FILE = "model.onnx"
PARITY_IMAGES = 256  # real validation images run through PyTorch and onnxruntime


def parity_batch(ds: Dataset, preprocessing: dict[str, Any], n: int = PARITY_IMAGES) -> torch.Tensor:
    """The first ``n`` validation images, preprocessed exactly as in training (float NCHW, CPU)."""
    split = ds.val
    if isinstance(split, ArraySplit):
        x = torch.from_numpy(np.ascontiguousarray(split.images[:n])).permute(0, 3, 1, 2)
    else:
        loader = make_loader(split, batch_size=n, train=False, device=torch.device("cpu"), seed=0,
                             image_size=tuple(ds.image_size), num_workers=0)
        _, x, _ = next(loader.iterate(0))
    return Normalizer(preprocessing["mean"], preprocessing["std"], torch.device("cpu"), channels_last=False)(x)


def train_and_export(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                     show_progress: bool = True) -> TrainResult:
    """Train, then (on the main process of a completed run) export ONNX and write the manifest."""
    from trainer.models.nanodet import is_detector

    if is_detector(cfg.model.name):  # detectors export raw head outputs + postprocess.json
        from edgesmith.detection import train_and_export_detector

        return train_and_export_detector(cfg, run_dir, resume=resume, show_progress=show_progress)
    try:
        result = train(cfg, Path(run_dir), resume=resume, show_progress=show_progress)
        if result.dist.is_main:
            _write_run_files(result)
    finally:
        shutdown_distributed()
    return result


def run_manifest(result: TrainResult, task: str) -> dict[str, Any]:
    """The run's manifest with config, model, dataset, training metrics and the training artifacts recorded."""
    run_dir = result.run_dir
    try:
        manifest = load_manifest(run_dir)
    except Exception:
        manifest = new_manifest(result.config.to_dict())
    manifest["config"] = result.config.to_dict()
    manifest["status"] = "interrupted" if result.interrupted else "trained"
    manifest["model"] = {
        "name": result.config.model.name,
        "args": {"num_classes": len(result.classes), "width_mult": result.config.model.width_mult, "in_channels": 3},
        "task": task,
        "classes": result.classes,
        "preprocessing": result.preprocessing,
    }
    ds = result.dataset
    manifest["dataset"] = {"format": ds.format, "source": ds.source, "content_hash": ds.content_hash,
                           "classes": list(ds.classes), "val_is_carved": ds.val_is_carved,
                           "num_train": len(ds.train), "num_val": len(ds.val)}
    manifest["metrics"]["train"] = result.metrics
    if result.profile:
        manifest["metrics"]["profile"] = result.profile
    for name, kind in ((CHECKPOINT_FILE, "checkpoint"), (OPTIMIZER_FILE, "optimizer_state"), (METRICS_FILE, "metrics")):
        if (run_dir / name).exists():
            record_artifact(manifest, run_dir, name, kind=kind)
    return manifest


def finish_run_manifest(manifest: dict[str, Any], result: TrainResult) -> None:
    """Append the training lineage entry and write the manifest atomically."""
    resumed = any(e.get("stage") == "train" for e in manifest["lineage"])
    manifest["lineage"].append({"stage": "train", "time": now_iso(), "resumed": resumed,
                                "interrupted": result.interrupted, "outputs": sorted(manifest["artifacts"])})
    write_manifest(result.run_dir, manifest)


def _write_run_files(result: TrainResult) -> None:
    run_dir = result.run_dir
    manifest = run_manifest(result, "classification")
    ds = result.dataset
    if not result.interrupted:
        c, h, w = 3, *result.preprocessing["image_size"]
        report = export_onnx(result.model, run_dir / ONNX_FILE, input_shape=(c, h, w),
                             parity_inputs=parity_batch(ds, result.preprocessing))
        record_artifact(manifest, run_dir, ONNX_FILE, kind="onnx_fp32", opset=17,
                        parity=report.to_dict() if report else None)
    finish_run_manifest(manifest, result)
