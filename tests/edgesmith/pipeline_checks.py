"""Test helper: run an IntGraph three ways — numpy reference, TFLite Micro on the written .tflite, and
the generated C built with the host gcc — so tests can demand the same bits from all three."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from firmware_export import reference
from firmware_export.c_emitter import emit_c
from firmware_export.intgraph import IntGraph
from firmware_export.tflite_writer import write_tflite

MAIN_C = r"""
#include <stdio.h>
#include <stdint.h>
#include "model.h"
static uint8_t arena[MODEL_ARENA_BYTES];
int main(void) {
    static int8_t in[MODEL_INPUTS_TOTAL_BYTES], out[MODEL_OUTPUTS_TOTAL_BYTES];
    while (fread(in, 1, sizeof in, stdin) == sizeof in) {
        int rc = model_invoke(in, out, arena);
        if (rc != 0) { fprintf(stderr, "invoke failed: %d\n", rc); return 1; }
        fwrite(out, 1, sizeof out, stdout);
    }
    return 0;
}
"""
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]


def reference_outputs(graph: IntGraph, batch: np.ndarray) -> np.ndarray:
    """Outputs of a single-input graph for each item of ``batch`` (int8, batch 1 each); several
    outputs are flattened and concatenated in graph order, as the C model writes them."""
    (name,) = graph.inputs
    rows = []
    for x in batch:
        got = reference.run(graph, {name: x[None]})
        rows.append(np.concatenate([got[o].reshape(-1) for o in graph.outputs]))
    out = np.stack(rows)
    if len(graph.outputs) == 1:
        return out.reshape((len(batch), *graph.tensor(graph.outputs[0]).shape[1:]))
    return out


def tflm_outputs(tflite: bytes, batch: np.ndarray, num_outputs: int = 1) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime as tflm

    interp = tflm.Interpreter.from_bytes(tflite)
    outs = []
    for x in batch:
        interp.set_input(x[None], 0)
        interp.invoke()
        if num_outputs == 1:
            outs.append(interp.get_output(0)[0])
        else:
            outs.append(np.concatenate([interp.get_output(i).reshape(-1) for i in range(num_outputs)]))
    return np.stack(outs)


def build_c(c_dir: Path, work: Path) -> Path:
    """Compile an emitted C folder (strict flags) with a stdin -> stdout driver; returns the executable."""
    (work / "main.c").write_text(MAIN_C)
    exe = work / "model_exe"
    sources = [str(p) for p in sorted(Path(c_dir).glob("*.c"))] + [str(work / "main.c")]
    build = subprocess.run(["gcc", *STRICT, "-I", str(c_dir), *sources, "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    return exe


def c_outputs(exe: Path, batch: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    proc = subprocess.run([str(exe)], input=batch.astype(np.int8).tobytes(), capture_output=True, check=True)
    return np.frombuffer(proc.stdout, np.int8).reshape((len(batch), *out_shape))


def three_way(graph: IntGraph, batch: np.ndarray, work: Path) -> dict[str, np.ndarray]:
    """Reference, TFLite Micro and C outputs of ``graph`` on ``batch`` (int8, graph input layout)."""
    work.mkdir(parents=True, exist_ok=True)
    want = reference_outputs(graph, batch)
    emit_c(graph, work / "c")
    exe = build_c(work / "c", work)
    return {"reference": want, "tflm": tflm_outputs(write_tflite(graph), batch, len(graph.outputs)),
            "c": c_outputs(exe, batch, want.shape[1:])}
