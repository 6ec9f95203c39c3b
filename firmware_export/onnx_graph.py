"""The IntGraph builder behind the QDQ ONNX importer: tensors, ops, layouts, fused activations,
and the import result types (:class:`TensorBinding`, :class:`OnnxImport`).

The importer (:mod:`firmware_export.onnx_importer`) walks ONNX nodes; the op converters
(:mod:`firmware_export.onnx_ops`) call the helpers here to create tensors and ops. Every int8
activation the importer knows is an :class:`Act`: an IntGraph tensor plus the ONNX shape and the
layout it is stored in (see :mod:`firmware_export.onnx_layout`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from onnx import helper

from firmware_export import onnx_layout as L
from firmware_export.intgraph import IntGraph, Op, Tensor

#: fused activations by their clamp range (Relu, Clip(0, 6), Clip(-1, 1))
_NAMED_CLAMPS = {(0.0, math.inf): "RELU", (0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}


def node_attr(node, name: str, default=None):
    """An ONNX node attribute as a Python value (strings decoded), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


class NodeError(Exception):
    """One problem with the ONNX node being converted; the importer adds the node name and type."""


class FeedsUnsupportedOp(NodeError):
    """The node's float output feeds an op the importer reports on its own (no kernel for it):
    the node is skipped without a second, consequential problem."""


@dataclasses.dataclass
class Act:
    """An int8 activation: IntGraph tensor ``tensor`` holds ``onnx_value.transpose(layout)``.

    ``col_perm`` (2-D ``[1, K]`` tensors only): stored column ``j`` is ONNX column ``col_perm[j]``;
    set when an NCHW flatten feeding only fully connected layers was kept in NHWC order.
    """

    tensor: str
    onnx_shape: tuple[int, ...]
    layout: tuple[int, ...]
    col_perm: np.ndarray | None = None


