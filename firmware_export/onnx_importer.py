"""QDQ ONNX -> IntGraph: the importer for EdgeSmith's int8 variants and users' QDQ models.

A QDQ model computes in float between ``DequantizeLinear`` (DQ) and ``QuantizeLinear`` (Q) nodes.
Each pattern ``DQ(int8 activation) -> float op (DQ'd int8 weights, DQ'd int32 bias) -> [Relu|Clip]
-> Q`` becomes one IntGraph op whose int8 output carries the Q's scale and zero point; a Relu/Clip
between the op and its Q becomes the fused activation (or is already implied by the Q's range).
Op converters live in :mod:`firmware_export.onnx_ops`; layout bookkeeping (ONNX NCHW -> IntGraph
NHWC, lazy transposes, channel shuffle) in :mod:`firmware_export.onnx_layout`.

Inputs and outputs: the IntGraph input is the int8 tensor after the model's first QuantizeLinear,
stored NHWC for a 4-D NCHW input (an input that the model itself transposes NHWC -> NCHW is kept
as it is); outputs are the int8 tensors before the final DequantizeLinear, NHWC for 4-D NCHW ones
(an output the model already transposed to NHWC is kept as it is). :func:`import_qdq_onnx`
returns, next to the graph, one :class:`TensorBinding` per input and output recording the ONNX
name, shape (batch fixed to 1), the axis permutation ``perm`` (``graph = onnx.transpose(perm)``)
and the quantization, with ``to_graph`` / ``from_graph`` to go from a float ONNX-layout array to
the int8 graph tensor and back. Callers must use ``perm`` rather than assume NHWC.

Every problem found (unsupported op types, float ops between quantized ops, uint8 activations,
asymmetric weights, mismatched bias scales, dynamic shapes) is collected and reported in ONE
:class:`~edgesmith.errors.ExportError` naming each offending node. No torch is imported.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from edgesmith.errors import ExportError
from firmware_export import onnx_layout as L
from firmware_export.intgraph import IntGraph
from firmware_export.onnx_fold import fold_and_infer
from firmware_export.onnx_graph import (
    Act, FeedsUnsupportedOp, GraphBuilder, NodeError, OnnxImport, OutSpec, QConst, TensorBinding, node_attr,
)

__all__ = ["OnnxImport", "TensorBinding", "import_qdq_onnx", "read_qdq_onnx"]



def read_qdq_onnx(path_or_model: str | Path | onnx.ModelProto, *, name: str | None = None) -> IntGraph:
    """Import a QDQ int8 ONNX model as an :class:`IntGraph` (NHWC, TFLite int8 semantics).

    Use :func:`import_qdq_onnx` to also get the input/output bindings (ONNX name, shape, layout
    permutation and quantization). Raises one ExportError listing every unsupported node.
    """
    return import_qdq_onnx(path_or_model, name=name).graph


def import_qdq_onnx(path_or_model: str | Path | onnx.ModelProto, *, name: str | None = None) -> OnnxImport:
    """Import a QDQ int8 ONNX model; returns the graph and its input/output bindings."""
    if isinstance(path_or_model, onnx.ModelProto):
        model, default_name = onnx.ModelProto(), path_or_model.graph.name or "model"
        model.CopyFrom(path_or_model)
    else:
        path = Path(path_or_model)
        if not path.is_file():
            raise ExportError(f"ONNX model {str(path)!r} does not exist; pass the path of a QDQ "
                              f"int8 model (edgesmith quantize writes variants/int8.onnx)")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf raises several types for corrupt files
            raise ExportError(f"cannot read ONNX model {str(path)!r}: {exc}; is it a valid .onnx "
                              f"file?") from None
        default_name = path.stem
    return _Importer(model, name or default_name).run()


class _Importer(GraphBuilder):
    """One import: walks the ONNX nodes in topological order and fills the GraphBuilder."""

    def __init__(self, model: onnx.ModelProto, name: str):
        super().__init__(name)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.problems: list[str] = []
        self.poisoned: set[str] = set()
        self.consumed: set[int] = set()
        self.model = self._resolve_shapes(model)
        g = self.model.graph
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        # one list of node objects, so id(node) is stable (used to mark nodes already converted)
        self.nodes = list(g.node)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.users.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in g.output}
        #: Q output name -> the DQ'd weight it losslessly re-quantizes (see _quantize)
        self.requantized: dict[str, QConst] = {}

    # ---------------------------------------------------------------- shapes and constants

    def _resolve_shapes(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """Fix a dynamic batch dim to 1, re-run shape inference, and record every static shape."""
        g = model.graph
        inits = {i.name for i in g.initializer}
        for inp in g.input:
            if inp.name in inits:
                continue
            dims = inp.type.tensor_type.shape.dim
            for k, d in enumerate(dims):
                if d.HasField("dim_value") and d.dim_value > 0:
                    continue
                if k == 0:
                    d.Clear()
                    d.dim_value = 1
                else:
                    self.problems.append(
                        f"graph input {inp.name!r}: dimension {k} is dynamic ({d.dim_param or '?'}); "
                        f"firmware export needs static shapes: re-export the model with a fixed input size")
        del g.value_info[:]
        for out in g.output:
            out.type.tensor_type.ClearField("shape")
        model, self.shapes, self.elem_types = fold_and_infer(model, self.name)
        return model

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise NodeError(f"the shape of tensor {name!r} cannot be resolved to constants; "
                            f"firmware export needs static shapes (batch 1): re-export with a fixed input size")
        return self.shapes[name]

    def fold(self, name: str) -> np.ndarray | None:
        """The constant value of ``name`` (initializers, folded Constant/shape arithmetic), else None."""
        return self.consts.get(name) if name else None

    # ---------------------------------------------------------------- the walk

    def run(self) -> OnnxImport:
        from firmware_export.onnx_ops import CONVERTERS, STANDALONE

        inputs = self._bind_inputs()
        unsupported: dict[str, list[str]] = {}  # op type -> node names: one problem per op type
        for node in self.nodes:
            if id(node) in self.consumed:
                continue
            op = node.op_type
            if not self._supported(node):
                unsupported.setdefault(_op_kind(node), []).append(node.name or "<unnamed>")
                self.poison(node.output)  # what reads it is skipped, not reported a second time
                continue
            if any(i in self.poisoned for i in node.input):
                self.poison(node.output)
                continue
            chain: list[onnx.NodeProto] = [node]
            if op in ("Identity", "Dropout") and self._pass_through(node):
                continue
            try:
                if op == "DequantizeLinear":
                    self._dequantize(node)
                elif op == "QuantizeLinear":
                    self._quantize(node)
                else:
                    spec = self.out_spec(node)
                    chain = spec.nodes
                    (STANDALONE.get(op) or CONVERTERS[op])(self, node, spec)
            except NodeError as exc:
                if not isinstance(exc, FeedsUnsupportedOp):
                    self.report(node, str(exc))
                for n in chain:
                    self.poison(n.output)
        self.problems[:0] = [_unsupported_message(kind, names) for kind, names in unsupported.items()]
        outputs = self._bind_outputs()
        if self.problems:
            count = len(self.problems)
            raise ExportError(
                f"cannot import QDQ ONNX model {self.name!r} for firmware export: {count} problem"
                f"{'s' if count > 1 else ''}:\n  - " + "\n  - ".join(self.problems)
                + (f"\n{_unsupported_advice(CONVERTERS)}" if unsupported else ""))
        graph = self.build([b.tensor for b in inputs], [b.tensor for b in outputs])
        return OnnxImport(graph=graph, inputs=inputs, outputs=outputs, opset=self.opset)

    def _pass_through(self, node: onnx.NodeProto) -> bool:
        """Identity on a dequantized weight or activation that feeds float ops: just another name.

        The TorchScript exporter shares equal weights through Identity nodes; onnxruntime then
        quantizes the weight and leaves the Identity between its DequantizeLinear and the Conv.
        """
        x, y = node.input[0], node.output[0]
        if x in self.qconsts:
            self.qconsts[y] = dataclasses.replace(self.qconsts[x], shared=True)
            return True
        users = self.users.get(y, [])
        if x in self.dq_alias and not any(u.op_type == "QuantizeLinear" for u in users) \
                and y not in self.graph_outputs:
            self.dq_alias[y] = self.dq_alias[x]
            return True
        return False

    def _supported(self, node: onnx.NodeProto) -> bool:
        """Whether the importer has a converter (or Q/DQ handling) for ``node``'s op type."""
        from firmware_export.onnx_ops import CONVERTERS, STANDALONE

        op = node.op_type
        return node.domain in ("", "ai.onnx") and (
            op in CONVERTERS or op in STANDALONE or op in ("QuantizeLinear", "DequantizeLinear"))

    def report(self, node: onnx.NodeProto, message: str) -> None:
        self.problems.append(f"node {node.name or '<unnamed>'!r} ({node.op_type}): {message}")
        self.poison(node.output)

    def poison(self, names: Sequence[str]) -> None:
        self.poisoned.update(n for n in names if n)

    # ---------------------------------------------------------------- graph inputs and outputs

    def _bind_inputs(self) -> list[TensorBinding]:
        """Each float graph input must feed one QuantizeLinear: its int8 output is the graph input."""
        bindings = []
        for inp in self.model.graph.input:
            name = inp.name
            if name in self.consts:
                continue  # an initializer listed as input (old IR versions)
            if name not in self.shapes:
                self.poison([name])  # a dynamic dimension, already reported
                continue
            shape, etype = self.shapes[name], inp.type.tensor_type.elem_type
            if etype != onnx.TensorProto.FLOAT:
                self.problems.append(f"graph input {name!r} has element type "
                                     f"{onnx.TensorProto.DataType.Name(etype)}; expected float32 feeding "
                                     f"QuantizeLinear (the model's input quantizer)")
                self.poison([name])
                continue
            users = self.users.get(name, [])
            pre_perm = L.identity(len(shape))
            if len(users) == 1 and users[0].op_type == "Transpose" and name not in self.graph_outputs:
                # onnxruntime leaves a Transpose on the float input (an NHWC model) unquantized
                transpose = users[0]
                pre_perm = tuple(int(p) for p in node_attr(transpose, "perm", list(range(len(shape)))[::-1]))
                users = self.users.get(transpose.output[0], [])
                if len(users) == 1:
                    self.consumed.add(id(transpose))
            qs = [u for u in users if u.op_type == "QuantizeLinear"]
            if len(qs) != 1:
                self.problems.append(f"graph input {name!r} feeds {len(qs)} QuantizeLinear nodes; expected "
                                     f"exactly one (re-run edgesmith quantize)")
                self.poison([name])
                continue
            try:
                scale, zp = self.q_params(qs[0])
            except NodeError as exc:
                self.report(qs[0], str(exc))
                continue
            q_shape = L.stored_shape(shape, pre_perm)
            layout = L.natural_layout(len(shape))
            if self._feeds_only_nhwc_to_nchw(qs[0].output[0]):
                layout = L.identity(len(shape))  # an NHWC model input: keep it as it is
            self.consumed.add(id(qs[0]))
            act = self.add_act(qs[0].output[0], q_shape, layout, scale, zp)
            # graph tensor = onnx_input.transpose(pre_perm).transpose(layout)
            bindings.append(TensorBinding(name, shape, act.tensor, L.compose(pre_perm, layout), scale, zp))
        return bindings

    def _feeds_only_nhwc_to_nchw(self, q_name: str) -> bool:
        """True when every reader of the int8 input (via DQ) is a Transpose NHWC -> NCHW."""
        readers = [u for dq in self.users.get(q_name, []) for u in self.users.get(dq.output[0], [])]
        return bool(readers) and all(
            dq.op_type == "DequantizeLinear" for dq in self.users.get(q_name, [])) and all(
            u.op_type == "Transpose" and list(node_attr(u, "perm", [])) == [0, 3, 1, 2] for u in readers)

    def _bind_outputs(self) -> list[TensorBinding]:
        """Each graph output must be the DequantizeLinear of an int8 tensor; bind that tensor."""
        bindings = []
        for out in self.model.graph.output:
            name = out.name
            if name in self.poisoned:
                continue
            act = self.acts.get(self.dq_alias.get(name, name))
            if act is None:
                producer = self.producer.get(name)
                origin = f"{producer.op_type} node {producer.name!r}" if producer is not None else "nowhere"
                self.problems.append(f"graph output {name!r} is not the DequantizeLinear of an int8 tensor "
                                     f"(it comes from {origin}); end the model with QuantizeLinear -> "
                                     f"DequantizeLinear (re-run edgesmith quantize)")
                continue
            # NHWC for 4-D unless the tensor is already in ONNX order (e.g. after an NCHW->NHWC Transpose)
            rank = len(act.onnx_shape)
            layout = act.layout if act.layout == L.identity(rank) else L.natural_layout(rank)
            try:
                tensor = self.materialize(act, layout)
            except NodeError as exc:
                self.problems.append(f"graph output {name!r}: {exc}")
                continue
            scale, zp = self.quant_of(act)
            bindings.append(TensorBinding(name, act.onnx_shape, tensor, layout, scale, zp))
        return bindings

    # ---------------------------------------------------------------- Q and DQ

    def q_params(self, node: onnx.NodeProto) -> tuple[float, int]:
        """Per-tensor int8 (scale, zero point) of a Q or DQ node on an activation."""
        scale = self.fold(node.input[1])
        zp = self.fold(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if scale is None or zp is None:
            raise NodeError("scale and zero point must be constants")
        if zp.dtype != np.int8:
            raise NodeError(f"activation zero point is {zp.dtype} (not int8): {zp.dtype} activations are "
                            f"not supported; re-run edgesmith quantize (activation type QInt8)")
        if scale.size != 1:
            raise NodeError(f"activation quantization is per-channel ({scale.size} scales); firmware "
                            f"export needs one scale per activation tensor: re-run edgesmith quantize")
        return float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])

    def _dequantize(self, node: onnx.NodeProto) -> None:
        x, y = node.input[0], node.output[0]
        if x in self.requantized:
            self.qconsts[y] = dataclasses.replace(self.requantized[x], shared=True)
            return
        if x in self.acts:
            scale, zp = self.q_params(node)
            act = self.acts[x]
            t = self.tensors[act.tensor]
            if not self.same_quant((scale, zp), t):
                raise NodeError(f"dequantizes {x!r} with scale {scale:g}, zero point {zp} but it was "
                                f"quantized with scale {t.per_tensor_scale():g}, zero point "
                                f"{t.per_tensor_zero_point()}; re-run edgesmith quantize")
            self.dq_alias[y] = x
            return
        values = self.fold(x)
        if values is None:
            raise NodeError(f"input {x!r} is neither a constant nor an int8 activation from a QuantizeLinear")
        scale = self.fold(node.input[1])
        zp = self.fold(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None:
            raise NodeError("scale must be a constant")
        if zp is None:
            zp = np.zeros(scale.shape, values.dtype)
        axis = node_attr(node, "axis", 1)
        if scale.size > 1:
            axis = axis % values.ndim
        else:
            axis = None
        self.qconsts[y] = QConst(values=values, scale=scale.astype(np.float32).reshape(-1),
                                 zero_point=zp.astype(np.int64).reshape(-1), axis=axis)

    def _quantize(self, node: onnx.NodeProto) -> None:
        """A QuantizeLinear not claimed by an op: a constant to fold or a DQ->Q requantize."""
        x, y = node.input[0], node.output[0]
        value = self.fold(x)
        if value is None and x in self.qconsts:
            # a weight shared via Identity that onnxruntime quantized again as an activation: keep the
            # original int8 weight when the second quantization loses nothing
            if self._lossless_requantize(node, self.qconsts[x]):
                self.requantized[y] = self.qconsts[x]
                return
            value = self.qconsts[x].real()
        if value is not None:
            scale = self.fold(node.input[1])
            zp = self.fold(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
            if scale is None or zp is None:
                raise NodeError("scale and zero point must be constants")
            info = np.iinfo(zp.dtype)
            axis = node_attr(node, "axis", 1)
            shape = [1] * value.ndim
            if scale.size > 1:
                shape[axis % value.ndim] = -1
            q = np.rint(value / scale.reshape(shape)) + zp.astype(np.int64).reshape(shape)
            self.consts[y] = np.clip(q, info.min, info.max).astype(zp.dtype)
            return
        spec = self.out_spec(node, from_q=True)
        self.alias(spec, self.act_in(x), self.act_in(x).layout)

    def _lossless_requantize(self, node: onnx.NodeProto, qc: QConst) -> bool:
        scale = self.fold(node.input[1])
        zp = self.fold(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if scale is None or zp is None or scale.size != 1:
            return False
        real = qc.real().astype(np.float64)
        s, z = float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])
        info = np.iinfo(zp.dtype)
        back = (np.clip(np.rint(real / s) + z, info.min, info.max) - z) * s
        return bool(np.allclose(back, real, rtol=1e-5, atol=1e-6 * s))

    def out_spec(self, node: onnx.NodeProto, from_q: bool = False) -> OutSpec:
        """Follow an op's float output through an optional bias Add and Relu/Clip to its Q."""
        chain = [node]
        if from_q:
            q = node
        else:
            extra = [o for o in node.output[1:] if o and (o in self.users or o in self.graph_outputs)]
            if extra:
                raise NodeError(f"its extra outputs {extra} are used; only the first output is supported")
            cur = node.output[0]
            bias_node, clamp = None, None
            nxt = self._single_user(node, cur)
            if node.op_type in ("MatMul", "Gemm") and nxt.op_type == "Add" and any(
                    self.fold(i) is not None or i in self.qconsts for i in nxt.input if i != cur):
                bias_node = nxt
                chain.append(nxt)
                cur = nxt.output[0]
                nxt = self._single_user(nxt, cur)
            if nxt.op_type in ("Relu", "Clip") and node.op_type not in ("Relu", "Clip"):
                clamp = self._clamp_of(nxt)
                chain.append(nxt)
                cur = nxt.output[0]
                nxt = self._single_user(nxt, cur)
            if nxt.op_type != "QuantizeLinear" and not self._supported(nxt):
                raise FeedsUnsupportedOp(nxt.name)
            if nxt.op_type != "QuantizeLinear":
                raise NodeError(f"its output {cur!r} feeds {nxt.op_type} node {nxt.name!r} in float; "
                                f"every op must end in QuantizeLinear (--keep-float is not supported "
                                f"for firmware export): re-run edgesmith quantize without keep-float")
            q = nxt
            chain.append(q)
        if node.op_type in ("Relu", "Clip"):
            clamp = self._clamp_of(node)
        elif from_q:
            clamp, bias_node = None, None
        scale, zp = self.q_params(q)
        for n in chain[1:]:
            self.consumed.add(id(n))
        return OutSpec(q_name=q.output[0], scale=scale, zero_point=zp, onnx_shape=self.shape(q.output[0]),
                       clamp=clamp, bias_node=bias_node, nodes=chain)

    def _single_user(self, node: onnx.NodeProto, name: str) -> onnx.NodeProto:
        users = self.users.get(name, [])
        if name in self.graph_outputs:
            raise NodeError(f"its float output {name!r} is a graph output; firmware export is integer-only "
                            f"(--keep-float is not supported for firmware export): end the model with "
                            f"QuantizeLinear -> DequantizeLinear (re-run edgesmith quantize without keep-float)")
        if len(users) != 1:
            raise NodeError(f"its float output {name!r} is used by {len(users)} nodes "
                            f"({', '.join(repr(u.name) for u in users) or 'none'}); expected exactly one "
                            f"QuantizeLinear: re-run edgesmith quantize")
        return users[0]

    def _clamp_of(self, node: onnx.NodeProto) -> tuple[float, float]:
        if node.op_type == "Relu":
            return 0.0, float("inf")
        if self.opset < 11:
            lo = node_attr(node, "min", -np.inf)
            hi = node_attr(node, "max", np.inf)
            return float(lo), float(hi)
        bounds = []
        for k, default in ((1, -np.inf), (2, np.inf)):
            name = node.input[k] if len(node.input) > k else ""
            if not name:
                bounds.append(default)
                continue
            value = self.fold(name)
            if value is None and name in self.qconsts:
                value = self.qconsts[name].real()
            if value is None:
                raise NodeError(f"Clip bound {name!r} is not a constant")
            bounds.append(float(np.asarray(value).reshape(-1)[0]))
        return bounds[0], bounds[1]

    def act_in(self, name: str) -> Act:
        """The int8 activation behind a float tensor that an op reads (through its DQ)."""
        if name in self.dq_alias:
            return self.acts[self.dq_alias[name]]
        if name in self.qconsts or self.fold(name) is not None:
            raise NodeError(f"input {name!r} is a constant; this op needs an int8 activation there")
        producer = self.producer.get(name)
        if producer is None:
            raise NodeError(f"reads the float graph input {name!r} directly; insert QuantizeLinear -> "
                            f"DequantizeLinear after it (re-run edgesmith quantize)")
        raise NodeError(f"reads float tensor {name!r} computed in float by {producer.op_type} node "
                        f"{producer.name!r} (no QuantizeLinear -> DequantizeLinear in between); firmware "
                        f"export is integer-only and --keep-float is not supported for firmware export: "
                        f"re-run edgesmith quantize without keep-float")

    def only_fc_users(self, q_name: str) -> bool:
        """True when every reader of int8 tensor ``q_name`` is a Gemm/MatMul data input (via DQ)."""
        if q_name in self.graph_outputs:
            return False
        for dq in self.users.get(q_name, []):
            if dq.op_type != "DequantizeLinear" or dq.output[0] in self.graph_outputs:
                return False
            for user in self.users.get(dq.output[0], []):
                if user.op_type not in ("Gemm", "MatMul") or user.input[0] != dq.output[0]:
                    return False
                if user.op_type == "Gemm" and node_attr(user, "transA", 0):
                    return False
        return True


def _op_kind(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _unsupported_message(kind: str, names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    where = f"node {shown} ({kind})" if len(names) == 1 else f"{len(names)} nodes ({kind}: {shown})"
    return f"{where}: op type {kind} has no integer kernel in firmware export"


def _unsupported_advice(converters) -> str:
    known = ", ".join(sorted(set(converters) | {"Relu", "Clip", "QuantizeLinear", "DequantizeLinear"}))
    return (f"firmware export has integer kernels for: {known}. Replace the other ops in the model and "
            f"re-export (e.g. GELU -> ReLU; for a detector, train model nanodet-mcu), or deploy "
            f"this model to a Linux target that runs onnxruntime")