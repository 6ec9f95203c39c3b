"""IntGraph -> ``.tflite`` flatbuffer (schema version 3, file identifier ``TFL3``).

Uses the object API generated from TFLite's schema that ships with ``ai-edge-litert``
(``ModelT``, ``SubGraphT``, ``TensorT``, ``OperatorT``, ``BufferT``) and ``flatbuffers``.

Mapping decisions:

* explicit pads become ``SAME``/``VALID`` when they equal TFLite's pads for that shape (average
  pools: when they select the same windows); otherwise a PAD op (zero-point padding; PADV2 with -128 before a max pool)
  is inserted and the conv/pool runs ``VALID``. Average pools with other pads are refused: TFLite
  divides by the in-bounds count, which a PAD op would change.
* CONCATENATION inputs whose quantization differs from the output get an int8 -> int8 QUANTIZE
  first (TFLite's int8 concatenation requires equal quantization; IntGraph's requantizes).
* BINARY_CONV_2D with int8 input is written as CONV_2D with its {-1, +1} int8 weights and alpha
  scales (same integers). SIGN and binary-input BINARY_CONV_2D have no TFLite op: ExportError.
* convolutions without a bias get an all-zero int32 bias (LiteRT's int8 kernels need one).
* inserted tensors carry the suffixes in :data:`INSERTED_SUFFIXES` so the reader folds them back.
* ``graph.graph_hash()`` goes into ``description`` and the metadata entry
  ``edgesmith_graph_hash``; op names (TFLite has none) into ``edgesmith_op_names`` (JSON).
"""
from __future__ import annotations

import json

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb

from edgesmith.errors import ExportError
from firmware_export.intgraph import IntGraph, Op, Tensor

HASH_METADATA = "edgesmith_graph_hash"
OP_NAMES_METADATA = "edgesmith_op_names"
PAD_SUFFIX = "/es_pad"
REQUANT_SUFFIX = "/es_requant"
ZERO_BIAS_SUFFIX = "/es_zero_bias"
INSERTED_SUFFIXES = (PAD_SUFFIX, REQUANT_SUFFIX, ZERO_BIAS_SUFFIX)

_TYPES = {"int8": fb.TensorType.INT8, "int32": fb.TensorType.INT32, "float32": fb.TensorType.FLOAT32,
          "int16": fb.TensorType.INT16, "uint8": fb.TensorType.UINT8}
_ACTS = {"NONE": fb.ActivationFunctionType.NONE, "RELU": fb.ActivationFunctionType.RELU,
         "RELU6": fb.ActivationFunctionType.RELU6, "RELU_N1_TO_1": fb.ActivationFunctionType.RELU_N1_TO_1}
B = fb.BuiltinOperator
O = fb.BuiltinOptions


