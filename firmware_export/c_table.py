"""The weights table of a C model: graph constants, one parameter record per op, an I/O record.

Generated C (:mod:`firmware_export.c_emitter`) compiles in only what the *structure* of a graph
fixes: shapes, strides, loop bounds, kernel choice, arena offsets. Every number that follows from
the weights or the quantization parameters is read at run time through one table of pointers,
so a weight blob (:mod:`firmware_export.blob`) can replace all of it after the same architecture
was retrained and requantized (every scale and zero point changed). The table is, in order:

1. the graph's constants (weights, biases) in ``graph.constants()`` order, as the emitter stores
   them (1-bit weights packed 8 per byte, see :func:`pack_signs`);
2. one **parameter record** per op that has quantization-dependent values, in op order, laid out
   as below (C = output channels). Scalar fields carry the name of the runtime struct field they
   fill (``es_conv_params.input_offset`` ...):

==============================  =====  ===============================================================
op kind                         dtype  record
==============================  =====  ===============================================================
CONV_2D, DEPTHWISE_CONV_2D,     int32  input_offset, output_offset, act_min, act_max, mult[C], shift[C]
BINARY_CONV_2D, FULLY_CONNECTED
ADD, MUL                        int32  a_offset, b_offset, output_offset, act_min, act_max, left_shift,
                                       a_mult, a_shift, b_mult, b_shift, out_mult, out_shift
AVERAGE_POOL_2D, MAX_POOL_2D    int32  act_min, act_max
MEAN                            int32  input_offset, output_offset, mult, shift
PAD                             int32  pad_value
CONCATENATION (n inputs)        int8   lut_0[256] ... lut_{n-1}[256], use_lut_0 ... use_lut_{n-1}
                                       (use_lut_i = 0: input i has the output's quantization, copy it)
LOGISTIC, QUANTIZE, SIGN        int8   lut[256] (index = input value + 128)
SOFTMAX                         int32  exp_lut[256] (see es_softmax_s8 in es_runtime.h)
RESHAPE, TRANSPOSE, RESIZE_*    —      no record: their C code does not depend on quantization
==============================  =====  ===============================================================

3. last, one **I/O record** (int32): for each graph input, then each graph output (after float
   edges are stripped), its zero point and its float32 scale as raw IEEE-754 bits. The model
   code never reads it; the application does, to quantize inputs and dequantize outputs with
   the values of the model that is running (after an update they differ from the compiled-in
   ``<PREFIX>_INPUT0_SCALE`` defines). :func:`decode_io_record` reads it back.

Every value is computed here with the same expressions as :mod:`firmware_export.reference`, so
the device stays integer-only and bit-exact. The device trusts record values as it trusts
weights: the blob's CRCs and the Ed25519 signature (checked by the flasher and the edge agent
before a slot is written) are what guard them. :func:`weight_table` is the one place that defines
the order; the C emitter and the blob writer both call it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from edgesmith.errors import ExportError
from firmware_export import fixedpoint as fp
from firmware_export import reference
from firmware_export.intgraph import IntGraph, Op, Tensor

#: scalar fields at the start of each int32 record, named after the runtime struct fields
CONV_FIELDS = ("input_offset", "output_offset", "act_min", "act_max")
ELTWISE_FIELDS = ("a_offset", "b_offset", "output_offset", "act_min", "act_max", "left_shift",
                  "a_mult", "a_shift", "b_mult", "b_shift", "out_mult", "out_shift")
POOL_FIELDS = ("act_min", "act_max")
MEAN_FIELDS = ("input_offset", "output_offset", "mult", "shift")
PAD_FIELDS = ("pad_value",)
LUT_SIZE = 256

CONV_KINDS = ("CONV_2D", "DEPTHWISE_CONV_2D", "BINARY_CONV_2D", "FULLY_CONNECTED")
LUT_KINDS = ("LOGISTIC", "QUANTIZE", "SIGN")
#: op kinds whose C code needs no record
NO_RECORD_KINDS = ("RESHAPE", "TRANSPOSE", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR")


@dataclasses.dataclass
class WeightTable:
    """The table in C order: ``entries[:constant_count]`` are graph constants, the rest records."""

    entries: list[Tensor]
    constant_count: int
    #: op index -> table index of its parameter record
    record_index: dict[int, int]

    @property
    def io_index(self) -> int:
        """Table index of the I/O record (always the last entry)."""
        return len(self.entries) - 1


# --------------------------------------------------------------------------- graph edges

def strip_float_edges(graph: IntGraph) -> IntGraph:
    """The graph without QUANTIZE (float32 -> int8) on its inputs and DEQUANTIZE on its outputs.

    Raises ExportError when a float tensor is used anywhere else (the C model is integer-only).
    """
    ops = list(graph.ops)
    inputs, outputs = list(graph.inputs), list(graph.outputs)
    consumers, producers = graph.consumers(), graph.producers()
    drop: set[int] = set()
    for i, name in enumerate(inputs):
        if graph.tensor(name).dtype != "float32":
            continue
        users = consumers.get(name, [])
        if len(users) != 1 or ops[users[0]].kind != "QUANTIZE":
            raise ExportError(f"graph input {name!r} is float32 but is not read by exactly one QUANTIZE op; "
                              "the C model takes int8 inputs: quantize the input in the graph")
        drop.add(users[0])
        inputs[i] = ops[users[0]].outputs[0]
    for j, name in enumerate(outputs):
        if graph.tensor(name).dtype != "float32":
            continue
        k = producers.get(name)
        if k is None or ops[k].kind != "DEQUANTIZE" or consumers.get(name):
            raise ExportError(f"graph output {name!r} is float32 but does not come from a final DEQUANTIZE; "
                              "the C model returns int8 outputs")
        drop.add(k)
        outputs[j] = ops[k].inputs[0]
    if not drop:
        return graph
    kept = [op for k, op in enumerate(ops) if k not in drop]
    used = set(inputs) | set(outputs) | {n for op in kept for n in op.inputs + op.outputs}
    tensors = {n: t for n, t in graph.tensors.items() if n in used}
    return IntGraph(tensors=tensors, ops=kept, inputs=inputs, outputs=outputs, name=graph.name)


# --------------------------------------------------------------------------- value helpers

def pack_signs(data: np.ndarray) -> np.ndarray:
    """1-bit weights as the weight blob stores them: MSB first along the last axis, 1 = +1."""
    return np.packbits(np.asarray(data) > 0, axis=-1, bitorder="big")


def _q(t: Tensor) -> tuple[float, int]:
    return t.per_tensor_scale(), t.per_tensor_zero_point()


def _f32(x: float) -> float:
    return float(np.float32(x))


def _act(op: Op, t: Tensor) -> tuple[int, int]:
    scale, zp = _q(t)
    return fp.activation_range(op.attrs.get("act", "NONE"), scale, zp)


def reference_lut(kind: str, attrs: dict, src: Tensor, dst: Tensor) -> np.ndarray:
    """The 256-entry table of an element-wise int8 op, computed by the reference interpreter."""
    x = Tensor("x", (256,), "int8", scale=src.scale, zero_point=src.zero_point)
    y = Tensor("y", (256,), "int8", scale=dst.scale, zero_point=dst.zero_point)
    g = IntGraph(tensors={"x": x, "y": y}, ops=[Op(kind, ["x"], ["y"], dict(attrs))], inputs=["x"], outputs=["y"])
    return reference.run(g, {"x": np.arange(-128, 128, dtype=np.int8)})["y"].astype(np.int64)


def softmax_exp_table(input_scale: float, beta: float) -> np.ndarray:
    """exp_on_negative_values of every row-max difference 0..255 (Q0.31; 0 below diff_min)."""
    diff_bits = 5
    multiplier, left_shift = fp.preprocess_softmax_scaling(beta, _f32(input_scale), diff_bits)
    diff_min = -fp.calculate_input_radius(diff_bits, left_shift)
    diff = -np.arange(256, dtype=np.int64)
    exps = fp.exp_on_negative_values(fp.multiply_by_quantized_multiplier(diff, multiplier, left_shift), diff_bits)
    return np.where(diff >= diff_min, exps, 0)


def channel_multipliers(op: Op, x: Tensor, w: Tensor, y: Tensor, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (multiplier, shift) exactly as reference._requantize_channels."""
    in_scale, out_scale = np.float32(x.per_tensor_scale()), np.float32(y.per_tensor_scale())
    w_scales = np.asarray(w.scale, np.float32).reshape(-1)
    if w.zero_point is not None and np.any(np.asarray(w.zero_point) != 0):
        raise ExportError(f"weights {w.name!r} have a non-zero zero point; int8 weights must be symmetric")
    if w_scales.size == 1 and op.kind == "FULLY_CONNECTED":
        reals = [float(np.float32(in_scale * w_scales[0])) / float(out_scale)]
    else:
        reals = [float(in_scale) * float(s) / float(out_scale) for s in w_scales]
    mult, shift = fp.quantize_multipliers(reals)
    if mult.size == 1:
        mult, shift = np.repeat(mult, channels), np.repeat(shift, channels)
    if mult.size != channels:
        raise ExportError(f"op {op.name!r}: {mult.size} weight scales for {channels} output channels")
    return np.asarray(mult, np.int64), np.asarray(shift, np.int64)


