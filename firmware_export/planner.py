"""Static memory plan for an IntGraph's activations: one arena, offsets fixed at export time.

How a plan is made (:func:`plan_memory`):

1. Lifetimes from the op order: a tensor is live from the op that writes it to the last op that
   reads it (graph outputs stay live to the end). Graph inputs and outputs live in the caller's
   buffers (regions ``input:<i>`` / ``output:<j>``), everything else in the ``arena``.
2. In-place reuse where legal: a RESHAPE output is a view of its input (same bytes, no copy)
   unless it is a graph output; an elementwise op (:data:`IN_PLACE_KINDS`) writes its output
   over an int8 input of the same size whose storage is read by nobody after this op.
3. Buffers (tensors sharing storage, plus per-op scratch) are placed greedily, largest first
   (TFLite Micro's GreedyMemoryPlanner order), each into the smallest free gap among the
   buffers whose lifetimes overlap it (best fit), offsets and sizes aligned to 16 bytes.

:func:`check_plan` re-derives lifetimes from the graph and proves that no two simultaneously live
tensors overlap unless the sharing is one of the legal in-place forms above. Plans serialise to
``memory.json`` with :meth:`MemoryPlan.to_json` / :meth:`MemoryPlan.from_json`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from edgesmith.errors import ExportError
from firmware_export.intgraph import IntGraph, Op

ALIGNMENT = 16
ARENA = "arena"
#: ops whose output element i depends only on input element i (read before written)
IN_PLACE_KINDS = ("ADD", "MUL", "LOGISTIC", "QUANTIZE", "SIGN")
FORMAT = "edgesmith-memory-plan"
FORMAT_VERSION = 1


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def op_scratch_bytes(graph: IntGraph, op: Op) -> int:
    """Scratch bytes a kernel needs while it runs (0 for most ops).

    BINARY_CONV_2D with sign input packs the whole input to bits first (XNOR/popcount path).
    """
    if op.kind == "BINARY_CONV_2D" and op.attrs.get("binary_input"):
        n, h, w, c = graph.tensor(op.inputs[0]).shape
        return int(n * h * w * ((c + 7) // 8))
    return 0


@dataclasses.dataclass
class MemoryPlan:
    """Where every activation lives. ``offsets``/``regions`` cover every activation tensor."""

    graph_hash: str
    arena_bytes: int
    offsets: dict[str, int]
    sizes: dict[str, int]
    regions: dict[str, str]
    #: tensor -> (first op, last op); graph inputs start at -1, graph outputs end at len(ops)
    lifetimes: dict[str, tuple[int, int]]
    #: op index -> (offset, bytes) of its scratch buffer in the arena
    scratch: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)
    alignment: int = ALIGNMENT
    #: the most bytes live at any one op (a lower bound for any arena)
    peak_live_bytes: int = 0
    #: the arena without any reuse: every arena tensor (and scratch) its own bytes (an upper bound)
    no_reuse_bytes: int = 0

    def to_json(self) -> str:
        """``memory.json`` text."""
        tensors = [{"name": n, "region": self.regions[n], "offset": self.offsets[n], "bytes": self.sizes[n],
                    "first_op": self.lifetimes[n][0], "last_op": self.lifetimes[n][1]} for n in self.regions]
        doc = {"format": FORMAT, "version": FORMAT_VERSION, "graph_hash": self.graph_hash,
               "alignment": self.alignment, "arena_bytes": self.arena_bytes,
               "peak_live_bytes": self.peak_live_bytes, "no_reuse_bytes": self.no_reuse_bytes,
               "tensors": tensors,
               "scratch": [{"op": k, "offset": v[0], "bytes": v[1]} for k, v in sorted(self.scratch.items())]}
        return json.dumps(doc, indent=1)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_json(cls, text: str) -> "MemoryPlan":
        """Parse ``memory.json`` text written by :meth:`to_json`."""
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION:
                raise ExportError(f"memory plan format {doc.get('format')!r} v{doc.get('version')} is not "
                                  f"{FORMAT!r} v{FORMAT_VERSION}; re-export the model")
            ts = doc["tensors"]
            return cls(graph_hash=doc["graph_hash"], arena_bytes=int(doc["arena_bytes"]),
                       offsets={t["name"]: int(t["offset"]) for t in ts},
                       sizes={t["name"]: int(t["bytes"]) for t in ts},
                       regions={t["name"]: t["region"] for t in ts},
                       lifetimes={t["name"]: (int(t["first_op"]), int(t["last_op"])) for t in ts},
                       scratch={int(s["op"]): (int(s["offset"]), int(s["bytes"])) for s in doc["scratch"]},
                       alignment=int(doc["alignment"]), peak_live_bytes=int(doc.get("peak_live_bytes", 0)),
                       no_reuse_bytes=int(doc.get("no_reuse_bytes", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise ExportError(f"memory plan JSON is malformed ({type(e).__name__}: {e}); re-export the model") from None


def tensor_lifetimes(graph: IntGraph) -> dict[str, tuple[int, int]]:
    """Activation tensor -> (op that writes it, last op that reads it); inputs -1, outputs len(ops)."""
    end = len(graph.ops)
    life: dict[str, list[int]] = {name: [-1, -1] for name in graph.inputs}
    for i, op in enumerate(graph.ops):
        for name in op.inputs:
            if name and name in life:
                life[name][1] = max(life[name][1], i)
        for name in op.outputs:
            if name in life and name not in graph.inputs:
                raise ExportError(f"tensor {name!r} is written twice (again by op #{i} {op.kind}); "
                                  "each tensor must have one producer")
            life[name] = [i, i]
    for name in graph.outputs:
        if name not in life:
            raise ExportError(f"graph output {name!r} is never written")
        life[name][1] = end
    for name, (first, last) in life.items():
        life[name][1] = max(first, last)
    return {k: (v[0], v[1]) for k, v in life.items()}


class _Groups:
    """Union of tensors that share storage; tracks the group's region and lifetime."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        while self.parent.get(name, name) != name:
            name = self.parent[name]
        return name

    def join(self, member: str, root_of: str) -> None:
        self.parent[member] = self.find(root_of)


