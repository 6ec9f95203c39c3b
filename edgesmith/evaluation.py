"""``edgesmith eval``: top-1 and per-class accuracy of a run's PyTorch model or of any ONNX classifier."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from edgesmith.errors import ConfigError, DataError
from trainer.checkpoint import build_model_from_checkpoint, load_checkpoint
from trainer.data import Dataset, open_dataset
from trainer.data.augment import Normalizer
from trainer.data.loader import make_loader
from trainer.engine.evaluate import EvalResult, evaluate_model, result_from_logits
from trainer.engine.setup import resolve_device
from trainer.export import OnnxClassifier


@dataclass
class EvalReport:
    result: EvalResult
    classes: list[str]
    model_desc: str
    data_desc: str

    def to_dict(self) -> dict:
        return {"model": self.model_desc, "data": self.data_desc, **self.result.to_dict(self.classes)}


def open_eval_data(data: str | None, run_cfg: dict | None) -> Dataset:
    """The dataset to evaluate on: ``data`` if given, else the one in the run config (same val carve)."""
    dcfg = (run_cfg or {}).get("data", {})
    path = data if data is not None else dcfg.get("path")
    if path is None:
        raise ConfigError("no dataset given: pass --data PATH")
    image_size = dcfg.get("image_size")
    return open_dataset(
        path,
        val_fraction=dcfg.get("val_fraction", 0.1),
        seed=(run_cfg or {}).get("seed", 0),
        cache_dir=dcfg.get("cache_dir"),
        image_size=tuple(image_size) if image_size else None,
    )


def _check_classes(run_classes: list[str], ds: Dataset) -> None:
    if list(ds.classes) != list(run_classes):
        raise DataError(
            f"the dataset's classes do not match the model's: model has {len(run_classes)} "
            f"({', '.join(run_classes[:10])}{', ...' if len(run_classes) > 10 else ''}), data has {len(ds.classes)} "
            f"({', '.join(ds.classes[:10])}{', ...' if len(ds.classes) > 10 else ''}); evaluate on data with the same class folders"
        )


def _uint8_batches(ds: Dataset, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    loader = make_loader(getattr(ds, split), batch_size=batch_size, train=False, device=torch.device("cpu"), seed=0,
                         image_size=tuple(ds.image_size), num_workers=0)
    for _, x, y in loader.iterate(0):
        yield x, y


def evaluate_run(run_dir: str | Path, *, data: str | None = None, split: str = "val", batch_size: int = 512,
                 device: str = "auto") -> EvalReport:
    """Evaluate the run's checkpoint (PyTorch) on ``split`` of ``data`` (default: the data it was trained on)."""
    ckpt = load_checkpoint(run_dir)
    st = ckpt.train_state
    ds = open_eval_data(data, st.get("config"))
    _check_classes(st["classes"], ds)
    dev = resolve_device(device)
    model = build_model_from_checkpoint(ckpt).to(dev)
    pre = st["preprocessing"]
    loader = make_loader(getattr(ds, split), batch_size=batch_size, train=False, device=dev, seed=0,
                         image_size=tuple(ds.image_size), num_workers=0)
    result = evaluate_model(model, loader, Normalizer(pre["mean"], pre["std"], dev, False), len(ds.classes), dev)
    return EvalReport(result, list(ds.classes), f"{ckpt.model_name} (PyTorch, {run_dir})", f"{ds.source} [{split}]")


def evaluate_onnx(onnx_path: str | Path, *, run_dir: str | Path | None = None, data: str | None = None,
                  split: str = "val", batch_size: int = 512, mean: list[float] | None = None,
                  std: list[float] | None = None) -> EvalReport:
    """Evaluate any ONNX classifier in onnxruntime; preprocessing comes from the run or from ``mean``/``std``."""
    run_cfg, classes, pre = None, None, None
    if run_dir is not None:
        st = load_checkpoint(run_dir).train_state
        run_cfg, classes, pre = st.get("config"), st["classes"], st["preprocessing"]
    ds = open_eval_data(data, run_cfg)
    if classes is not None:
        _check_classes(classes, ds)
    mean = mean or (pre["mean"] if pre else [0.0, 0.0, 0.0])
    std = std or (pre["std"] if pre else [1.0, 1.0, 1.0])
    normalize = Normalizer(mean, std, torch.device("cpu"), channels_last=False)
    classifier = OnnxClassifier(onnx_path)
    logits, labels = [], []
    for x, y in _uint8_batches(ds, split, batch_size):
        logits.append(classifier.logits(normalize(x).contiguous().numpy(), batch_size=batch_size))
        labels.append(y.numpy())
    all_logits = np.concatenate(logits)
    if all_logits.shape[1] != len(ds.classes):
        raise DataError(
            f"{onnx_path} outputs {all_logits.shape[1]} classes but the dataset has {len(ds.classes)}; "
            "evaluate it on data with the classes it was trained on"
        )
    result = result_from_logits(all_logits, np.concatenate(labels), len(ds.classes))
    return EvalReport(result, list(ds.classes), f"{onnx_path} (onnxruntime)", f"{ds.source} [{split}]")