# --------------------------------------------------------------------------- records

def _conv_record(g: IntGraph, op: Op) -> np.ndarray:
    x, w, y = g.tensor(op.inputs[0]), g.tensor(op.inputs[1]), g.tensor(op.outputs[0])
    if op.kind == "BINARY_CONV_2D" and op.attrs.get("binary_input") and _q(x) != (1.0, 0):
        raise ExportError(f"op {op.name!r}: binary_input needs a SIGN output (scale 1, zero point 0), "
                          f"got {x.name!r} with {_q(x)}")
    channels = int(w.shape[0]) if op.kind == "FULLY_CONNECTED" else int(y.shape[3])
    mult, shift = channel_multipliers(op, x, w, y, channels)
    lo, hi = _act(op, y)
    head = [-x.per_tensor_zero_point(), y.per_tensor_zero_point(), lo, hi]
    return np.concatenate([head, mult, shift])


def _eltwise_record(g: IntGraph, op: Op) -> np.ndarray:
    (sa, za), (sb, zb), (so, zo) = (_q(g.tensor(n)) for n in (op.inputs[0], op.inputs[1], op.outputs[0]))
    lo, hi = _act(op, g.tensor(op.outputs[0]))
    if op.kind == "ADD":
        left_shift = 20
        twice_max = 2.0 * float(max(np.float32(sa), np.float32(sb)))
        m1, s1 = fp.quantize_multiplier(_f32(sa) / twice_max)
        m2, s2 = fp.quantize_multiplier(_f32(sb) / twice_max)
        mo, s_o = fp.quantize_multiplier(twice_max / ((1 << left_shift) * _f32(so)))
        rescale = [left_shift, m1, s1, m2, s2, mo, s_o]
    else:
        m, s = fp.quantize_multiplier(_f32(sa) * _f32(sb) / _f32(so))
        rescale = [0, 0, 0, 0, 0, m, s]
    return np.array([-za, -zb, zo, lo, hi] + rescale)