def _regions(graph: IntGraph, in_place: bool = True) -> tuple[dict[str, str], _Groups]:
    """Region of every activation and the storage groups (views and in-place outputs)."""
    life = tensor_lifetimes(graph)
    regions: dict[str, str] = {}
    for i, name in enumerate(graph.inputs):
        regions[name] = f"input:{i}"
    for j, name in enumerate(graph.outputs):
        regions.setdefault(name, f"output:{j}")
    groups = _Groups()
    members: dict[str, list[str]] = {}

    def group_last(root: str) -> int:
        return max(life[m][1] for m in members[root])

    for name in graph.inputs:
        members[name] = [name]
    for name in graph.outputs:
        members.setdefault(name, [name])
    for k, op in enumerate(graph.ops):
        for out in op.outputs:
            if out in regions:  # a graph output: the caller's buffer
                members.setdefault(out, [out])
                continue
            src = op.inputs[0] if op.inputs else ""
            joined = False
            if in_place and op.kind == "RESHAPE" and src in regions:
                regions[out] = regions[src]
                root = groups.find(src)
                groups.join(out, root)
                members[root].append(out)
                joined = True
            elif in_place and op.kind in IN_PLACE_KINDS:
                nbytes = graph.tensor(out).nbytes
                for cand in op.inputs:
                    ct = graph.tensors.get(cand)
                    if (ct is None or ct.is_constant or regions.get(cand) != ARENA or ct.dtype != "int8"
                            or graph.tensor(out).dtype != "int8" or ct.nbytes != nbytes
                            or tuple(ct.shape) != tuple(graph.tensor(out).shape)):
                        continue
                    root = groups.find(cand)
                    if group_last(root) == k:
                        regions[out] = ARENA
                        groups.join(out, root)
                        members[root].append(out)
                        joined = True
                        break
            if not joined:
                regions[out] = ARENA
                members[out] = [out]
    return regions, groups


