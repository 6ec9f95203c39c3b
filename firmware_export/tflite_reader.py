"""int8 ``.tflite`` -> IntGraph (for TensorFlow users and round trips of our own writer).

Supported builtin ops: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, MUL, AVERAGE_POOL_2D,
MAX_POOL_2D, MEAN, RESHAPE, TRANSPOSE, CONCATENATION, PAD, PADV2 (pad value = zero point),
RESIZE_NEAREST_NEIGHBOR, RESIZE_BILINEAR, LOGISTIC, SOFTMAX, QUANTIZE, DEQUANTIZE. Anything else
is reported in ONE ExportError listing every unsupported operator with its index and output.

Normalisation: SAME/VALID become explicit pads (TFLite's rule); shape-carrying constant inputs
(reshape shape, perm, axes, paddings, resize size) become attributes; per-channel weight scales
must lie on the output-channel axis of IntGraph's layout (which is TFLite's) and per-tensor
weights get that axis as ``quant_axis``. Ops the writer inserted (tensor names ending in
:data:`tflite_writer.INSERTED_SUFFIXES`) are folded back: a PAD/PADV2 before a VALID conv or
pool becomes its explicit pads, a QUANTIZE before a CONCATENATION becomes the concatenation's
own requantization, an inserted all-zero bias is dropped, so ``read_tflite(write_tflite(g))`` is ``g`` again (except BINARY_CONV_2D,
which is written as and read back as CONV_2D). Malformed files raise ExportError (see
:mod:`firmware_export.tflite_decode`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgesmith.errors import ExportError
from firmware_export.intgraph import IntGraph, Op, Tensor
from firmware_export.tflite_decode import RawModel, RawOp, RawTensor, decode
from firmware_export.tflite_writer import OP_NAMES_METADATA, PAD_SUFFIX, REQUANT_SUFFIX, ZERO_BIAS_SUFFIX

SUPPORTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "AVERAGE_POOL_2D",
             "MAX_POOL_2D", "MEAN", "RESHAPE", "TRANSPOSE", "CONCATENATION", "PAD", "PADV2",
             "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR", "LOGISTIC", "SOFTMAX", "QUANTIZE", "DEQUANTIZE")
_ACTS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6"}
_WEIGHT_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}


def _same_pads(size: int, k_eff: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2


class _Reader:
    def __init__(self, raw: RawModel):
        self.raw = raw
        self.names = self._unique_names(raw.tensors)
        self.used: set[int] = set()
        self.weight_axis: dict[int, int] = {}
        self.producer = {o: op for op in raw.ops for o in op.outputs}
        self.consumers: dict[int, int] = {}
        for op in raw.ops:
            for i in op.inputs:
                self.consumers[i] = self.consumers.get(i, 0) + 1

    @staticmethod
    def _unique_names(tensors: list[RawTensor]) -> list[str]:
        seen, names = set(), []
        for t in tensors:
            name = t.name or f"tensor_{t.index}"
            if name in seen:
                name = f"{name}_{t.index}"
            seen.add(name)
            names.append(name)
        return names

    def fail(self, op: RawOp, why: str) -> ExportError:
        return ExportError(f"operator #{op.index} {op.kind} (output {self.names[op.outputs[0]]!r}): {why}")

    def const(self, op: RawOp, pos: int, what: str) -> np.ndarray:
        if pos >= len(op.inputs) or op.inputs[pos] < 0 or self.raw.tensors[op.inputs[pos]].data is None:
            raise self.fail(op, f"expects a constant {what} as input {pos}")
        return self.raw.tensors[op.inputs[pos]].data

    def t(self, op: RawOp, pos: int) -> RawTensor:
        if pos >= len(op.inputs) or op.inputs[pos] < 0:
            raise self.fail(op, f"has no input {pos}")
        return self.raw.tensors[op.inputs[pos]]

    def use(self, index: int) -> str:
        self.used.add(index)
        return self.names[index]

    def opt(self, op: RawOp, field: str, default=0):
        return op.options.get(field, default)

    # ---------------------------------------------------------------- folding of writer-inserted ops
    def inserted(self, index: int, suffix: str, kinds) -> RawOp | None:
        """The producer of tensor ``index`` when our writer inserted it and only one op reads it."""
        p = self.producer.get(index)
        if p is None or p.kind not in kinds or suffix not in self.names[index] or self.consumers.get(index) != 1:
            return None
        return p

    def inserted_zero_bias(self, index: int) -> bool:
        """True for the all-zero bias our writer adds to bias-less convolutions."""
        t = self.raw.tensors[index]
        return (self.names[index].endswith(ZERO_BIAS_SUFFIX) and t.data is not None
                and not np.any(t.data) and self.consumers.get(index) == 1)

    def foldable_pad(self, op: RawOp, pad_op: RawOp) -> bool:
        """A writer-inserted pad is folded only where it means exactly the consumer's own padding:
        zero-point PAD before a conv, PADV2 with -128 before a max pool, on H and W only."""
        p = self.const(pad_op, 1, "paddings")
        if p.size != 8 or np.any(p.reshape(4, 2)[[0, 3]]) or np.any(p < 0):
            return False
        if pad_op.kind == "PAD":
            return op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D")
        value = self.const(pad_op, 2, "pad value").reshape(-1) if len(pad_op.inputs) > 2 else np.zeros(0)
        return op.kind == "MAX_POOL_2D" and value.size == 1 and int(value[0]) == -128

    def spatial(self, op: RawOp, x: RawTensor, kernel, stride, dilation, folded: set[int]):
        """(input tensor index, explicit pads) for a conv/pool, folding an inserted PAD."""
        padding = self.opt(op, "Padding", 1)
        pad_op = self.inserted(op.inputs[0], PAD_SUFFIX, ("PAD", "PADV2")) if padding == 1 else None
        if pad_op is not None and self.foldable_pad(op, pad_op):
            p = self.const(pad_op, 1, "paddings").reshape(4, 2)
            folded.add(pad_op.index)
            return pad_op.inputs[0], (int(p[1, 0]), int(p[1, 1]), int(p[2, 0]), int(p[2, 1]))
        if len(x.shape) != 4:
            raise self.fail(op, f"expects a 4-D NHWC input, got shape {x.shape}")
        if padding == 0:  # SAME
            top, bottom = _same_pads(x.shape[1], (kernel[0] - 1) * dilation[0] + 1, stride[0])
            left, right = _same_pads(x.shape[2], (kernel[1] - 1) * dilation[1] + 1, stride[1])
            return op.inputs[0], (top, bottom, left, right)
        return op.inputs[0], (0, 0, 0, 0)

    # ---------------------------------------------------------------- ops
    def positive(self, op: RawOp, **values) -> None:
        for name, pair in values.items():
            if any(int(v) < 1 for v in pair):
                raise self.fail(op, f"{name} {tuple(pair)} must be positive")

    def convert(self, op: RawOp, folded: set[int]) -> Op:
        k = op.kind
        out = [self.use(o) for o in op.outputs]
        act = _ACTS.get(int(self.opt(op, "FusedActivationFunction", 0)))
        if act is None:
            raise self.fail(op, "uses a fused activation other than NONE/RELU/RELU6/RELU_N1_TO_1")
        if k in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            x, w = self.t(op, 0), self.t(op, 1)
            if w.data is None or len(w.shape) != 4:
                raise self.fail(op, "expects constant 4-D weights")
            stride = (int(self.opt(op, "StrideH", 1)), int(self.opt(op, "StrideW", 1)))
            dilation = (int(self.opt(op, "DilationHFactor", 1)), int(self.opt(op, "DilationWFactor", 1)))
            self.positive(op, stride=stride, dilation=dilation)
            xin, pads = self.spatial(op, x, w.shape[1:3], stride, dilation, folded)
            attrs = {"stride": stride, "dilation": dilation, "pads": pads, "act": act}
            if k == "DEPTHWISE_CONV_2D":
                cin = self.raw.tensors[xin].shape[3]
                attrs["depth_multiplier"] = int(w.shape[3] // cin) if cin else int(self.opt(op, "DepthMultiplier", 1))
            self.weight_axis[op.inputs[1]] = _WEIGHT_AXIS[k]
            ins = [self.use(xin), self.use(op.inputs[1])]
            if len(op.inputs) > 2 and op.inputs[2] >= 0 and not self.inserted_zero_bias(op.inputs[2]):
                ins.append(self.use(op.inputs[2]))
            return Op(k, ins, out, attrs)
        if k == "FULLY_CONNECTED":
            w = self.t(op, 1)
            if w.data is None or len(w.shape) != 2:
                raise self.fail(op, "expects constant 2-D weights [out, in]")
            self.weight_axis[op.inputs[1]] = 0
            ins = [self.use(op.inputs[0]), self.use(op.inputs[1])]
            if len(op.inputs) > 2 and op.inputs[2] >= 0:
                ins.append(self.use(op.inputs[2]))
            return Op(k, ins, out, {"act": act})
        if k in ("ADD", "MUL"):
            return Op(k, [self.use(op.inputs[0]), self.use(self.t(op, 1).index)], out, {"act": act})
        if k in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
            kernel = (int(self.opt(op, "FilterHeight", 1)), int(self.opt(op, "FilterWidth", 1)))
            stride = (int(self.opt(op, "StrideH", 1)), int(self.opt(op, "StrideW", 1)))
            self.positive(op, filter=kernel, stride=stride)
            xin, pads = self.spatial(op, self.t(op, 0), kernel, stride, (1, 1), folded)
            return Op(k, [self.use(xin)], out, {"filter": kernel, "stride": stride, "pads": pads, "act": act})
        x = self.t(op, 0)
        if k == "MEAN":
            rank = len(x.shape)
            axes = tuple(int(a) % rank if rank else int(a) for a in self.const(op, 1, "axes").reshape(-1))
            return Op(k, [self.use(x.index)], out, {"axes": axes, "keep_dims": bool(self.opt(op, "KeepDims", False))})
        if k == "RESHAPE":
            return Op(k, [self.use(x.index)], out, {"shape": tuple(self.raw.tensors[op.outputs[0]].shape)})
        if k == "TRANSPOSE":
            return Op(k, [self.use(x.index)], out, {"perm": tuple(int(p) for p in self.const(op, 1, "perm").reshape(-1))})
        if k == "CONCATENATION":
            ins = []
            for i in op.inputs:
                rq = self.inserted(i, REQUANT_SUFFIX, ("QUANTIZE",))
                if rq is not None:
                    folded.add(rq.index)
                    i = rq.inputs[0]
                ins.append(self.use(i))
            rank = len(self.raw.tensors[op.outputs[0]].shape)
            return Op(k, ins, out, {"axis": int(self.opt(op, "Axis", 0)) % max(rank, 1), "act": act})
        if k in ("PAD", "PADV2"):
            p = self.const(op, 1, "paddings").reshape(-1, 2)
            if k == "PADV2" and len(op.inputs) > 2:
                y = self.raw.tensors[op.outputs[0]]
                value = self.const(op, 2, "pad value").reshape(-1)
                if y.zero_point is None or value.size != 1 or int(value[0]) != int(y.zero_point[0]):
                    raise self.fail(op, "pads with a value other than the output zero point; IntGraph's PAD "
                                        "pads with the zero point only")
            paddings = tuple((int(a), int(b)) for a, b in p)
            return Op("PAD", [self.use(x.index)], out, {"paddings": paddings})
        if k in ("RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR"):
            size = tuple(int(s) for s in self.const(op, 1, "size").reshape(-1))
            return Op(k, [self.use(x.index)], out, {"size": size,
                                                    "align_corners": bool(self.opt(op, "AlignCorners", False)),
                                                    "half_pixel_centers": bool(self.opt(op, "HalfPixelCenters", False))})
        if k == "SOFTMAX":
            return Op(k, [self.use(x.index)], out, {"beta": float(self.opt(op, "Beta", 1.0))})
        return Op(k, [self.use(x.index)], out, {})  # LOGISTIC, QUANTIZE, DEQUANTIZE

    def tensor(self, index: int) -> Tensor:
        rt = self.raw.tensors[index]
        if rt.dtype.startswith("TensorType"):
            raise ExportError(f"tensor {index} ({self.names[index]!r}) has unsupported {rt.dtype}; "
                              "expected an int8 model (int8/int32/float32 tensors)")
        axis = None
        if rt.scale is not None and rt.data is not None:
            axis = self.weight_axis.get(index, rt.quantized_dimension)
            if rt.scale.size > 1 and index in self.weight_axis and rt.quantized_dimension != axis:
                raise ExportError(f"tensor {index} ({self.names[index]!r}): per-channel scales on axis "
                                  f"{rt.quantized_dimension}, IntGraph needs the output-channel axis {axis}")
        return Tensor(name=self.names[index], shape=tuple(rt.shape), dtype=rt.dtype,
                      scale=rt.scale, zero_point=rt.zero_point, quant_axis=axis, data=rt.data,
                      bits=32 if rt.dtype == "int32" else 8)

    def graph(self) -> IntGraph:
        unsupported = []
        for op in self.raw.ops:
            where = f"#{op.index} {op.kind} -> {self.names[op.outputs[0]]!r}"
            if op.kind not in SUPPORTED:
                unsupported.append(where)
                continue
            dtypes = self.activation_dtypes(op)
            if dtypes:
                unsupported.append(f"{where} ({dtypes}; IntGraph runs int8 activations)")
        if unsupported:
            raise ExportError(f"the .tflite model uses {len(unsupported)} unsupported operator(s): "
                              f"{'; '.join(unsupported)}. Supported: {', '.join(SUPPORTED)}")
        folded: set[int] = set()
        converted = []
        for op in reversed(self.raw.ops):  # consumers first, so they can fold their inserted producers
            if op.index in folded:
                continue
            if not op.inputs or op.inputs[0] < 0:
                raise self.fail(op, "has no input")
            converted.append(self.convert(op, folded))
        ops = converted[::-1]
        names = self._op_names(len(ops))
        for op, name in zip(ops, names):
            op.name = name or op.outputs[0]
        used = {n for op in ops for n in op.inputs + op.outputs}
        io = [self.names[i] for i in self.raw.inputs + self.raw.outputs]
        tensors = {}
        for index, name in enumerate(self.names):
            if name in used or name in io:
                tensors[name] = self.tensor(index)
        g = IntGraph(tensors=tensors, ops=ops, inputs=[self.names[i] for i in self.raw.inputs],
                     outputs=[self.names[i] for i in self.raw.outputs], name=self.raw.name or "model")
        g.validate()
        return g

    def activation_dtypes(self, op: RawOp) -> str:
        """'' when the op's activations are int8 (QUANTIZE in / DEQUANTIZE out may be float32),
        else a description of the offending dtypes."""
        x = self.raw.tensors[op.inputs[0]] if op.inputs and op.inputs[0] >= 0 else None
        y = self.raw.tensors[op.outputs[0]]
        x_ok = ("int8", "float32") if op.kind == "QUANTIZE" else ("int8",)
        y_ok = ("float32",) if op.kind == "DEQUANTIZE" else ("int8",)
        if x is not None and (x.dtype not in x_ok or y.dtype not in y_ok):
            return f"{x.dtype} -> {y.dtype}"
        return ""

    def _op_names(self, n: int) -> list[str]:
        payload = self.raw.metadata.get(OP_NAMES_METADATA)
        if payload:
            try:
                names = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                names = None
            if isinstance(names, list) and len(names) == n and all(isinstance(s, str) for s in names):
                return names
        return [""] * n


def read_tflite(path_or_bytes) -> IntGraph:
    """Read an int8 ``.tflite`` (path or bytes) into an IntGraph; ExportError for anything unusable."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        buf = bytes(path_or_bytes)
    else:
        path = Path(path_or_bytes)
        if not path.is_file():
            raise ExportError(f".tflite file {str(path)!r} does not exist")
        buf = path.read_bytes()
    raw = decode(buf)
    try:
        return _Reader(raw).graph()
    except ExportError:
        raise
    except (IndexError, KeyError, ValueError, TypeError, AttributeError, ZeroDivisionError, OverflowError) as e:
        raise ExportError(f"malformed .tflite: {type(e).__name__} ({e}) while building the graph; "
                          "the file is inconsistent, re-export it") from None