def _mean_record(g: IntGraph, op: Op) -> np.ndarray:
    x, y = g.tensor(op.inputs[0]), g.tensor(op.outputs[0])
    shape = tuple(int(s) for s in x.shape)
    axes = sorted({a % len(shape) for a in op.attrs["axes"]})
    count = int(np.prod([shape[a] for a in axes], dtype=np.int64)) if axes else 1
    (si, zi), (so, zo) = _q(x), _q(y)
    # reference._mean (TFLM QuantizedMeanOrSum, also for equal quantization): 1/count folded in
    mult, shift = fp.quantize_multiplier(_f32(si) / _f32(so))
    num_shift = min(count.bit_length() - 1, 32, 31 + shift)
    mult = ((mult << num_shift) if num_shift >= 0 else (mult >> -num_shift)) // count
    return np.array([-zi, zo, int(mult), int(shift - num_shift)])


def _concat_record(g: IntGraph, op: Op) -> np.ndarray:
    y = g.tensor(op.outputs[0])
    act = op.attrs.get("act", "NONE")
    luts, use = [], []
    for name in op.inputs:
        lut = reference_lut("CONCATENATION", {"axis": 0, "act": act}, g.tensor(name), y)
        luts.append(lut)
        use.append(0 if np.array_equal(lut, np.arange(-128, 128)) else 1)
    return np.concatenate(luts + [np.array(use)])


def _lut_record(g: IntGraph, op: Op) -> np.ndarray:
    x, y = g.tensor(op.inputs[0]), g.tensor(op.outputs[0])
    if x.dtype != "int8" or y.dtype != "int8":
        raise ExportError(f"op {op.name!r} ({op.kind}) converts {x.dtype} -> {y.dtype}; inside the C "
                          "model only int8 -> int8 is supported (float edges are stripped at graph inputs/outputs)")
    return reference_lut(op.kind, op.attrs, x, y)


