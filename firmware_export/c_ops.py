"""Lowering of IntGraph ops to calls into the hand-written C runtime (``runtime/es_*.c``).

Each lowering turns one op into *structural* declarations (a parameter struct with shapes,
strides, padding; index tables of a resize) and one runtime call. Every quantization-dependent
number (zero points, clamps, requantization multipliers and shifts, lookup tables) is read at run
time from the op's parameter record in the weights table (layouts in
:mod:`firmware_export.c_table`): the call block copies the compiled-in struct, fills its value
fields from the record and passes per-channel arrays and tables as pointers into it. So the code
of two graphs with the same ``structure_hash()`` is the same, and a weight blob can retarget it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from edgesmith.errors import ExportError
from firmware_export import fixedpoint as fp
from firmware_export.c_table import (CONV_FIELDS, ELTWISE_FIELDS, LUT_SIZE, MEAN_FIELDS, PAD_FIELDS,
                                     POOL_FIELDS)
from firmware_export.intgraph import IntGraph, Op, Tensor
from firmware_export.planner import ARENA, MemoryPlan

MAX_DIMS = 6  # ES_MAX_DIMS in es_runtime.h


@dataclasses.dataclass
class OpContext:
    """What a lowering needs: the op, the graph, the memory plan and C naming helpers."""

    graph: IntGraph
    plan: MemoryPlan
    prefix: str
    index: int
    op: Op
    #: constant tensor name -> index in the weight table
    weight_index: dict[str, int]
    #: op index -> table index of its parameter record (see c_table.weight_table)
    record_index: dict[int, int] = dataclasses.field(default_factory=dict)

    def sym(self, suffix: str) -> str:
        return f"{self.prefix}_op{self.index}_{suffix}"

    def t(self, i: int, outputs: bool = False) -> Tensor:
        return self.graph.tensor((self.op.outputs if outputs else self.op.inputs)[i])

    def ptr(self, name: str, writable: bool = False) -> str:
        """C expression for a tensor's data: weight table, caller buffer or arena offset."""
        t = self.graph.tensor(name)
        if t.is_constant:
            if writable:
                raise ExportError(f"op {self.op.name!r} would write into constant {name!r}")
            return f"(const {c_type(t)} *)w[{self.weight_index[name]}]"
        region, off = self.plan.regions[name], self.plan.offsets[name]
        if region == ARENA:
            return f"(int8_t *)(arena + {off})"
        kind, idx = region.split(":")
        if kind == "input":
            if writable:
                raise ExportError(f"tensor {name!r} would be written into the caller's input buffer")
            return f"in[{idx}]"
        return f"out[{idx}]"

    def out(self) -> str:
        return self.ptr(self.op.outputs[0], writable=True)

    def inp(self, i: int = 0) -> str:
        return self.ptr(self.op.inputs[i])

    def bias(self, i: int = 2) -> str:
        ins = self.op.inputs
        return self.ptr(ins[i]) if len(ins) > i and ins[i] else "NULL"

    def record(self, ctype: str) -> str:
        """C expression for this op's parameter record in the weight table."""
        if self.index not in self.record_index:
            raise ExportError(f"op #{self.index} {self.op.kind} {self.op.name!r} has no parameter record")
        return f"(const {ctype} *)w[{self.record_index[self.index]}]"


@dataclasses.dataclass
class Lowered:
    """Constant declarations and the runtime call: an expression assigned to ``rc``, a ``{...}``
    block that assigns ``rc`` itself, or "" when the op needs no code (a RESHAPE view)."""

    decls: list[str]
    call: str


# --------------------------------------------------------------------------- C text helpers

def c_type(t: Tensor) -> str:
    """C element type of a tensor's data as the C code stores it (1-bit weights: packed bytes)."""
    if t.bits == 1:
        return "uint8_t"
    types = {"int8": "int8_t", "int32": "int32_t", "int16": "int16_t", "uint8": "uint8_t"}
    if t.dtype not in types:
        raise ExportError(f"tensor {t.name!r} has dtype {t.dtype}; the C runtime is integer-only "
                          f"(supported: {', '.join(types)}); quantize the model first")
    return types[t.dtype]


def c_array(ctype: str, name: str, values, attr: str = "") -> str:
    """``static const <ctype> name[n] = {...};`` with 16 values a line."""
    vals = [str(int(v)) for v in np.asarray(values).reshape(-1).tolist()]
    if not vals:
        vals = ["0"]
    lines = [", ".join(vals[i:i + 16]) for i in range(0, len(vals), 16)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(vals)}]{attr} = {{\n    {body}\n}};"