def plan_memory(graph: IntGraph, alignment: int = ALIGNMENT, in_place: bool = True) -> MemoryPlan:
    """Lay out every activation of ``graph`` in one arena (see the module docstring).

    ``in_place=False`` turns off views and in-place outputs (every tensor its own buffer), e.g.
    to measure what reuse saves.
    """
    if alignment < 1 or alignment & (alignment - 1):
        raise ExportError(f"arena alignment must be a power of two, got {alignment}")
    graph.validate()
    life = tensor_lifetimes(graph)
    regions, groups = _regions(graph, in_place)
    sizes = {name: graph.tensor(name).nbytes for name in life}
    # buffers: arena storage groups, then scratch
    buffers: dict[str, dict] = {}
    for name in life:
        root = groups.find(name)
        if regions[name] != ARENA:
            continue
        b = buffers.setdefault(root, {"names": [], "size": 0, "first": life[name][0], "last": life[name][1]})
        b["names"].append(name)
        b["size"] = max(b["size"], _align(sizes[name], alignment))
        b["first"] = min(b["first"], life[name][0])
        b["last"] = max(b["last"], life[name][1])
    for k, op in enumerate(graph.ops):
        n = op_scratch_bytes(graph, op)
        if n:
            buffers[f"#scratch{k}"] = {"names": [], "size": _align(n, alignment), "first": k, "last": k, "op": k}
    order = sorted(buffers.items(), key=lambda kv: (-kv[1]["size"], kv[1]["first"], kv[0]))
    placed: list[dict] = []
    for _, buf in order:
        conflicts = sorted((p for p in placed if p["first"] <= buf["last"] and buf["first"] <= p["last"]),
                           key=lambda p: p["offset"])
        best_gap, best_offset, cursor = None, None, 0
        for p in conflicts:
            gap = p["offset"] - cursor
            if gap >= buf["size"] and (best_gap is None or gap < best_gap):
                best_gap, best_offset = gap, cursor
            cursor = max(cursor, p["offset"] + p["size"])
        buf["offset"] = best_offset if best_offset is not None else cursor
        placed.append(buf)
    arena = max((b["offset"] + b["size"] for b in placed), default=0)
    offsets = {name: 0 for name in life}
    scratch = {}
    for b in placed:
        for name in b["names"]:
            offsets[name] = b["offset"]
        if "op" in b:
            scratch[b["op"]] = (b["offset"], b["size"])
    no_reuse = sum(_align(sizes[n], alignment) for n in life if regions[n] == ARENA)
    no_reuse += sum(size for _, size in scratch.values())
    peak = max((sum(b["size"] for b in placed if b["first"] <= k <= b["last"]) for k in range(len(graph.ops))),
               default=0)
    return MemoryPlan(graph_hash=graph.graph_hash(), arena_bytes=int(arena), offsets=offsets, sizes=sizes,
                      regions=regions, lifetimes=life, scratch=scratch, alignment=alignment,
                      peak_live_bytes=int(peak), no_reuse_bytes=int(no_reuse))


def _view_roots(graph: IntGraph, plan: MemoryPlan) -> dict[str, str]:
    """Tensor -> the tensor whose bytes it views (RESHAPE at the same place), else itself."""
    roots = {name: name for name in plan.regions}
    for op in graph.ops:
        if op.kind == "RESHAPE" and op.inputs and op.outputs:
            src, dst = op.inputs[0], op.outputs[0]
            if (plan.regions.get(src) == plan.regions.get(dst) and plan.offsets.get(src) == plan.offsets.get(dst)):
                roots[dst] = roots[src]
    return roots