@dataclasses.dataclass
class QConst:
    """A DequantizeLinear of a constant: integer values, scale/zero point (per axis or per tensor)."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    #: reached through an Identity: the exporter shared this constant between several ops
    shared: bool = False

    def real(self) -> np.ndarray:
        shape = [1] * self.values.ndim
        if self.axis is not None:
            shape[self.axis] = -1
        zp = self.zero_point.reshape(shape) if self.zero_point.size > 1 else self.zero_point.reshape(())
        sc = self.scale.reshape(shape) if self.scale.size > 1 else self.scale.reshape(())
        return ((self.values.astype(np.int64) - zp) * sc.astype(np.float64)).astype(np.float32)


@dataclasses.dataclass
class OutSpec:
    """Where an op's result goes: the Q's int8 tensor, its quantization and the fused clamp."""

    q_name: str
    scale: float
    zero_point: int
    onnx_shape: tuple[int, ...]
    clamp: tuple[float, float] | None
    bias_node: Any
    nodes: list

    @property
    def name(self) -> str:
        return self.nodes[0].name or self.q_name


@dataclasses.dataclass(frozen=True)
class TensorBinding:
    """How one ONNX graph input/output maps to an IntGraph tensor.

    ``graph_tensor = quantize(onnx_tensor).transpose(perm)``; for a 4-D NCHW ONNX input
    ``perm == (0, 2, 3, 1)`` (NHWC in the IntGraph).
    """

    onnx_name: str
    onnx_shape: tuple[int, ...]
    tensor: str
    perm: tuple[int, ...]
    scale: float
    zero_point: int

    def to_graph(self, x: np.ndarray) -> np.ndarray:
        """Float array in ONNX layout -> int8 array for the IntGraph (quantize, then transpose)."""
        q = np.rint(np.asarray(x, np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, -128, 127).astype(np.int8).transpose(self.perm)

    def from_graph(self, q: np.ndarray) -> np.ndarray:
        """int8 IntGraph array -> float array in ONNX layout (transpose back, dequantize)."""
        x = np.asarray(q).transpose(L.inverse(self.perm)).astype(np.float32)
        return (x - self.zero_point) * np.float32(self.scale)


@dataclasses.dataclass
class OnnxImport:
    """The imported graph plus the bindings callers need to feed it ONNX-layout data."""

    graph: IntGraph
    inputs: list[TensorBinding]
    outputs: list[TensorBinding]
    opset: int


class GraphBuilder:
    """Accumulates IntGraph tensors and ops for one import."""

    def __init__(self, name: str):
        self.name = name
        self.tensors: dict[str, Tensor] = {}
        self.ops: list[Op] = []
        self.acts: dict[str, Act] = {}          # ONNX int8 tensor name -> Act
        self.dq_alias: dict[str, str] = {}      # DQ float output -> ONNX int8 tensor name
        self.qconsts: dict[str, QConst] = {}    # DQ float output of a constant -> QConst
        self.sign_tensors: set[str] = set()     # IntGraph tensors written by SIGN
        self._materialized: dict[tuple[str, tuple[int, ...]], str] = {}

    # ---------------------------------------------------------------- tensors and ops

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.tensors:
            name, k = f"{base}_{k}", k + 1
        return name

    def add_tensor(self, base: str, stored: tuple[int, ...], scale: float, zero_point: int) -> str:
        """A new int8 activation tensor with per-tensor quantization; returns its (unique) name."""
        name = self.unique(base)
        self.tensors[name] = Tensor(name=name, shape=tuple(int(s) for s in stored), dtype="int8",
                                    scale=np.array([scale], np.float32),
                                    zero_point=np.array([zero_point], np.int64))
        return name

    def add_act(self, onnx_name: str, onnx_shape, layout, scale: float, zero_point: int,
                col_perm: np.ndarray | None = None) -> Act:
        stored = L.stored_shape(onnx_shape, layout)
        if col_perm is not None:
            stored = (1, int(np.prod(onnx_shape)))
        name = self.add_tensor(onnx_name, stored, scale, zero_point)
        act = Act(name, tuple(onnx_shape), tuple(layout), col_perm)
        self.acts[onnx_name] = act
        return act

    def add_const(self, base: str, data: np.ndarray, *, scale=None, zero_point=None, axis=None,
                  bits: int = 8) -> str:
        """A constant tensor (weights, bias, int8 operand); dtype follows ``data``."""
        name = self.unique(base)
        scale_arr = None if scale is None else np.atleast_1d(np.asarray(scale, np.float32)).reshape(-1)
        zp_arr = None if scale is None else np.atleast_1d(np.asarray(zero_point, np.int64)).reshape(-1)
        if scale_arr is not None and scale_arr.size == 1:
            axis = None
        self.tensors[name] = Tensor(name=name, shape=tuple(int(s) for s in data.shape), dtype=str(data.dtype),
                                    scale=scale_arr, zero_point=zp_arr, quant_axis=axis, data=data, bits=bits)
        return name

    def emit(self, kind: str, inputs: list[str], outputs: list[str], attrs: dict, name: str) -> None:
        self.ops.append(Op(kind=kind, inputs=list(inputs), outputs=list(outputs), attrs=dict(attrs), name=name))

    @staticmethod
    def same_quant(quant: tuple[float, int], t: Tensor) -> bool:
        scale, zp = quant
        return zp == t.per_tensor_zero_point() and math.isclose(scale, t.per_tensor_scale(), rel_tol=1e-6)

    def quant_of(self, act: Act) -> tuple[float, int]:
        t = self.tensors[act.tensor]
        return t.per_tensor_scale(), t.per_tensor_zero_point()

    def materialize(self, act: Act, layout: tuple[int, ...]) -> str:
        """The IntGraph tensor holding ``act`` in ``layout`` (a TRANSPOSE is added when needed)."""
        layout = tuple(layout)
        if act.col_perm is not None:
            raise NodeError(f"tensor {act.tensor!r} is a flattened NHWC tensor kept in NHWC order for a "
                            f"fully connected layer and cannot be used elsewhere")
        if act.layout == layout:
            return act.tensor
        key = (act.tensor, layout)
        if key not in self._materialized:
            src = self.tensors[act.tensor]
            perm = L.transpose_between(act.layout, layout)
            suffix = "nhwc" if layout == L.NHWC else "t" + "".join(str(p) for p in layout)
            out = self.add_tensor(f"{act.tensor}_{suffix}", tuple(src.shape[p] for p in perm),
                                  src.per_tensor_scale(), src.per_tensor_zero_point())
            self.emit("TRANSPOSE", [act.tensor], [out], {"perm": perm}, f"{act.tensor}_to_{suffix}")
            self._materialized[key] = out
        return self._materialized[key]

    # ---------------------------------------------------------------- outputs

    def fused_act(self, spec: OutSpec, supports_act: bool) -> str:
        """The fused activation for ``spec.clamp``, or NONE when the int8 range already implies it."""
        if spec.clamp is None:
            return "NONE"
        lo, hi = spec.clamp
        named = next((v for (a, b), v in _NAMED_CLAMPS.items() if math.isclose(lo, a, abs_tol=1e-6)
                      and (math.isclose(hi, b, abs_tol=1e-6) or (hi == b == math.inf))), None)
        if supports_act and named:
            return named
        s, zp = spec.scale, spec.zero_point
        rmin, rmax = s * (-128 - zp), s * (127 - zp)
        # quantize(clip(x)) == saturate(quantize(x)) when both clip bounds round to the int8 limits
        if lo <= rmin + 0.5 * s and hi >= rmax - 0.5 * s:
            return "NONE"
        raise NodeError(f"Clip[{lo:g}, {hi:g}] before QuantizeLinear (scale {s:g}, zero point {zp}) cannot "
                        f"be expressed exactly here: it is not a fused ReLU/ReLU6/ReLU_N1_TO_1 of this op and "
                        f"the int8 range [{rmin:g}, {rmax:g}] does not imply it; use ReLU or ReLU6 in the model "
                        f"or re-run edgesmith quantize")

    def emit_op(self, spec: OutSpec, kind: str, inputs: list[str], attrs: dict, layout, *,
                op_quant: tuple[float, int] | None = None, supports_act: bool = False,
                col_perm: np.ndarray | None = None) -> str:
        """Emit ``kind`` writing the Q's int8 tensor (``spec``) in ``layout``.

        ``op_quant``: the quantization the op itself must produce (pools and resizes keep their
        input's, LOGISTIC/SOFTMAX have a fixed one); when it differs from the Q's, the op writes a
        temporary tensor and a QUANTIZE requantizes it.
        """
        attrs = dict(attrs)
        act = self.fused_act(spec, supports_act)
        if supports_act:
            attrs["act"] = act
        final = self.add_act(spec.q_name, spec.onnx_shape, layout, spec.scale, spec.zero_point, col_perm)
        out = final.tensor
        if op_quant is None or self.same_quant(op_quant, self.tensors[out]):
            self.emit(kind, inputs, [out], attrs, spec.name)
        else:
            tmp = self.add_tensor(out + "_pre", self.tensors[out].shape, *op_quant)
            self.emit(kind, inputs, [tmp], attrs, spec.name)
            self.emit("QUANTIZE", [tmp], [out], {}, spec.name + "_requantize")
        return out

    def alias(self, spec: OutSpec, act: Act, layout, col_perm: np.ndarray | None = None) -> None:
        """The Q's tensor is ``act``'s data relabelled (Identity, Transpose, Relu implied by range)."""
        self.fused_act(spec, supports_act=False)
        if col_perm is None:
            col_perm = act.col_perm
        if self.same_quant((spec.scale, spec.zero_point), self.tensors[act.tensor]):
            self.acts[spec.q_name] = Act(act.tensor, tuple(spec.onnx_shape), tuple(layout), col_perm)
            return
        out = self.add_act(spec.q_name, spec.onnx_shape, layout, spec.scale, spec.zero_point, col_perm)
        self.emit("QUANTIZE", [act.tensor], [out.tensor], {}, spec.name)

    def build(self, inputs: list[str], outputs: list[str]) -> IntGraph:
        used = set(inputs) | set(outputs) | {n for op in self.ops for n in op.inputs + op.outputs}
        tensors = {k: v for k, v in self.tensors.items() if k in used}
        graph = IntGraph(tensors=tensors, ops=self.ops, inputs=inputs, outputs=outputs, name=self.name)
        graph.validate()
        return graph
