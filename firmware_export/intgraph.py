"""IntGraph: the one integer IR every importer produces and every emitter consumes.

Semantics are TFLite's int8 quantization spec (https://ai.google.dev/edge/litert/models/quantization_spec):

* activations are int8, asymmetric: ``real = scale * (q - zero_point)``, one scale per tensor;
* weights are int8, symmetric (zero point 0), values in [-127, 127], one scale per output
  channel (``quant_axis`` names the channel axis) or one per tensor;
* biases are int32 with ``scale = input_scale * weight_scale[c]`` and zero point 0;
* every op requantizes with TFLite's fixed-point arithmetic (see ``fixedpoint.py``), and a
  fused activation becomes a clamp of the int8 output;
* binary (1-bit) weights: ``bits == 1``; ``data`` holds the unpacked signs as int8 in {-1, +1}
  with a per-output-channel float scale (XNOR-Net alpha); emitters pack them 8 per byte.

Layout is NHWC for every 4-D activation (importers of NCHW ONNX transpose once at the edges).
Weight layouts follow TFLite so the ``.tflite`` writer copies them as they are:

=================  ========================  =================
op                 weight layout             quant_axis
=================  ========================  =================
CONV_2D            [O, KH, KW, I/groups]     0
DEPTHWISE_CONV_2D  [1, KH, KW, C*mult]       3
FULLY_CONNECTED    [O, I]                    0
BINARY_CONV_2D     [O, KH, KW, I]  (bits=1)  0
=================  ========================  =================

Ops (``Op.kind``) and their attributes (``Op.attrs``); "act" is the fused activation, one of
``NONE``, ``RELU``, ``RELU6``, ``RELU_N1_TO_1``; "pads" is explicit ``(top, bottom, left, right)``:

==========================  ==================================  ===========================================
kind                        inputs                              attrs
==========================  ==================================  ===========================================
CONV_2D                     x, w, b (b optional)                stride (h, w), dilation (h, w), pads, act
DEPTHWISE_CONV_2D           x, w, b                             stride, dilation, pads, depth_multiplier, act
BINARY_CONV_2D              x, w (bits=1), b                    stride, dilation, pads, act;
                                                                binary_input (bool: x is int8 sign {-1,+1}
                                                                pattern, the XNOR/popcount path)
FULLY_CONNECTED             x, w, b                             act
ADD, MUL                    a, b  (numpy broadcasting)          act
AVERAGE_POOL_2D             x                                   filter (h, w), stride, pads, act
MAX_POOL_2D                 x                                   filter, stride, pads, act
MEAN                        x                                   axes (tuple), keep_dims
RESHAPE                     x                                   shape (tuple, full output shape)
TRANSPOSE                   x                                   perm (tuple)
CONCATENATION               x0, x1, ...                         axis, act
PAD                         x                                   paddings ((before, after) per dim)
RESIZE_NEAREST_NEIGHBOR     x                                   size (h, w), align_corners, half_pixel_centers
RESIZE_BILINEAR             x                                   size (h, w), align_corners, half_pixel_centers
LOGISTIC                    x                                   — (output scale 1/256, zero point -128)
SOFTMAX                     x                                   beta (output scale 1/256, zero point -128)
QUANTIZE                    x (float32 or int8)                 — (float->int8, or int8 requantize)
DEQUANTIZE                  x (int8)                            — (int8->float32)
SIGN                        x (int8)                            — (binary activation: q >= zp -> +1 else -1,
                                                                output int8 {-1,+1}, scale 1, zp 0)
==========================  ==================================  ===========================================

Padding: TFLite only knows SAME and VALID; IntGraph keeps explicit pads so ONNX's asymmetric
pads survive. The ``.tflite`` writer uses SAME/VALID when they match and inserts a PAD op when not.

Two hashes name a graph (both sha256, hex):

* ``graph_hash()`` identifies **this exact model**: structure, scales, zero points and constant
  data. Reports, ``.tflite`` metadata and the banner of generated C carry it.
* ``structure_hash()`` identifies **what firmware can run it**: op kinds and attributes, tensor
  names, shapes, dtypes, bit widths, quantization axes, which tensors are constants, graph inputs
  and outputs; not scales, zero points or constant data. The generated C depends on nothing else
  (every quantization-dependent number is read from its weights table, see ``c_table.py``), so
  a weight blob made after retraining and requantizing the same architecture carries the same
  structure hash and runs on the firmware already in the field.

This module is data only: no numpy arithmetic beyond validation, no I/O.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from edgesmith.errors import ExportError

#: Every op kind the IR knows, in one place (STYLE: one IR, one list).
OP_KINDS = (
    "CONV_2D", "DEPTHWISE_CONV_2D", "BINARY_CONV_2D", "FULLY_CONNECTED",
    "ADD", "MUL", "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN",
    "RESHAPE", "TRANSPOSE", "CONCATENATION", "PAD",
    "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR",
    "LOGISTIC", "SOFTMAX", "QUANTIZE", "DEQUANTIZE", "SIGN",
)

FUSED_ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")

DTYPES = ("int8", "int32", "float32", "int16", "uint8")


@dataclasses.dataclass
class Tensor:
    """One tensor: an activation (``data is None``) or a constant (weights, bias, shape)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "int8"
    #: float32 array: one value (per-tensor) or one per channel along ``quant_axis``; None = not quantized
    scale: np.ndarray | None = None
    #: int64 array, same length as ``scale``
    zero_point: np.ndarray | None = None
    quant_axis: int | None = None
    data: np.ndarray | None = None
    #: 8 for int8, 32 for int32 biases, 1 for binary (packed) weights
    bits: int = 8

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def nbytes(self) -> int:
        """Bytes this tensor takes in memory (1-bit weights packed 8 per byte along the last axis)."""
        count = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        if self.bits == 1:
            inner = self.shape[-1]
            return int(count // inner * ((inner + 7) // 8))
        return count * np.dtype(self.dtype).itemsize

    def per_tensor_scale(self) -> float:
        """The single scale of a per-tensor quantized tensor (error if it is per-channel)."""
        if self.scale is None or np.size(self.scale) != 1:
            raise ExportError(f"tensor {self.name!r} is expected to have one scale, "
                              f"it has {0 if self.scale is None else np.size(self.scale)}")
        return float(np.asarray(self.scale).reshape(-1)[0])

    def per_tensor_zero_point(self) -> int:
        if self.zero_point is None or np.size(self.zero_point) != 1:
            raise ExportError(f"tensor {self.name!r} is expected to have one zero point")
        return int(np.asarray(self.zero_point).reshape(-1)[0])


@dataclasses.dataclass
class Op:
    """One operation: ``kind`` from :data:`OP_KINDS`, tensor names in and out, attributes."""

    kind: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the node name in the source model, kept for error messages and reports
    name: str = ""


@dataclasses.dataclass
class IntGraph:
    """Tensors by name, ops in execution (topological) order, graph inputs and outputs."""

    tensors: dict[str, Tensor]
    ops: list[Op]
    inputs: list[str]
    outputs: list[str]
    name: str = "model"

    def tensor(self, name: str) -> Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise ExportError(f"graph {self.name!r} has no tensor {name!r}") from None

    def constants(self) -> list[Tensor]:
        """Constant tensors (weights, biases) in first-use order: the order emitters lay them out."""
        seen: dict[str, Tensor] = {}
        for op in self.ops:
            for name in op.inputs:
                t = self.tensors.get(name)
                if t is not None and t.is_constant and name not in seen:
                    seen[name] = t
        return list(seen.values())

    def activations(self) -> list[Tensor]:
        """Non-constant tensors (graph inputs, op outputs)."""
        return [t for t in self.tensors.values() if not t.is_constant]

    def producers(self) -> dict[str, int]:
        """Tensor name -> index of the op that writes it."""
        return {out: i for i, op in enumerate(self.ops) for out in op.outputs}

    def consumers(self) -> dict[str, list[int]]:
        """Tensor name -> indices of the ops that read it."""
        result: dict[str, list[int]] = {}
        for i, op in enumerate(self.ops):
            for name in op.inputs:
                result.setdefault(name, []).append(i)
        return result

    def graph_hash(self) -> str:
        """sha256 over structure, quantization and constant data: identifies a compiled model.

        Emitters stamp it into generated C, ``.tflite`` metadata and the weight blob, so a blob
        built for another graph is refused.
        """
        h = hashlib.sha256()
        for name in self.inputs + ["|"] + self.outputs:
            h.update(name.encode() + b"\0")
        for op in self.ops:
            h.update(repr((op.kind, op.inputs, op.outputs, sorted(op.attrs.items()))).encode())
        for name in sorted(self.tensors):
            t = self.tensors[name]
            h.update(repr((name, tuple(t.shape), t.dtype, t.quant_axis, t.bits)).encode())
            for arr in (t.scale, t.zero_point, t.data):
                if arr is not None:
                    a = np.ascontiguousarray(arr)
                    h.update(str(a.dtype).encode() + a.tobytes())
        return h.hexdigest()

    def structure_hash(self) -> str:
        """sha256 over what compiled code depends on: ops, attributes, tensor names, shapes,
        dtypes, bits, quantization axes, constness, graph inputs/outputs; no values.

        Equal for a retrained and requantized copy of the same architecture; the weight blob
        and the firmware compare it (see the module docstring).
        """
        h = hashlib.sha256(b"edgesmith-structure-v1\0")
        for name in self.inputs + ["|"] + self.outputs:
            h.update(name.encode() + b"\0")
        for op in self.ops:
            h.update(repr((op.kind, op.inputs, op.outputs, sorted(op.attrs.items()))).encode())
        for name in sorted(self.tensors):
            t = self.tensors[name]
            h.update(repr((name, tuple(int(d) for d in t.shape), t.dtype, t.quant_axis, t.bits,
                           t.is_constant)).encode())
        return h.hexdigest()

    def validate(self) -> None:
        """Check structure: known kinds, every input defined before use, shapes and dtypes sane."""
        defined = set(self.inputs) | {t.name for t in self.tensors.values() if t.is_constant}
        for name in self.inputs + self.outputs:
            self.tensor(name)
        for op in self.ops:
            if op.kind not in OP_KINDS:
                raise ExportError(f"op {op.name or op.outputs} has unknown kind {op.kind!r}; "
                                  f"IntGraph knows: {', '.join(OP_KINDS)}")
            act = op.attrs.get("act", "NONE")
            if act not in FUSED_ACTIVATIONS:
                raise ExportError(f"op {op.name!r}: fused activation {act!r} is not one of "
                                  f"{', '.join(FUSED_ACTIVATIONS)}")
            for name in op.inputs:
                if name and name not in defined:
                    raise ExportError(f"op {op.name or op.kind!r} reads {name!r} before it is written")
            for name in op.outputs:
                self.tensor(name)
                defined.add(name)
        for t in self.tensors.values():
            if t.dtype not in DTYPES:
                raise ExportError(f"tensor {t.name!r} has dtype {t.dtype!r}; expected one of {DTYPES}")
            if t.scale is not None:
                n = np.size(t.scale)
                if t.zero_point is None or np.size(t.zero_point) != n:
                    raise ExportError(f"tensor {t.name!r}: {n} scales but "
                                      f"{0 if t.zero_point is None else np.size(t.zero_point)} zero points")
                if n > 1 and (t.quant_axis is None or t.shape[t.quant_axis] != n):
                    raise ExportError(f"tensor {t.name!r}: {n} scales do not match axis "
                                      f"{t.quant_axis} of shape {t.shape}")
            if t.data is not None and tuple(t.data.shape) != tuple(t.shape):
                raise ExportError(f"tensor {t.name!r}: data shape {t.data.shape} != declared {t.shape}")
