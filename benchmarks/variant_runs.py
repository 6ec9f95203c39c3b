"""Shared by the quantization benchmarks: write a list of variants into a run, timing each."""
from __future__ import annotations

import time
from pathlib import Path

from edgesmith.quantization import QuantizeRequest, quantize


def write_variants(run: Path, variants: list[tuple[str, dict]], calib_size: int,
                   skip_existing: bool) -> dict[str, float]:
    """``edgesmith quantize`` for each (name, QuantizeRequest fields); returns seconds per written variant."""
    timings = {}
    for name, kw in variants:
        if skip_existing and (run / "variants" / f"{name}.onnx").exists():
            continue
        t = time.perf_counter()
        quantize(QuantizeRequest(target=str(run), calib_size=calib_size, name=name, **kw), log=lambda _m: None)
        timings[name] = time.perf_counter() - t
        print(f"  {run.name}: {name} in {timings[name]:.0f} s", flush=True)
    return timings