def c_struct(ctype: str, name: str, fields: dict) -> str:
    """``static const <ctype> name = { .field = value, ... };`` (dims4 values as tuples)."""
    parts = []
    for key, val in fields.items():
        if isinstance(val, (tuple, list)):
            val = "{" + ", ".join(str(int(v)) for v in val) + "}"
        parts.append(f"    .{key} = {val},")
    return f"static const {ctype} {name} = {{\n" + "\n".join(parts) + "\n};"


def dims4(t: Tensor) -> tuple[int, int, int, int]:
    if len(t.shape) != 4:
        raise ExportError(f"tensor {t.name!r} has shape {t.shape}; this op needs a 4-D NHWC tensor")
    return tuple(int(s) for s in t.shape)


def bound_call(ctx: OpContext, struct_type: str, ctype: str, fields: tuple[str, ...], call: str) -> str:
    """A ``{...}`` block: copy the op's compiled-in struct, fill ``fields`` from the first words of
    its parameter record (``q``), then run ``call`` (which may use ``p`` and ``q``)."""
    lines = ["{", f"        const {ctype} *q = {ctx.record(ctype)};",
             f"        {struct_type} p = {ctx.sym('params')};"]
    lines += [f"        p.{name} = q[{i}];" for i, name in enumerate(fields)]
    lines += [f"        rc = {call};", "    }"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- convolutions

def _conv_params(ctx: OpContext, x: Tensor, w: Tensor, y: Tensor) -> dict:
    """Structure only; the CONV_FIELDS come from the parameter record at run time."""
    op = ctx.op
    sh, sw = op.attrs.get("stride", (1, 1))
    dh, dw = op.attrs.get("dilation", (1, 1))
    top, _bottom, left, _right = op.attrs.get("pads", (0, 0, 0, 0))
    mult = 1
    if op.kind == "DEPTHWISE_CONV_2D":  # as the reference: missing = weight channels / input channels
        mult = int(op.attrs.get("depth_multiplier", w.shape[3] // max(x.shape[3], 1)))
    return {"in": dims4(x), "filter": dims4(w), "out": dims4(y), "stride_h": sh, "stride_w": sw,
            "dilation_h": dh, "dilation_w": dw, "pad_top": top, "pad_left": left,
            "depth_multiplier": mult}


def _per_channel(channels: int) -> str:
    """mult / shift arguments: the record's arrays after the scalar fields."""
    n = len(CONV_FIELDS)
    return f"q + {n}, q + {n + channels}"


def lower_conv(ctx: OpContext) -> Lowered:
    x, w, y = ctx.t(0), ctx.t(1), ctx.t(0, outputs=True)
    decls = [c_struct("es_conv_params", ctx.sym("params"), _conv_params(ctx, x, w, y))]
    args = f"&p, {ctx.inp(0)}, {ctx.inp(1)}, {ctx.bias()}, {_per_channel(int(y.shape[3]))}"
    kind = ctx.op.kind
    if kind == "CONV_2D":
        call = f"es_conv2d_s8({args}, {ctx.out()})"
    elif kind == "DEPTHWISE_CONV_2D":
        call = f"es_depthwise_conv2d_s8({args}, {ctx.out()})"
    elif ctx.op.attrs.get("binary_input"):
        off, _ = ctx.plan.scratch[ctx.index]
        call = f"es_binary_conv2d_xnor({args}, arena + {off}, {ctx.out()})"
    else:
        call = f"es_binary_conv2d_s8({args}, {ctx.out()})"
    return Lowered(decls, bound_call(ctx, "es_conv_params", "int32_t", CONV_FIELDS, call))


def lower_fully_connected(ctx: OpContext) -> Lowered:
    x, w = ctx.t(0), ctx.t(1)
    cout, cin = w.shape
    count = int(np.prod(x.shape))
    if count % cin:
        raise ExportError(f"op {ctx.op.name!r}: input of {count} elements is not rows of {cin}")
    params = {"batches": count // cin, "in_features": cin, "out_features": cout}
    decls = [c_struct("es_fc_params", ctx.sym("params"), params)]
    call = (f"es_fully_connected_s8(&p, {ctx.inp(0)}, {ctx.inp(1)}, {ctx.bias()}, {_per_channel(int(cout))}, "
            f"{ctx.out()})")
    return Lowered(decls, bound_call(ctx, "es_fc_params", "int32_t", CONV_FIELDS, call))


# --------------------------------------------------------------------------- elementwise

def broadcast_strides(out_shape, in_shapes) -> tuple[list[int], list[list[int]]]:
    """Collapsed output dims and per-input element strides (0 on broadcast dims), at most 6 dims."""
    nd = len(out_shape)
    dims = [int(d) for d in out_shape]
    strides = []
    for shape in in_shapes:
        shape = (1,) * (nd - len(shape)) + tuple(int(s) for s in shape)
        st, acc = [0] * nd, 1
        for d in range(nd - 1, -1, -1):
            st[d] = 0 if (shape[d] == 1 and dims[d] != 1) else acc
            acc *= shape[d]
        strides.append(st)
    keep = [d for d in range(nd) if dims[d] != 1]
    dims = [dims[d] for d in keep]
    strides = [[s[d] for d in keep] for s in strides]
    d = len(dims) - 2
    while d >= 0:  # merge d into d+1 where every input is contiguous across them
        if all(s[d] == s[d + 1] * dims[d + 1] for s in strides):
            dims[d + 1] *= dims[d]
            del dims[d]
            for s in strides:
                del s[d]
        d -= 1
    if not dims:
        dims, strides = [1], [[1] for _ in strides]
    if len(dims) > MAX_DIMS:
        raise ExportError(f"broadcast over {len(dims)} dimensions; the C runtime handles {MAX_DIMS}")
    return dims, strides


def _pad6(values) -> list[int]:
    return list(values) + [0] * (MAX_DIMS - len(values))


def lower_eltwise(ctx: OpContext) -> Lowered:
    a, b, y = ctx.t(0), ctx.t(1), ctx.t(0, outputs=True)
    dims, (st_a, st_b) = broadcast_strides(y.shape, [a.shape, b.shape])
    params = {"ndim": len(dims), "out_dims": _pad6(dims), "a_strides": _pad6(st_a), "b_strides": _pad6(st_b)}
    fn = "es_add_s8" if ctx.op.kind == "ADD" else "es_mul_s8"
    decls = [c_struct("es_eltwise_params", ctx.sym("params"), params)]
    call = f"{fn}(&p, {ctx.inp(0)}, {ctx.inp(1)}, {ctx.out()})"
    return Lowered(decls, bound_call(ctx, "es_eltwise_params", "int32_t", ELTWISE_FIELDS, call))


# --------------------------------------------------------------------------- pooling, mean

def lower_pool(ctx: OpContext) -> Lowered:
    x, y = ctx.t(0), ctx.t(0, outputs=True)
    op = ctx.op
    fh, fw = op.attrs["filter"]
    sh, sw = op.attrs.get("stride", (1, 1))
    top, _b, left, _r = op.attrs.get("pads", (0, 0, 0, 0))
    _, h, w, _ = dims4(x)
    for oy in range(y.shape[1]):  # TFLite fails at run time on a window in the padding; fail now
        for ox in range(y.shape[2]):
            iy, ix = oy * sh - top, ox * sw - left
            if min(fh, h - iy) <= max(0, -iy) or min(fw, w - ix) <= max(0, -ix):
                raise ExportError(f"op {op.name!r}: pooling window at output ({oy}, {ox}) lies entirely in "
                                  "the padding; reduce the padding")
    params = {"in": dims4(x), "out": dims4(y), "filter_h": fh, "filter_w": fw, "stride_h": sh, "stride_w": sw,
              "pad_top": top, "pad_left": left}
    fn = "es_avg_pool_s8" if op.kind == "AVERAGE_POOL_2D" else "es_max_pool_s8"
    call = f"{fn}(&p, {ctx.inp(0)}, {ctx.out()})"
    return Lowered([c_struct("es_pool_params", ctx.sym("params"), params)],
                   bound_call(ctx, "es_pool_params", "int32_t", POOL_FIELDS, call))


def lower_mean(ctx: OpContext) -> Lowered:
    x = ctx.t(0)
    shape = tuple(int(s) for s in x.shape)
    axes = sorted({a % len(shape) for a in ctx.op.attrs["axes"]})
    count = int(np.prod([shape[a] for a in axes], dtype=np.int64)) if axes else 1
    real_axes = [a for a in axes if shape[a] != 1]
    if real_axes and real_axes != list(range(real_axes[0], real_axes[-1] + 1)):
        gap = [d for d in range(real_axes[0], real_axes[-1] + 1) if d not in real_axes and shape[d] != 1]
        if gap:
            raise ExportError(f"op {ctx.op.name!r}: MEAN over non-adjacent axes {tuple(axes)} of shape {shape} "
                              "is not supported by the C runtime; transpose the reduced axes together first")
    if real_axes:
        outer = int(np.prod(shape[:real_axes[0]], dtype=np.int64))
        inner = int(np.prod(shape[real_axes[-1] + 1:], dtype=np.int64))
    else:
        outer, inner = int(np.prod(shape, dtype=np.int64)), 1
    params = {"outer": outer, "reduce": count, "inner": inner}
    call = f"es_mean_s8(&p, {ctx.inp(0)}, {ctx.out()})"
    return Lowered([c_struct("es_mean_params", ctx.sym("params"), params)],
                   bound_call(ctx, "es_mean_params", "int32_t", MEAN_FIELDS, call))


# --------------------------------------------------------------------------- shape ops

def lower_reshape(ctx: OpContext) -> Lowered:
    src, dst = ctx.inp(0), ctx.out()
    if src == dst:
        return Lowered([], "")  # a view of the same bytes: nothing to run
    return Lowered([], f"es_copy_s8({ctx.t(0).nbytes}, {src}, {dst})")


def lower_transpose(ctx: OpContext) -> Lowered:
    x, y = ctx.t(0), ctx.t(0, outputs=True)
    perm = [int(p) for p in ctx.op.attrs["perm"]]
    in_strides, acc = [0] * len(x.shape), 1
    for d in range(len(x.shape) - 1, -1, -1):
        in_strides[d] = acc
        acc *= int(x.shape[d])
    dims = [int(y.shape[d]) for d in range(len(perm))]
    src = [in_strides[p] for p in perm]
    keep = [d for d in range(len(dims)) if dims[d] != 1]
    dims, src = [dims[d] for d in keep], [src[d] for d in keep]
    d = len(dims) - 2
    while d >= 0:
        if src[d] == src[d + 1] * dims[d + 1]:
            dims[d + 1] *= dims[d]
            del dims[d], src[d]
        d -= 1
    if not dims:
        dims, src = [1], [1]
    if len(dims) > MAX_DIMS:
        raise ExportError(f"op {ctx.op.name!r}: TRANSPOSE over {len(dims)} dimensions; the C runtime handles {MAX_DIMS}")
    params = {"ndim": len(dims), "dims": _pad6(dims), "src_strides": _pad6(src)}
    return Lowered([c_struct("es_strided_params", ctx.sym("params"), params)],
                   f"es_strided_copy_s8(&{ctx.sym('params')}, {ctx.inp(0)}, {ctx.out()})")


def lower_concat(ctx: OpContext) -> Lowered:
    y = ctx.t(0, outputs=True)
    axis = int(ctx.op.attrs["axis"]) % len(y.shape)
    n = len(ctx.op.inputs)
    ptrs, sizes = [], []
    for name in ctx.op.inputs:
        t = ctx.graph.tensor(name)
        sizes.append(int(np.prod(t.shape[axis:], dtype=np.int64)))
        ptrs.append(ctx.ptr(name))
    outer = int(np.prod(y.shape[:axis], dtype=np.int64))
    decls = [c_array("int32_t", ctx.sym("sizes"), sizes),
             c_struct("es_concat_params", ctx.sym("params"), {"num_inputs": n, "outer": outer})]
    # record: n LUTs of 256, then one use-LUT flag per input (0: same quantization, plain copy)
    lines = ["{", f"        const int8_t *q = {ctx.record('int8_t')};",
             f"        const int8_t *const ins[{n}] = {{{', '.join(ptrs)}}};",
             f"        const int8_t *luts[{n}];"]
    lines += [f"        luts[{i}] = q[{n * LUT_SIZE + i}] ? q + {i * LUT_SIZE} : NULL;" for i in range(n)]
    lines += [f"        rc = es_concat_s8(&{ctx.sym('params')}, {ctx.sym('sizes')}, ins, luts, {ctx.out()});",
              "    }"]
    return Lowered(decls, "\n".join(lines))


def lower_pad(ctx: OpContext) -> Lowered:
    x, y = ctx.t(0), ctx.t(0, outputs=True)
    paddings = [tuple(int(v) for v in p) for p in ctx.op.attrs["paddings"]]
    if len(x.shape) > MAX_DIMS or len(paddings) != len(x.shape):
        raise ExportError(f"op {ctx.op.name!r}: PAD of rank {len(x.shape)} with {len(paddings)} paddings")
    dims_in = [int(s) for s in x.shape] or [1]
    dims_out = [int(s) for s in y.shape] or [1]
    before = [p[0] for p in paddings] or [0]
    params = {"ndim": len(dims_in), "in_dims": _pad6(dims_in), "out_dims": _pad6(dims_out),
              "before": _pad6(before)}
    call = f"es_pad_s8(&p, {ctx.inp(0)}, {ctx.out()})"
    return Lowered([c_struct("es_pad_params", ctx.sym("params"), params)],
                   bound_call(ctx, "es_pad_params", "int32_t", PAD_FIELDS, call))


def nearest_index(out_size: int, in_size: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """TFLite ``GetNearestNeighbor`` in float32, as the reference computes it."""
    if align_corners and out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
    pos = (np.arange(out_size, dtype=np.float32) + np.float32(0.5 if half_pixel else 0.0)) * scale
    idx = fp.round_half_away_array(pos) if align_corners else np.floor(pos)
    idx = np.minimum(idx.astype(np.int64), in_size - 1)
    return np.maximum(idx, 0) if half_pixel else idx


def lower_resize(ctx: OpContext) -> Lowered:
    x, y = ctx.t(0), ctx.t(0, outputs=True)
    ac, hp = bool(ctx.op.attrs.get("align_corners")), bool(ctx.op.attrs.get("half_pixel_centers"))
    (_, ih, iw, _), (_, oh, ow, _) = dims4(x), dims4(y)
    if ctx.op.kind == "RESIZE_NEAREST_NEIGHBOR":
        decls = [c_array("int32_t", ctx.sym("ys"), nearest_index(oh, ih, ac, hp)),
                 c_array("int32_t", ctx.sym("xs"), nearest_index(ow, iw, ac, hp)),
                 c_struct("es_resize_params", ctx.sym("params"), {"in": dims4(x), "out": dims4(y)})]
        return Lowered(decls, f"es_resize_nearest_s8(&{ctx.sym('params')}, {ctx.sym('ys')}, {ctx.sym('xs')}, "
                              f"{ctx.inp(0)}, {ctx.out()})")

    def scale_10(in_size: int, out_size: int) -> int:
        if ac and out_size > 1:
            return ((1 << 10) * (in_size - 1) + (out_size - 1) // 2) // (out_size - 1)
        return ((1 << 10) * in_size + out_size // 2) // out_size

    params = {"in": dims4(x), "out": dims4(y), "height_scale_10": scale_10(ih, oh),
              "width_scale_10": scale_10(iw, ow), "half_pixel_centers": int(hp)}
    return Lowered([c_struct("es_bilinear_params", ctx.sym("params"), params)],
                   f"es_resize_bilinear_s8(&{ctx.sym('params')}, {ctx.inp(0)}, {ctx.out()})")


# --------------------------------------------------------------------------- tables

def lower_lut(ctx: OpContext) -> Lowered:
    x, y = ctx.t(0), ctx.t(0, outputs=True)
    if x.dtype != "int8" or y.dtype != "int8":
        raise ExportError(f"op {ctx.op.name!r} ({ctx.op.kind}) converts {x.dtype} -> {y.dtype}; inside the C "
                          "model only int8 -> int8 is supported (float edges are stripped at graph inputs/outputs)")
    return Lowered([], f"es_lut_s8({x.nbytes}, {ctx.record('int8_t')}, {ctx.inp(0)}, {ctx.out()})")


def lower_softmax(ctx: OpContext) -> Lowered:
    x = ctx.t(0)
    depth = int(x.shape[-1])
    decls = [c_struct("es_softmax_params", ctx.sym("params"), {"rows": x.nbytes // depth, "depth": depth})]
    return Lowered(decls, f"es_softmax_s8(&{ctx.sym('params')}, {ctx.record('int32_t')}, {ctx.inp(0)}, {ctx.out()})")


#: op kind -> lowering; DEQUANTIZE and float QUANTIZE only exist at the graph edges (stripped)
LOWERINGS: dict[str, Callable[[OpContext], Lowered]] = {
    "CONV_2D": lower_conv, "DEPTHWISE_CONV_2D": lower_conv, "BINARY_CONV_2D": lower_conv,
    "FULLY_CONNECTED": lower_fully_connected, "ADD": lower_eltwise, "MUL": lower_eltwise,
    "AVERAGE_POOL_2D": lower_pool, "MAX_POOL_2D": lower_pool, "MEAN": lower_mean,
    "RESHAPE": lower_reshape, "TRANSPOSE": lower_transpose, "CONCATENATION": lower_concat, "PAD": lower_pad,
    "RESIZE_NEAREST_NEIGHBOR": lower_resize, "RESIZE_BILINEAR": lower_resize,
    "LOGISTIC": lower_lut, "QUANTIZE": lower_lut, "SIGN": lower_lut, "SOFTMAX": lower_softmax,
}