def check_plan(graph: IntGraph, plan: MemoryPlan) -> None:
    """Prove ``plan`` safe for ``graph``; raise ExportError naming the colliding tensors and op.

    Checks: every activation has a place inside its region, nothing is written into the
    caller's input buffers, and any two tensors live at the same op whose bytes overlap are
    either views of the same bytes (RESHAPE) or a legal in-place pair (an IN_PLACE_KINDS op
    writing over an input of the same size that nobody reads afterwards).
    """
    life = tensor_lifetimes(graph)
    producers = graph.producers()
    missing = [n for n in life if n not in plan.regions]
    if missing:
        raise ExportError(f"memory plan has no place for tensor(s) {missing}; re-run plan_memory on this graph")
    for name in life:
        nbytes = graph.tensor(name).nbytes
        region, off = plan.regions[name], plan.offsets[name]
        if region == ARENA:
            if off % plan.alignment or off < 0 or off + nbytes > plan.arena_bytes:
                raise ExportError(f"tensor {name!r} at arena offset {off} (+{nbytes} bytes) is misaligned or "
                                  f"outside the {plan.arena_bytes}-byte arena")
        elif not region.startswith(("input:", "output:")):
            raise ExportError(f"tensor {name!r} has unknown region {region!r}")
        if region.startswith("input:") and name not in graph.inputs:
            op = graph.ops[producers[name]]
            if op.kind != "RESHAPE" or plan.regions.get(op.inputs[0]) != region:
                raise ExportError(f"op #{producers[name]} {op.kind} {op.name!r} would write {name!r} into the "
                                  f"caller's read-only input buffer ({region})")
    roots = _view_roots(graph, plan)
    items = [(n, plan.regions[n], plan.offsets[n], graph.tensor(n).nbytes, life[n]) for n in life]
    items += [(f"<scratch of op #{k}>", ARENA, off, size, (k, k)) for k, (off, size) in plan.scratch.items()]
    for i in range(len(items)):
        a, ra, oa, sa, (fa, la) = items[i]
        for j in range(i + 1, len(items)):
            b, rb, ob, sb, (fb, lb) = items[j]
            if ra != rb or fa > lb or fb > la or oa >= ob + sb or ob >= oa + sa or sa == 0 or sb == 0:
                continue
            if _legal_share(graph, a, b, roots, life, producers, plan):
                continue
            k = max(fa, fb, 0)
            op = graph.ops[min(k, len(graph.ops) - 1)] if graph.ops else None
            where = f"op #{k} {op.kind} {op.name!r}" if op is not None else "graph start"
            raise ExportError(f"memory plan collision: {a!r} [{oa}, {oa + sa}) and {b!r} [{ob}, {ob + sb}) "
                              f"in {ra} are both live at {where}; re-run plan_memory (do not edit offsets)")


def _legal_share(graph, a, b, roots, life, producers, plan) -> bool:
    if a.startswith("<") or b.startswith("<"):
        return False
    same_place = plan.offsets[a] == plan.offsets[b] and graph.tensor(a).nbytes == graph.tensor(b).nbytes
    if roots[a] == roots[b] and plan.offsets[a] == plan.offsets[b]:
        return True
    for x, y in ((a, b), (b, a)):  # y written in place over x?
        k = producers.get(y)
        if k is None:
            continue
        op = graph.ops[k]
        if op.kind in IN_PLACE_KINDS and x in op.inputs and life[x][1] == k and same_place:
            return True
    return False


def arena_report(plan: MemoryPlan) -> dict[str, int]:
    """Arena, the peak-live lower bound and the no-reuse upper bound, in bytes."""
    return {"arena_bytes": plan.arena_bytes, "peak_live_bytes": plan.peak_live_bytes,
            "no_reuse_bytes": plan.no_reuse_bytes,
            "largest_tensor_bytes": int(max(plan.sizes.values(), default=0))}


__all__ = ["ALIGNMENT", "IN_PLACE_KINDS", "MemoryPlan", "arena_report", "check_plan", "op_scratch_bytes",
           "plan_memory", "tensor_lifetimes"]