def tflite_pads(in_hw, kernel, stride, dilation, mode: str) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """TFLite's explicit pads (top, bottom, left, right) and output (h, w) for SAME or VALID."""
    pads, out = [], []
    for i, k, s, d in zip(in_hw, kernel, stride, dilation):
        k_eff = (k - 1) * d + 1
        if mode == "SAME":
            o = -(-i // s)
            total = max((o - 1) * s + k_eff - i, 0)
            pads += [total // 2, total - total // 2]
        else:
            o = (i - k_eff) // s + 1
            pads += [0, 0]
        out.append(o)
    return tuple(pads), tuple(out)


def same_or_valid(in_hw, out_hw, kernel, stride, dilation, pads, equivalent: bool = False) -> str | None:
    """'SAME' or 'VALID' when explicit ``pads`` equal TFLite's pads for that mode, else None.

    With ``equivalent`` it is enough that the windows are the same: the top/left pad and output
    size match (what lies beyond the input is padding either way).
    """
    for mode in ("SAME", "VALID"):
        mode_pads, mode_out = tflite_pads(in_hw, kernel, stride, dilation, mode)
        if tuple(out_hw) != mode_out:
            continue
        if tuple(pads) == mode_pads or (equivalent and (pads[0], pads[2]) == (mode_pads[0], mode_pads[2])):
            return mode
    return None


def _version(op: Op, graph: IntGraph) -> int:
    """Operator version for int8 kernels (TFLite's op_version rules for the cases we write)."""
    kind = op.kind
    x = graph.tensor(op.inputs[0])
    if kind == "CONV_2D":
        w = graph.tensor(op.inputs[1])
        return 5 if w.shape[3] != x.shape[3] else 3  # grouped convolution needs version 5
    if kind == "DEPTHWISE_CONV_2D":
        return 3
    if kind == "FULLY_CONNECTED":
        return 4
    if kind == "TRANSPOSE":
        return 5 if len(x.shape) > 4 else 2
    if kind in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        return 3 if op.attrs.get("half_pixel_centers") else 2
    if kind in ("RESHAPE",):
        return 1
    return 2


class _Writer:
    def __init__(self, graph: IntGraph):
        self.graph = graph
        self.tensors: list = []
        self.index: dict[str, int] = {}
        self.buffers = [fb.BufferT()]  # buffer 0: the empty buffer every activation points to
        self.opcodes: dict[tuple[int, int], int] = {}
        self.codes: list = []
        self.operators: list = []

    # ---------------------------------------------------------------- tensors
    def _buffer(self, data: np.ndarray) -> int:
        buf = fb.BufferT()
        buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
        self.buffers.append(buf)
        return len(self.buffers) - 1

    def tensor(self, name: str) -> int:
        if name in self.index:
            return self.index[name]
        t = self.graph.tensor(name)
        data = None
        if t.is_constant:
            data = np.asarray(t.data).astype(np.dtype(t.dtype).newbyteorder("<"))
        return self.add(name, t.shape, t.dtype, t.scale, t.zero_point, t.quant_axis, data)

    def add(self, name, shape, dtype, scale=None, zero_point=None, quant_axis=None, data=None) -> int:
        tt = fb.TensorT()
        tt.name = name
        tt.shape = [int(s) for s in shape]
        tt.type = _TYPES[dtype]
        tt.buffer = self._buffer(data) if data is not None else 0
        if scale is not None:
            q = fb.QuantizationParametersT()
            q.scale = [float(s) for s in np.asarray(scale, np.float32).reshape(-1)]
            q.zeroPoint = [int(z) for z in np.asarray(zero_point, np.int64).reshape(-1)]
            q.quantizedDimension = int(quant_axis or 0)
            tt.quantization = q
        self.tensors.append(tt)
        self.index[name] = len(self.tensors) - 1
        return self.index[name]

    def const_i32(self, name: str, values) -> int:
        arr = np.asarray(values, dtype="<i4")
        return self.add(name, arr.shape, "int32", data=arr)

    def like(self, name: str, src: Tensor, shape) -> int:
        return self.add(name, shape, src.dtype, src.scale, src.zero_point, src.quant_axis)

    # ---------------------------------------------------------------- operators
    def emit(self, code: int, version: int, inputs, outputs, opt_type=0, options=None) -> None:
        key = (code, version)
        if key not in self.opcodes:
            oc = fb.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = version
            self.codes.append(oc)
            self.opcodes[key] = len(self.codes) - 1
        op = fb.OperatorT()
        op.opcodeIndex = self.opcodes[key]
        op.inputs = [int(i) for i in inputs]
        op.outputs = [int(i) for i in outputs]
        op.builtinOptionsType = opt_type
        op.builtinOptions = options
        self.operators.append(op)

    def zero_bias(self, op: Op) -> int:
        """An all-zero int32 bias: LiteRT's int8 convolutions refuse a missing one."""
        x, wt = self.graph.tensor(op.inputs[0]), self.graph.tensor(op.inputs[1])
        axis = 3 if op.kind == "DEPTHWISE_CONV_2D" else 0
        n = wt.shape[axis]
        w_scale = np.broadcast_to(np.asarray(wt.scale, np.float64).reshape(-1), (n,))
        scale = (x.per_tensor_scale() * w_scale).astype(np.float32)
        return self.add(f"{op.outputs[0]}{ZERO_BIAS_SUFFIX}", (n,), "int32", scale, np.zeros(n, np.int64), 0,
                        np.zeros(n, "<i4"))

    def pad_input(self, op: Op, x_name: str, pads, value: int | None) -> int:
        """Insert PAD (or PADV2 with ``value``) on H/W before ``op``; returns the padded tensor."""
        x = self.graph.tensor(x_name)
        top, bottom, left, right = pads
        shape = (x.shape[0], x.shape[1] + top + bottom, x.shape[2] + left + right, x.shape[3])
        out_name = f"{op.outputs[0]}{PAD_SUFFIX}"
        paddings = self.const_i32(out_name + "/paddings", [[0, 0], [top, bottom], [left, right], [0, 0]])
        out = self.like(out_name, x, shape)
        if value is None:
            self.emit(B.PAD, 2, [self.tensor(x_name), paddings], [out], O.PadOptions, fb.PadOptionsT())
        else:
            const = self.add(out_name + "/value", (), "int8", x.scale, x.zero_point, None,
                             np.array(value, np.int8))
            self.emit(B.PADV2, 2, [self.tensor(x_name), paddings, const], [out], O.PadV2Options, fb.PadV2OptionsT())
        return out


def _spatial(w: _Writer, op: Op, kernel, dilation, pool: bool):
    """(padding enum, input tensor index) for a conv/pool, inserting a PAD op when needed."""
    g = w.graph
    x, y = g.tensor(op.inputs[0]), g.tensor(op.outputs[0])
    stride = tuple(op.attrs.get("stride", (1, 1)))
    pads = tuple(op.attrs.get("pads", (0, 0, 0, 0)))
    mode = same_or_valid(x.shape[1:3], y.shape[1:3], kernel, stride, dilation, pads,
                         equivalent=op.kind == "AVERAGE_POOL_2D")
    if mode is not None:
        return getattr(fb.Padding, mode), w.tensor(op.inputs[0])
    if op.kind == "AVERAGE_POOL_2D":
        raise ExportError(f"op {op.name!r}: AVERAGE_POOL_2D pads {pads} are neither SAME nor VALID for input "
                          f"{x.shape} -> {y.shape}; TFLite averages over in-bounds values only, so a PAD op "
                          "would change the result; use the C emitter or SAME/VALID pads")
    value = -128 if op.kind == "MAX_POOL_2D" else None
    return fb.Padding.VALID, w.pad_input(op, op.inputs[0], pads, value)


def _write_op(w: _Writer, op: Op) -> None:
    g = w.graph
    ins = [w.tensor(n) for n in op.inputs if n and op.kind not in ("CONCATENATION",)]
    act = _ACTS[op.attrs.get("act", "NONE")]
    stride = tuple(op.attrs.get("stride", (1, 1)))
    dilation = tuple(op.attrs.get("dilation", (1, 1)))
    version = _version(op, g)
    out = [w.tensor(n) for n in op.outputs]
    kind = op.kind
    if kind in ("CONV_2D", "BINARY_CONV_2D", "DEPTHWISE_CONV_2D"):
        wt = g.tensor(op.inputs[1])
        padding, xi = _spatial(w, op, wt.shape[1:3], dilation, pool=False)
        bias = ins[2] if len(ins) > 2 else w.zero_bias(op)
        if kind == "DEPTHWISE_CONV_2D":
            o = fb.DepthwiseConv2DOptionsT()
            o.depthMultiplier = int(op.attrs.get("depth_multiplier", 1))
            code, opt_type = B.DEPTHWISE_CONV_2D, O.DepthwiseConv2DOptions
        else:
            o = fb.Conv2DOptionsT()
            code, opt_type = B.CONV_2D, O.Conv2DOptions
            if kind == "BINARY_CONV_2D":
                version = _version(Op("CONV_2D", op.inputs, op.outputs), g)
        o.padding, o.strideH, o.strideW = padding, stride[0], stride[1]
        o.dilationHFactor, o.dilationWFactor = dilation
        o.fusedActivationFunction = act
        w.emit(code, version, [xi, ins[1], bias], out, opt_type, o)
    elif kind == "FULLY_CONNECTED":
        o = fb.FullyConnectedOptionsT()
        o.fusedActivationFunction = act
        x, y = g.tensor(op.inputs[0]), g.tensor(op.outputs[0])
        o.keepNumDims = len(y.shape) == len(x.shape) and len(x.shape) > 2
        w.emit(B.FULLY_CONNECTED, 5 if o.keepNumDims else version, ins[:2] + [ins[2] if len(ins) > 2 else -1],
               out, O.FullyConnectedOptions, o)
    elif kind in ("ADD", "MUL"):
        o = fb.AddOptionsT() if kind == "ADD" else fb.MulOptionsT()
        o.fusedActivationFunction = act
        w.emit(getattr(B, kind), version, ins, out, O.AddOptions if kind == "ADD" else O.MulOptions, o)
    elif kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        kernel = tuple(op.attrs["filter"])
        padding, xi = _spatial(w, op, kernel, (1, 1), pool=True)
        o = fb.Pool2DOptionsT()
        o.padding, o.strideH, o.strideW = padding, stride[0], stride[1]
        o.filterHeight, o.filterWidth = kernel
        o.fusedActivationFunction = act
        w.emit(getattr(B, kind), version, [xi], out, O.Pool2DOptions, o)
    elif kind == "MEAN":
        o = fb.ReducerOptionsT()
        o.keepDims = bool(op.attrs.get("keep_dims", False))
        axes = w.const_i32(op.outputs[0] + "/axes", list(op.attrs["axes"]))
        w.emit(B.MEAN, version, ins + [axes], out, O.ReducerOptions, o)
    elif kind == "RESHAPE":
        shape = list(g.tensor(op.outputs[0]).shape)
        o = fb.ReshapeOptionsT()
        o.newShape = shape
        w.emit(B.RESHAPE, version, ins + [w.const_i32(op.outputs[0] + "/shape", shape)], out, O.ReshapeOptions, o)
    elif kind == "TRANSPOSE":
        perm = w.const_i32(op.outputs[0] + "/perm", list(op.attrs["perm"]))
        w.emit(B.TRANSPOSE, version, ins + [perm], out, O.TransposeOptions, fb.TransposeOptionsT())
    elif kind == "CONCATENATION":
        y = g.tensor(op.outputs[0])
        cat_inputs = []
        for i, name in enumerate(op.inputs):
            t = g.tensor(name)
            if np.float32(t.per_tensor_scale()) == np.float32(y.per_tensor_scale()) and \
                    t.per_tensor_zero_point() == y.per_tensor_zero_point():
                cat_inputs.append(w.tensor(name))
                continue
            rq = w.add(f"{op.outputs[0]}{REQUANT_SUFFIX}{i}", t.shape, "int8", y.scale, y.zero_point)
            w.emit(B.QUANTIZE, 2, [w.tensor(name)], [rq], O.QuantizeOptions, fb.QuantizeOptionsT())
            cat_inputs.append(rq)
        o = fb.ConcatenationOptionsT()
        o.axis = int(op.attrs["axis"])
        o.fusedActivationFunction = act
        w.emit(B.CONCATENATION, version, cat_inputs, out, O.ConcatenationOptions, o)
    elif kind == "PAD":
        paddings = w.const_i32(op.outputs[0] + "/paddings", [list(p) for p in op.attrs["paddings"]])
        w.emit(B.PAD, version, ins + [paddings], out, O.PadOptions, fb.PadOptionsT())
    elif kind in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        o = fb.ResizeBilinearOptionsT() if kind == "RESIZE_BILINEAR" else fb.ResizeNearestNeighborOptionsT()
        o.alignCorners = bool(op.attrs.get("align_corners", False))
        o.halfPixelCenters = bool(op.attrs.get("half_pixel_centers", False))
        size = w.const_i32(op.outputs[0] + "/size", list(op.attrs["size"]))
        opt = O.ResizeBilinearOptions if kind == "RESIZE_BILINEAR" else O.ResizeNearestNeighborOptions
        w.emit(getattr(B, kind), version, ins + [size], out, opt, o)
    elif kind == "SOFTMAX":
        o = fb.SoftmaxOptionsT()
        o.beta = float(op.attrs.get("beta", 1.0))
        w.emit(B.SOFTMAX, version, ins, out, O.SoftmaxOptions, o)
    elif kind == "LOGISTIC":
        w.emit(B.LOGISTIC, version, ins, out)
    elif kind == "QUANTIZE":
        w.emit(B.QUANTIZE, version, ins, out, O.QuantizeOptions, fb.QuantizeOptionsT())
    elif kind == "DEQUANTIZE":
        w.emit(B.DEQUANTIZE, version, ins, out, O.DequantizeOptions, fb.DequantizeOptionsT())
    else:  # checked before writing starts; kept so a new kind cannot be silently dropped
        raise ExportError(f"op {op.name!r}: kind {kind!r} has no .tflite mapping")


def _no_tflite_op(graph: IntGraph) -> list[str]:
    bad = []
    for i, op in enumerate(graph.ops):
        if op.kind == "SIGN" or (op.kind == "BINARY_CONV_2D" and op.attrs.get("binary_input")):
            bad.append(f"#{i} {op.kind} {op.name or op.outputs[0]!r}")
    return bad


def write_tflite(graph: IntGraph) -> bytes:
    """Serialise ``graph`` as a ``.tflite`` model (bytes) that LiteRT and TFLite Micro run."""
    graph.validate()
    bad = _no_tflite_op(graph)
    if bad:
        raise ExportError(f"graph {graph.name!r} has ops with no TFLite equivalent (binary activations): "
                          f"{', '.join(bad)}; use the C emitter (firmware_export.c_emitter) for binary layers")
    w = _Writer(graph)
    for name in graph.inputs:
        w.tensor(name)
    for op in graph.ops:
        _write_op(w, op)
    digest = graph.graph_hash()

    sub = fb.SubGraphT()
    sub.tensors = w.tensors
    sub.inputs = [w.tensor(n) for n in graph.inputs]
    sub.outputs = [w.tensor(n) for n in graph.outputs]
    sub.operators = w.operators
    sub.name = graph.name

    model = fb.ModelT()
    model.version = 3
    model.operatorCodes = w.codes
    model.subgraphs = [sub]
    model.description = f"EdgeSmith IntGraph {graph.name} graph_hash={digest}"
    metadata = []
    for key, payload in ((HASH_METADATA, digest.encode()),
                         (OP_NAMES_METADATA, json.dumps([op.name for op in graph.ops]).encode())):
        m = fb.MetadataT()
        m.name = key
        m.buffer = w._buffer(np.frombuffer(payload, np.uint8))
        metadata.append(m)
    model.metadata = metadata
    model.buffers = w.buffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