def _softmax_record(g: IntGraph, op: Op) -> np.ndarray:
    x, y = g.tensor(op.inputs[0]), g.tensor(op.outputs[0])
    if _q(y) != (1.0 / 256.0, -128):
        raise ExportError(f"op {op.name!r}: SOFTMAX output must have scale 1/256 and zero point -128 "
                          f"(TFLite int8), got {_q(y)}")
    return softmax_exp_table(x.per_tensor_scale(), float(op.attrs.get("beta", 1.0)))


def op_record(graph: IntGraph, op: Op) -> np.ndarray | None:
    """The parameter record of one op (int8 or int32 array, layout in the module docstring), or
    None for op kinds whose C code does not depend on quantization."""
    kind = op.kind
    if kind in CONV_KINDS:
        values, dtype = _conv_record(graph, op), np.int32
    elif kind in ("ADD", "MUL"):
        values, dtype = _eltwise_record(graph, op), np.int32
    elif kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        values, dtype = np.array(_act(op, graph.tensor(op.outputs[0]))), np.int32
    elif kind == "MEAN":
        values, dtype = _mean_record(graph, op), np.int32
    elif kind == "PAD":
        values, dtype = np.array([graph.tensor(op.outputs[0]).per_tensor_zero_point()]), np.int32
    elif kind == "CONCATENATION":
        values, dtype = _concat_record(graph, op), np.int8
    elif kind in LUT_KINDS:
        values, dtype = _lut_record(graph, op), np.int8
    elif kind == "SOFTMAX":
        values, dtype = _softmax_record(graph, op), np.int32
    elif kind in NO_RECORD_KINDS:
        return None
    else:
        raise ExportError(f"op {op.name!r}: kind {kind} has no C kernel, so no parameter record")
    info = np.iinfo(dtype)
    values = np.asarray(values, np.int64)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise ExportError(f"op {op.name!r} ({kind}): a parameter does not fit {np.dtype(dtype).name}")
    return values.astype(dtype)


def io_record(graph: IntGraph) -> np.ndarray:
    """int32 [zero_point, scale bits] per graph input, then per graph output (``graph`` stripped)."""
    words = []
    for name in graph.inputs + graph.outputs:
        t = graph.tensor(name)
        bits = int(np.array([t.per_tensor_scale()], np.float32).view(np.int32)[0])
        words += [t.per_tensor_zero_point(), bits]
    return np.array(words, np.int32)


def decode_io_record(data: np.ndarray) -> list[tuple[float, int]]:
    """(scale, zero point) per graph input, then per graph output, from an I/O record."""
    words = np.asarray(data, np.int32).reshape(-1, 2)
    scales = words[:, 1].copy().view(np.float32)
    return [(float(s), int(z)) for s, z in zip(scales, words[:, 0])]


def weight_table(graph: IntGraph) -> WeightTable:
    """The table a C model of ``graph`` reads, in the order the generated code indexes it.

    Float edges are stripped first, as the C emitter does. Records are ``Tensor`` objects named
    ``"<op name or kind>#<op index>.params"`` (1-D, int8 or int32, no quantization), then the
    I/O record ``"io.quantization"``.
    """
    g = strip_float_edges(graph)
    consts = g.constants()
    entries: list[Tensor] = list(consts)
    record_index: dict[int, int] = {}
    for k, op in enumerate(g.ops):
        rec = op_record(g, op)
        if rec is None:
            continue
        record_index[k] = len(entries)
        dtype = "int8" if rec.dtype == np.int8 else "int32"
        entries.append(Tensor(f"{op.name or op.kind}#{k}.params", (int(rec.size),), dtype, data=rec,
                              bits=8 if dtype == "int8" else 32))
    io = io_record(g)
    entries.append(Tensor("io.quantization", (int(io.size),), "int32", data=io, bits=32))
    return WeightTable(entries, len(consts), record_index)


__all__ = ["CONV_FIELDS", "ELTWISE_FIELDS", "LUT_SIZE", "MEAN_FIELDS", "PAD_FIELDS", "POOL_FIELDS",
           "WeightTable", "channel_multipliers", "decode_io_record", "io_record", "op_record",
           "pack_signs", "reference_lut",
           "softmax_exp_table", "strip_float_edges", "weight_table"]
