"""Fit report: does a compiled model fit a board's RAM and flash, and roughly how fast is it?

The board profile comes in as a plain object or dict (``targets.boards.BoardProfile`` or its
``to_dict()``): this package does not import ``targets``. Fields read: ``name``,
``ram_regions`` (each ``name``, ``model_bytes``), ``internal_flash_bytes``,
``external_flash_bytes``, ``clock_hz``, ``int8_cycles_per_mac``, ``runtime_code_bytes``.

* RAM = arena (from the memory planner) + runtime state (an ESTIMATE unless given); the
  arena is one contiguous block, so it must fit one region's ``model_bytes``; regions are
  tried in the profile's order (fastest first).
* flash = code + weights. Weights go to internal flash when code + weights fit there, else to
  external flash when the board has enough (the report says which).
* latency = (int8 MACs + binary ops + element ops) x cycles-per-MAC / clock: an ESTIMATE
  from the profile's figure that charges binary and element ops like a MAC.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from edgesmith.errors import ExportError
from firmware_export.analysis import analyse, human_bytes, human_count
from firmware_export.intgraph import IntGraph

#: ESTIMATE of the C runtime's RAM besides the arena: fixed context + per-op bookkeeping
RUNTIME_STATE_BASE_BYTES = 512
RUNTIME_STATE_PER_OP_BYTES = 32


@dataclasses.dataclass
class FitReport:
    """Result of :func:`fit_report`; every field is JSON-serialisable (``to_dict``)."""

    board: str
    fits: bool
    ram_fits: bool
    flash_fits: bool
    arena_bytes: int
    runtime_state_bytes: int
    runtime_state_estimated: bool
    #: detectors: es_detect's work buffer + the detections array (static RAM besides the arena)
    postprocess_bytes: int
    ram_needed_bytes: int
    #: the largest arena the board can give (one region)
    ram_available_bytes: int
    arena_region: str | None
    code_bytes: int
    code_bytes_estimated: bool
    weight_bytes: int
    flash_needed_bytes: int
    internal_flash_bytes: int
    external_flash_bytes: int
    #: "internal flash", "external flash", or None when the weights fit nowhere
    weights_location: str | None
    macs: int
    binary_ops: int
    element_ops: int
    cycles_per_mac: float
    clock_hz: int
    latency_estimate_s: float
    latency_label: str
    messages: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _field(board: Any, key: str, default: Any = dataclasses.MISSING) -> Any:
    """A board field from a dict or an object; a missing required field is a clear error."""
    if isinstance(board, dict):
        value = board.get(key, default)
    else:
        value = getattr(board, key, default)
    if value is dataclasses.MISSING:
        raise ExportError(f"board profile {_field(board, 'name', '?')!r} has no field {key!r}; "
                          f"pass a targets.boards.BoardProfile or its to_dict()")
    return value


def _regions(board: Any) -> list[tuple[str, int]]:
    return [(str(_field(r, "name")), int(_field(r, "model_bytes")))
            for r in _field(board, "ram_regions")]


def _seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def fit_report(graph: IntGraph, board: Any, *, arena_bytes: int, code_bytes: int | None = None,
               runtime_state_bytes: int | None = None, postprocess_bytes: int = 0) -> FitReport:
    """Check ``graph`` with an arena of ``arena_bytes`` against ``board``.

    ``code_bytes``: measured code size (e.g. from ``size`` of the firmware); without it the
    board's ``runtime_code_bytes`` estimate is used. ``runtime_state_bytes``: measured runtime
    RAM besides the arena; without it an estimate from the op count is used.
    ``postprocess_bytes``: a detector's on-device post-processing RAM (exact, from its config).
    """
    if arena_bytes < 0 or (code_bytes is not None and code_bytes < 0):
        raise ExportError(f"arena_bytes and code_bytes must be >= 0, got {arena_bytes} and "
                          f"{code_bytes}")
    name = str(_field(board, "name"))
    stats = analyse(graph)
    messages: list[str] = []

    # RAM: the arena is contiguous, so it needs one region large enough
    state_estimated = runtime_state_bytes is None
    if runtime_state_bytes is None:
        runtime_state_bytes = RUNTIME_STATE_BASE_BYTES + RUNTIME_STATE_PER_OP_BYTES * len(graph.ops)
    ram_needed = arena_bytes + runtime_state_bytes + postprocess_bytes
    regions = [r for r in _regions(board) if r[1] > 0]
    ram_available = max((size for _, size in regions), default=0)
    arena_region = next((region for region, size in regions if ram_needed <= size), None)
    state_text = f"runtime state {human_bytes(runtime_state_bytes)}" + (
        " (estimate)" if state_estimated else "") + (
        f" + post-processing {human_bytes(postprocess_bytes)}" if postprocess_bytes else "")
    if arena_region is not None:
        free = dict(regions)[arena_region]
        messages.append(f"RAM: arena {human_bytes(arena_bytes)} + {state_text} fits in "
                        f"{arena_region} ({human_bytes(free)} for the model, "
                        f"{human_bytes(free - ram_needed)} left)")
    else:
        messages.append(f"arena needs {human_bytes(arena_bytes)} + {state_text}, board {name} has "
                        f"{human_bytes(ram_available)} free (missing "
                        f"{human_bytes(ram_needed - ram_available)}); shrink the model, use a "
                        f"smaller input, or pick a board with more RAM")

    # flash: code always in internal flash; weights next to it, else in external flash
    code_estimated = code_bytes is None
    code = int(_field(board, "runtime_code_bytes")) if code_bytes is None else int(code_bytes)
    weights = sum(t.nbytes for t in graph.constants())
    internal = int(_field(board, "internal_flash_bytes"))
    external = int(_field(board, "external_flash_bytes", 0) or 0)
    code_text = f"code {human_bytes(code)}" + (" (estimate)" if code_estimated else "")
    if code + weights <= internal:
        location = "internal flash"
        messages.append(f"flash: {code_text} + weights {human_bytes(weights)} = "
                        f"{human_bytes(code + weights)} of {human_bytes(internal)} internal flash")
    elif code <= internal and 0 < external and weights <= external:
        location = "external flash"
        messages.append(f"flash: weights {human_bytes(weights)} do not fit next to {code_text} in "
                        f"{human_bytes(internal)} internal flash; they go to external flash "
                        f"({human_bytes(external)}, slower reads)")
    else:
        location = None
        extra = f" and {human_bytes(external)} external" if external else ""
        if code > internal:
            missing = code - internal
        else:  # weights live in one place: the larger of what internal leaves and external
            missing = weights - max(internal - code, external)
        messages.append(f"flash needs {human_bytes(code + weights)} ({code_text} + weights "
                        f"{human_bytes(weights)}), board {name} has {human_bytes(internal)} "
                        f"internal{extra} (missing {human_bytes(missing)}); prune or quantize "
                        f"further (binary layers pack 8 weights per byte)")

    cpm = float(_field(board, "int8_cycles_per_mac"))
    clock = int(_field(board, "clock_hz"))
    work = stats.macs + stats.binary_ops + stats.element_ops
    latency = work * cpm / clock if clock > 0 else 0.0
    label = (f"estimate: ({human_count(stats.macs)} MACs + {human_count(stats.binary_ops)} binary "
             f"+ {human_count(stats.element_ops)} element ops) x {cpm:g} cycles/MAC at "
             f"{clock / 1e6:g} MHz; not a measurement")
    messages.append(f"latency {_seconds(latency)} ({label})")

    ram_fits = arena_region is not None
    flash_fits = location is not None
    return FitReport(
        board=name, fits=ram_fits and flash_fits, ram_fits=ram_fits, flash_fits=flash_fits,
        arena_bytes=int(arena_bytes), runtime_state_bytes=int(runtime_state_bytes),
        runtime_state_estimated=state_estimated, postprocess_bytes=int(postprocess_bytes),
        ram_needed_bytes=ram_needed,
        ram_available_bytes=ram_available, arena_region=arena_region,
        code_bytes=code, code_bytes_estimated=code_estimated, weight_bytes=weights,
        flash_needed_bytes=code + weights, internal_flash_bytes=internal,
        external_flash_bytes=external, weights_location=location,
        macs=stats.macs, binary_ops=stats.binary_ops, element_ops=stats.element_ops,
        cycles_per_mac=cpm, clock_hz=clock, latency_estimate_s=latency, latency_label=label,
        messages=messages,
    )
