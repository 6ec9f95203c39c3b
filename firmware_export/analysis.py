"""Model analysis: MACs, parameters and activation sizes of an IntGraph (``edgesmith inspect``).

How work is counted (one batch as the graph's shapes say):

* ``macs``: int8 multiply-accumulates of CONV_2D (``out elements * KH * KW * I/groups``),
  DEPTHWISE_CONV_2D (``out elements * KH * KW``) and FULLY_CONNECTED (``out elements * I``);
* ``binary_ops``: the same count for BINARY_CONV_2D, kept apart because a 1-bit MAC is an
  XNOR/popcount (or an add/sub when the input is int8) and costs far less than an int8 MAC;
* ``element_ops``: per-element arithmetic: ADD/MUL, activations, (de)quantize, sign and
  resize (one per output element), pools (one per window element), MEAN (one per input
  element); RESHAPE, TRANSPOSE, CONCATENATION and PAD only move data and count 0.

Requantization after each op is not counted. Parameters are counted once per constant
tensor; bytes are ``Tensor.nbytes`` (1-bit weights packed 8 per byte).
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np

from firmware_export.intgraph import IntGraph, Op

_MAC_KINDS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BINARY_CONV_2D")
_PER_OUTPUT_KINDS = ("ADD", "MUL", "LOGISTIC", "SOFTMAX", "QUANTIZE", "DEQUANTIZE", "SIGN",
                     "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR")
_DATA_MOVEMENT_KINDS = ("RESHAPE", "TRANSPOSE", "CONCATENATION", "PAD")


@dataclasses.dataclass
class OpStats:
    """Work and sizes of one op."""

    index: int
    name: str
    kind: str
    output_shape: tuple[int, ...]
    macs: int
    binary_ops: int
    element_ops: int
    #: parameters of the constants this op reads first (a shared constant counts once)
    param_count: int
    param_bytes: int
    output_bytes: int


@dataclasses.dataclass
class GraphStats:
    """Totals over the graph plus one :class:`OpStats` per op; ``to_dict()`` is JSON-ready."""

    name: str
    graph_hash: str
    ops: list[OpStats]
    macs: int
    binary_ops: int
    element_ops: int
    #: int8 (or wider) weights of conv / depthwise / FC
    weight_params: int
    weight_bytes: int
    #: int32 biases of conv / depthwise / FC / binary conv
    bias_params: int
    bias_bytes: int
    #: 1-bit weights of binary convs, bytes packed 8 per byte
    binary_params: int
    binary_bytes: int
    #: any other constant (e.g. a scalar operand of ADD)
    other_params: int
    other_bytes: int
    #: activation tensor name -> bytes (graph inputs and every op output)
    activation_bytes: dict[str, int]
    op_counts: dict[str, int]

    @property
    def param_count(self) -> int:
        return self.weight_params + self.bias_params + self.binary_params + self.other_params

    @property
    def param_bytes(self) -> int:
        return self.weight_bytes + self.bias_bytes + self.binary_bytes + self.other_bytes

    @property
    def total_activation_bytes(self) -> int:
        return sum(self.activation_bytes.values())

    @property
    def largest_activation(self) -> tuple[str, int]:
        if not self.activation_bytes:
            return ("", 0)
        name = max(self.activation_bytes, key=lambda k: self.activation_bytes[k])
        return name, self.activation_bytes[name]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(param_count=self.param_count, param_bytes=self.param_bytes,
                 total_activation_bytes=self.total_activation_bytes)
        for op in d["ops"]:
            op["output_shape"] = list(op["output_shape"])
        return d


def _elements(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def _op_work(graph: IntGraph, op: Op) -> tuple[int, int, int]:
    """(macs, binary_ops, element_ops) of one op."""
    out = _elements(graph.tensor(op.outputs[0]).shape) if op.outputs else 0
    kind = op.kind
    if kind in _MAC_KINDS:
        w = graph.tensor(op.inputs[1]).shape
        if kind == "FULLY_CONNECTED":
            per_output = w[-1]
        elif kind == "DEPTHWISE_CONV_2D":
            per_output = w[1] * w[2]
        else:  # CONV_2D [O, KH, KW, I/groups], BINARY_CONV_2D [O, KH, KW, I]
            per_output = w[1] * w[2] * w[3]
        work = out * int(per_output)
        return (0, work, 0) if kind == "BINARY_CONV_2D" else (work, 0, 0)
    if kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        fh, fw = op.attrs.get("filter", (1, 1))
        return 0, 0, out * int(fh) * int(fw)
    if kind == "MEAN":
        return 0, 0, _elements(graph.tensor(op.inputs[0]).shape)
    if kind in _PER_OUTPUT_KINDS:
        return 0, 0, out
    return 0, 0, 0  # data movement


def analyse(graph: IntGraph) -> GraphStats:
    """Count MACs, binary ops, element ops, parameters and activation bytes of ``graph``."""
    seen: set[str] = set()
    sizes = {"weight": [0, 0], "bias": [0, 0], "binary": [0, 0], "other": [0, 0]}
    ops: list[OpStats] = []
    for index, op in enumerate(graph.ops):
        macs, binary_ops, element_ops = _op_work(graph, op)
        op_params = op_bytes = 0
        for position, name in enumerate(op.inputs):
            t = graph.tensors.get(name)
            if t is None or not t.is_constant or name in seen:
                continue
            seen.add(name)
            if t.bits == 1:
                role = "binary"
            elif op.kind in _MAC_KINDS and position == 1:
                role = "weight"
            elif op.kind in _MAC_KINDS and position == 2:
                role = "bias"
            else:
                role = "other"
            count = _elements(t.shape)
            sizes[role][0] += count
            sizes[role][1] += t.nbytes
            op_params += count
            op_bytes += t.nbytes
        out = graph.tensor(op.outputs[0]) if op.outputs else None
        ops.append(OpStats(index, op.name or f"{op.kind.lower()}_{index}", op.kind,
                           tuple(out.shape) if out is not None else (),
                           macs, binary_ops, element_ops, op_params, op_bytes,
                           sum(graph.tensor(o).nbytes for o in op.outputs)))
    activations = {t.name: t.nbytes for t in graph.activations()}
    return GraphStats(
        name=graph.name, graph_hash=graph.graph_hash(), ops=ops,
        macs=sum(o.macs for o in ops), binary_ops=sum(o.binary_ops for o in ops),
        element_ops=sum(o.element_ops for o in ops),
        weight_params=sizes["weight"][0], weight_bytes=sizes["weight"][1],
        bias_params=sizes["bias"][0], bias_bytes=sizes["bias"][1],
        binary_params=sizes["binary"][0], binary_bytes=sizes["binary"][1],
        other_params=sizes["other"][0], other_bytes=sizes["other"][1],
        activation_bytes=activations,
        op_counts=dict(Counter(op.kind for op in graph.ops)),
    )


def human_count(n: float) -> str:
    """1234567 -> '1.23M' (decimal units, for operation and parameter counts)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, for memory)."""
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{int(n)} B"


def format_table(stats: GraphStats) -> str:
    """A fixed-width text table: one row per op, then totals and parameter/activation summaries."""
    header = ("#", "op", "kind", "output", "MACs", "bin ops", "elem ops", "params", "param B",
              "out B")
    rows = [header]
    for o in stats.ops:
        rows.append((str(o.index), o.name[:28], o.kind, "x".join(map(str, o.output_shape)) or "-",
                     human_count(o.macs), human_count(o.binary_ops), human_count(o.element_ops),
                     human_count(o.param_count), human_bytes(o.param_bytes),
                     human_bytes(o.output_bytes)))
    rows.append(("", "total", "", "", human_count(stats.macs), human_count(stats.binary_ops),
                 human_count(stats.element_ops), human_count(stats.param_count),
                 human_bytes(stats.param_bytes), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    # text columns left-aligned, numbers right-aligned
    left = {0, 1, 2, 3}
    lines = []
    for r_index, r in enumerate(rows):
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if r_index == 0 or r_index == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    name, size = stats.largest_activation
    counts = ", ".join(f"{k} x{v}" for k, v in sorted(stats.op_counts.items()))
    lines += [
        "",
        f"model {stats.name}  graph {stats.graph_hash[:16]}",
        f"MACs {human_count(stats.macs)} int8, {human_count(stats.binary_ops)} binary, "
        f"{human_count(stats.element_ops)} element ops",
        f"parameters {human_count(stats.param_count)} = weights {human_count(stats.weight_params)} "
        f"({human_bytes(stats.weight_bytes)}) + biases {human_count(stats.bias_params)} "
        f"({human_bytes(stats.bias_bytes)}) + binary {human_count(stats.binary_params)} "
        f"({human_bytes(stats.binary_bytes)} packed) + other {human_count(stats.other_params)} "
        f"({human_bytes(stats.other_bytes)})",
        f"activations {len(stats.activation_bytes)} tensors, "
        f"{human_bytes(stats.total_activation_bytes)} in all, largest {name} "
        f"({human_bytes(size)})",
        f"ops {counts}",
    ]
    return "\n".join(lines)
