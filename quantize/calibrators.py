"""Activation range calibration: onnxruntime's calibrators plus an MSE calibrator in the same style.

Every method returns onnxruntime ``TensorsData`` (tensor name -> (low, high)), which the QDQ
quantizer then turns into int8 scale / zero point. ``minmax``, ``percentile`` and ``entropy`` are
onnxruntime's own; ``mse`` (below) picks, per tensor, the clipping range that minimises the expected
squared error of int8 quantization — clipping error plus rounding error — over the histogram of the
calibration activations, searching ranges shrunk from the observed min/max.

Batches are fed one ``collect_data`` call at a time: onnxruntime then merges ranges (or histograms)
after each batch, so memory stays bounded by one batch of activations (``calibration.batches_of``
sizes batches by input size).
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from onnxruntime.quantization.calibrate import (
    CalibrationDataReader,
    CalibrationMethod,
    HistogramCalibrater,
    TensorsData,
    create_calibrator,
)

from edgesmith.errors import ConfigError

METHODS = ("minmax", "percentile", "entropy", "mse")
PERCENTILE = 99.999
HIST_BINS = 2048
#: candidate clipping fractions of the observed range searched by the MSE calibrator
MSE_CANDIDATES = np.linspace(0.05, 1.0, 96)
INT8_LEVELS = 255


class _OneBatch(CalibrationDataReader):
    def __init__(self, feed: dict[str, np.ndarray]) -> None:
        self._feed: dict[str, np.ndarray] | None = feed

    def get_next(self):
        feed, self._feed = self._feed, None
        return feed


class MseCalibrater(HistogramCalibrater):
    """Histogram calibration choosing the range with the least expected int8 quantization MSE."""

    def __init__(self, model_path, op_types_to_calibrate=None, augmented_model_path="augmented_model.onnx",
                 num_bins: int = HIST_BINS):
        # 'entropy' collection builds a value (not |value|) histogram over [-T, T] and merges
        # batches by widening with the same bin width: exactly what the MSE search needs.
        super().__init__(model_path, op_types_to_calibrate, augmented_model_path, method="entropy",
                         symmetric=False, num_bins=num_bins)

    def compute_data(self) -> TensorsData:
        if not self.collector:
            raise ValueError("no calibration data was collected")
        ranges = {}
        for name, (hist, edges, lo, hi, _t) in self.collector.histogram_dict.items():
            best = mse_optimal_range(np.asarray(hist, np.float64), np.asarray(edges, np.float64), float(lo), float(hi))
            ranges[name] = (np.array(best[0], np.float32), np.array(best[1], np.float32))
        return TensorsData(CalibrationMethod.MinMax, ranges)


def quantization_mse(hist: np.ndarray, centres: np.ndarray, lo: float, hi: float) -> float:
    """Expected squared error of asymmetric int8 quantization with range [lo, hi] over a histogram."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return float(np.sum(hist * centres ** 2))
    scale = (hi - lo) / INT8_LEVELS
    zp = np.round(-128 - lo / scale)
    q = np.clip(np.round(centres / scale) + zp, -128, 127)
    err = (q - zp) * scale - centres
    return float(np.sum(hist * err * err))


def mse_optimal_range(hist: np.ndarray, edges: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """Search ranges ``[f*lo, f*hi]`` for the clipping fraction f with the least quantization MSE."""
    if hist.sum() == 0 or hi <= lo:
        return lo, hi
    centres = (edges[:-1] + edges[1:]) / 2
    errors = [quantization_mse(hist, centres, f * lo, f * hi) for f in MSE_CANDIDATES]
    f = float(MSE_CANDIDATES[int(np.argmin(errors))])
    return f * lo, f * hi


def compute_ranges(model_path: str | Path, feeds: Sequence[dict[str, np.ndarray]], method: str,
                   *, percentile: float = PERCENTILE) -> TensorsData:
    """Run the float model over the calibration feeds and compute activation ranges with ``method``."""
    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose from: {', '.join(METHODS)}")
    with tempfile.TemporaryDirectory(prefix="edgesmith-calib-") as tmp, quiet_onnxruntime():
        augmented = str(Path(tmp) / "augmented.onnx")
        if method == "mse":
            calibrator = MseCalibrater(Path(model_path), augmented_model_path=augmented)
            calibrator.augment_graph()
            calibrator.create_inference_session()
        else:
            ort_method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                          "entropy": CalibrationMethod.Entropy}[method]
            # asymmetric percentile: ReLU outputs keep their whole int8 range
            extra = {"symmetric": False, "percentile": percentile} if method == "percentile" else {}
            calibrator = create_calibrator(Path(model_path), [], augmented_model_path=augmented,
                                           calibrate_method=ort_method, extra_options=extra)
        for feed in feeds:
            calibrator.collect_data(_OneBatch(feed))
        data = calibrator.compute_data()
        del calibrator
    return data


@contextlib.contextmanager
def quiet_onnxruntime():
    """onnxruntime's calibrators print progress to stdout and warn about pre-processing: keep the CLI clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
