"""Calibration data: preprocessed float batches for a model, from a run's dataset or an image folder.

A calibration set is a list of float32 batches shaped exactly like the model input, made with the
same preprocessing the model was trained with. Two sources:

* an EdgeSmith run: a seeded sample of the *training* split (the validation split stays untouched
  for measuring the quantized model), normalised with the run's mean/std;
* any folder of images (``--calib-data``) with a :class:`PreprocessSpec` — for a user's own ONNX
  model: size, mean/std, layout, colour order, pixel scale.

Pure numpy + PIL (no torch), so it also serves onnxruntime-only users.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx

from edgesmith.errors import ConfigError, DataError
from trainer.data import ArraySplit, Dataset
from trainer.data.imagefolder import IMAGE_SUFFIXES, decode_images

DEFAULT_CALIB_SIZE = 512
CALIB_BATCH = 32


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    """How raw RGB images become model input: ``x = (pixel * scale - mean) / std``, resized to ``size``."""

    size: tuple[int, int]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    colour_order: str = "RGB"
    scale: float = 1 / 255

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise ConfigError(f"layout must be NCHW or NHWC, got {self.layout!r}")
        if self.colour_order not in ("RGB", "BGR"):
            raise ConfigError(f"colour order must be RGB or BGR, got {self.colour_order!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ConfigError(f"input size must be two positive integers H,W, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean and std need 3 values each (std > 0), got mean={self.mean} std={self.std}")

    @classmethod
    def from_run(cls, preprocessing: dict) -> "PreprocessSpec":
        """The spec recorded by ``edgesmith train`` in the checkpoint / manifest."""
        return cls(size=tuple(preprocessing["image_size"]), mean=tuple(preprocessing["mean"]),
                   std=tuple(preprocessing["std"]), layout=preprocessing.get("layout", "NCHW"),
                   colour_order=preprocessing.get("colour_order", "RGB"), scale=preprocessing.get("scale", 1 / 255))

    def apply(self, images_uint8_nhwc: np.ndarray) -> np.ndarray:
        """uint8 [N,H,W,3] RGB -> float32 model input in this spec's layout and colour order."""
        x = images_uint8_nhwc.astype(np.float32) * np.float32(self.scale)
        if self.colour_order == "BGR":
            x = x[..., ::-1]
            mean, std = self.mean[::-1], self.std[::-1]
        else:
            mean, std = self.mean, self.std
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)

    def to_dict(self) -> dict:
        return {"image_size": list(self.size), "mean": list(self.mean), "std": list(self.std),
                "layout": self.layout, "colour_order": self.colour_order, "scale": self.scale}


@dataclasses.dataclass
class CalibrationSet:
    """Preprocessed batches plus where they came from (for the manifest)."""

    batches: list[np.ndarray]
    source: str
    spec: PreprocessSpec

    @property
    def num_images(self) -> int:
        return sum(len(b) for b in self.batches)

    def stacked(self) -> np.ndarray:
        return np.concatenate(self.batches)


def sample_split(ds: Dataset, n: int, seed: int, split: str = "train") -> np.ndarray:
    """A seeded random sample of ``n`` images (uint8 NHWC) from a dataset split."""
    part = getattr(ds, split)
    total = len(part)
    if total == 0:
        raise DataError(f"the {split} split of {ds.source} is empty; calibration needs images")
    idx = np.sort(np.random.default_rng(seed).permutation(total)[: min(n, total)])
    if isinstance(part, ArraySplit):
        return part.images[idx]
    paths = [part.paths[i] for i in idx]
    return decode_images([Path(p).read_bytes() for p in paths], paths, tuple(ds.image_size))


def folder_images(path: str | Path, size: tuple[int, int], n: int, seed: int) -> tuple[np.ndarray, int]:
    """Up to ``n`` images found under ``path`` (recursively), resized to ``size``: uint8 NHWC, and how many existed."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"calibration data {root} does not exist; pass a folder of images with --calib-data")
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}; calibration needs at least one image")
    pick = np.sort(np.random.default_rng(seed).permutation(len(files))[:n])
    chosen = [files[i] for i in pick]
    return decode_images([f.read_bytes() for f in chosen], [str(f) for f in chosen], tuple(size)), len(files)


#: calibration runs keep every intermediate activation of a batch in memory: size batches by input size
CALIB_BATCH_ELEMENTS = 1 << 21


def batches_of(x: np.ndarray, batch: int | None = None) -> list[np.ndarray]:
    """Split preprocessed images into calibration batches (default: at most 32 images and about
    2 M input values per batch, so a 320x320 detector calibrates in batches of 6)."""
    if batch is None:
        per_image = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
        batch = max(1, min(CALIB_BATCH, CALIB_BATCH_ELEMENTS // max(1, per_image)))
    return [x[i:i + batch] for i in range(0, len(x), batch)]


def model_input(model: onnx.ModelProto | str | Path) -> tuple[str, list[int | None]]:
    """The name and shape (None for symbolic dims) of a single-input ONNX model."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ConfigError(f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                          "EdgeSmith quantizes single-input image models")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def check_batches_fit(batches: Sequence[np.ndarray], dims: list[int | None], where: str) -> None:
    """Calibration batches must match the model input (rank, channels, size): one clear error if not."""
    if not batches or sum(len(b) for b in batches) == 0:
        raise DataError(f"the calibration set from {where} is empty; pass a folder with images (--calib-data) "
                        "or a larger --calib-size")
    got = batches[0].shape
    if len(got) != len(dims) or any(d is not None and i > 0 and d != g for i, (d, g) in enumerate(zip(dims, got))):
        want = "x".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(dims))
        raise DataError(f"calibration images from {where} are shaped {'x'.join(map(str, got))} but the model "
                        f"expects {want}; pass --input-size/--layout matching the model")


def iter_feeds(name: str, batches: Sequence[np.ndarray], fixed_batch: int | None) -> Iterator[dict[str, np.ndarray]]:
    """Feeds for onnxruntime; a model with a fixed batch size gets batches of exactly that size."""
    if not fixed_batch:
        for b in batches:
            yield {name: b}
        return
    x = np.concatenate(batches)
    for i in range(0, len(x) - fixed_batch + 1, fixed_batch):
        yield {name: x[i:i + fixed_batch]}
