"""ONNX Resize -> RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR.

ONNX describes the sampling grid with ``coordinate_transformation_mode`` (+ ``nearest_mode``);
TFLite with ``align_corners`` / ``half_pixel_centers``. Rather than a lookup table that misses
equivalent cases (e.g. ``half_pixel`` + ``round_prefer_floor`` equals ``asymmetric`` + ``floor``
for an integer upscale), the converter computes the source coordinates each side would sample
for this exact size and picks the TFLite flags that sample the same ones.
"""
from __future__ import annotations

import numpy as np

from firmware_export import onnx_layout as L
from firmware_export.onnx_graph import NodeError, node_attr

#: TFLite (align_corners, half_pixel_centers) choices
_TFLITE_FLAGS = ((False, False), (False, True), (True, False))




def onnx_coords(mode: str, n_in: int, n_out: int, scale: float) -> np.ndarray | None:
    """Source coordinate of each output index under ONNX ``coordinate_transformation_mode``."""
    x = np.arange(n_out, dtype=np.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros(n_out)
    if mode == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(n_out)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    return None


def onnx_nearest(coords: np.ndarray, nearest_mode: str, n_in: int) -> np.ndarray | None:
    rounding = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
                "floor": np.floor, "ceil": np.ceil}.get(nearest_mode)
    if rounding is None:
        return None
    return np.clip(rounding(coords), 0, n_in - 1).astype(np.int64)


def tflite_nearest(n_in: int, n_out: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """TFLite's ResizeNearestNeighbor source index per output index (float32 like the kernel)."""
    x = np.arange(n_out, dtype=np.float32)
    scale = np.float32((n_in - 1) / (n_out - 1) if align_corners and n_out > 1 else n_in / n_out)
    offset = np.float32(0.5 if half_pixel else 0.0)
    if align_corners:
        idx = np.floor(np.abs(x * scale) + 0.5) * np.sign(x * scale)  # std::round: half away from zero
    else:
        idx = np.floor((x + offset) * scale)
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def tflite_linear(n_in: int, n_out: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """TFLite's ResizeBilinear source coordinate per output index (clamped to the input like ONNX)."""
    x = np.arange(n_out, dtype=np.float64)
    scale = (n_in - 1) / (n_out - 1) if align_corners and n_out > 1 else n_in / n_out
    coords = (x + 0.5) * scale - 0.5 if half_pixel else x * scale
    return np.clip(coords, 0, n_in - 1)


def resize(ctx, node, spec):
    x = ctx.act_in(node.input[0])
    if len(x.onnx_shape) != 4:
        raise NodeError(f"expects a 4-D NCHW input, got shape {x.onnx_shape}")
    n, c, h, w = x.onnx_shape
    on, oc, oh, ow = spec.onnx_shape
    if (on, oc) != (n, c):
        raise NodeError("Resize may only change the spatial (H, W) axes")
    mode = node_attr(node, "mode", "nearest")
    coord_mode = node_attr(node, "coordinate_transformation_mode", "half_pixel")
    nearest_mode = node_attr(node, "nearest_mode", "round_prefer_floor")
    if mode not in ("nearest", "linear"):
        raise NodeError(f"Resize mode {mode!r} is not supported (nearest, linear)")
    scales = ctx.fold(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scales is not None and scales.size == 4:
        sh, sw = float(scales[2]), float(scales[3])
    else:
        sh, sw = oh / h, ow / w
    for align, half in _TFLITE_FLAGS:
        if all(_same_grid(mode, coord_mode, nearest_mode, i, o, s, align, half)
               for i, o, s in ((h, oh, sh), (w, ow, sw))):
            break
    else:
        raise NodeError(f"Resize ({mode}, coordinate_transformation_mode={coord_mode}, nearest_mode="
                        f"{nearest_mode}) from {h}x{w} to {oh}x{ow} samples a grid TFLite cannot reproduce; "
                        f"use align_corners=False with nearest or bilinear upsampling in the model")
    kind = "RESIZE_NEAREST_NEIGHBOR" if mode == "nearest" else "RESIZE_BILINEAR"
    x_t = ctx.materialize(x, L.NHWC)
    ctx.emit_op(spec, kind, [x_t], {"size": (oh, ow), "align_corners": align, "half_pixel_centers": half},
                L.NHWC, op_quant=ctx.quant_of(x))


def _same_grid(mode, coord_mode, nearest_mode, n_in, n_out, scale, align, half) -> bool:
    coords = onnx_coords(coord_mode, n_in, n_out, scale)
    if coords is None:
        return False
    if mode == "nearest":
        src = onnx_nearest(coords, nearest_mode, n_in)
        return src is not None and np.array_equal(src, tflite_nearest(n_in, n_out, align, half))
    return np.allclose(np.clip(coords, 0, n_in - 1), tflite_linear(n_in, n_out, align, half), atol=1e-5)
