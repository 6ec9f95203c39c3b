"""EdgeSmith's generated C vs TensorFlow Lite Micro on the same int8 model, on this host.

For one int8 model (a ResNet-8-style CIFAR network with random weights built here, or any int8
``.tflite`` given with ``--tflite``) this writes the ``.tflite`` with
``firmware_export.tflite_writer``, emits C with ``firmware_export.c_emitter``, builds it with
``gcc -O2`` and times it, times the ``tflite_micro`` Python interpreter (reference kernels) on
the same ``.tflite``, and prints ms per inference, arena bytes (TFLM: the allocator's
non-persistent "head", i.e. activations, and its total) and whether each output is bit-exact
with the numpy reference interpreter.

    python benchmarks/c_runtime_vs_tflm.py [--iters 50] [--tflite model.tflite]
"""
from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from firmware_export import reference
from firmware_export.c_emitter import emit_c, runtime_sources
from firmware_export.intgraph import IntGraph, Op, Tensor
from firmware_export.tflite_writer import write_tflite

BENCH_MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "bench.h"

int main(int argc, char **argv)
{
    static int8_t in[BENCH_INPUTS_TOTAL_BYTES], out[BENCH_OUTPUTS_TOTAL_BYTES];
    uint8_t *arena = malloc(BENCH_ARENA_BYTES + 16);
    int iters = atoi(argv[3]), i, rc = 0;
    struct timespec t0, t1;
    FILE *f = fopen(argv[1], "rb");
    if (argc != 4 || f == NULL || fread(in, 1, sizeof in, f) != sizeof in) return 2;
    fclose(f);
    for (i = 0; i < 3; ++i) rc |= bench_invoke(in, out, arena);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < iters; ++i) rc |= bench_invoke(in, out, arena);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.6f\n", ((t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6) / iters);
    f = fopen(argv[2], "wb");
    fwrite(out, 1, sizeof out, f);
    fclose(f);
    free(arena);
    return rc;
}
"""


def _act(name, shape, scale, zp) -> Tensor:
    return Tensor(name, tuple(shape), "int8", scale=np.array([scale], np.float32), zero_point=np.array([zp], np.int64))


class _Net:
    """Appends int8 ops; each output scale is calibrated on the sample input so it uses int8 well."""

    def __init__(self, rng, x: np.ndarray):
        self.rng, self.tensors, self.ops, self.x = rng, {}, [], x

    def calibrate(self, name: str) -> str:
        """Rescale tensor ``name`` until its int8 values span about 3/4 of the range, unsaturated."""
        t = self.tensors[name]
        for _ in range(8):
            g = IntGraph(dict(self.tensors), list(self.ops), ["input"], [name])
            q = reference.run(g, {"input": self.x})[name].astype(np.int64)
            span = np.percentile(np.abs(q - t.per_tensor_zero_point()), 99.5)
            saturated = np.mean((q == -128) | (q == 127))
            if saturated > 0.05 and t.per_tensor_zero_point() != -128 or span >= 250:
                factor = 4.0
            elif span < 60:
                factor = max(span, 1.0) / 100.0
            else:
                break
            t.scale = (t.scale * np.float32(factor)).astype(np.float32)
        return name

    def add_tensor(self, t: Tensor) -> str:
        self.tensors[t.name] = t
        return t.name

    def conv(self, x: str, name: str, cout: int, k: int, stride: int, act: str) -> str:
        xt = self.tensors[x]
        n, h, w, cin = xt.shape
        pad = (k - 1) // 2
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        ws = self.rng.uniform(0.002, 0.01, cout).astype(np.float32)
        wd = self.rng.integers(-127, 128, (cout, k, k, cin)).astype(np.int8)
        self.add_tensor(Tensor(name + "_w", (cout, k, k, cin), "int8", scale=ws, zero_point=np.zeros(cout, np.int64),
                               quant_axis=0, data=wd))
        s_in = xt.per_tensor_scale()
        acc_std = math.sqrt(k * k * cin) * 60 * 73
        self.add_tensor(Tensor(name + "_b", (cout,), "int32", scale=(s_in * ws).astype(np.float32),
                               zero_point=np.zeros(cout, np.int64), quant_axis=0, bits=32,
                               data=self.rng.normal(0, acc_std / 4, cout).astype(np.int32)))
        zp = -128 if act == "RELU" else 0
        self.add_tensor(_act(name, (n, oh, ow, cout), s_in * float(np.median(ws)) * acc_std / 40, zp))
        attrs = {"stride": (stride, stride), "dilation": (1, 1), "pads": (pad, pad, pad, pad), "act": act}
        self.ops.append(Op("CONV_2D", [x, name + "_w", name + "_b"], [name], attrs, name=name))
        return self.calibrate(name)

    def add(self, a: str, b: str, name: str) -> str:
        ta, tb = self.tensors[a], self.tensors[b]
        self.add_tensor(_act(name, ta.shape, (ta.per_tensor_scale() + tb.per_tensor_scale()) * 0.8, -128))
        self.ops.append(Op("ADD", [a, b], [name], {"act": "RELU"}, name=name))
        return self.calibrate(name)


def resnet8_like(rng) -> tuple[IntGraph, np.ndarray]:
    """ResNet-8-style int8 CIFAR network (3 residual stages, 16/32/64 channels), random weights."""
    sample = rng.integers(-128, 128, (1, 32, 32, 3)).astype(np.int8)
    net = _Net(rng, sample)
    x = net.add_tensor(_act("input", (1, 32, 32, 3), 0.02, -5))
    t = net.conv(x, "stem", 16, 3, 1, "RELU")
    for stage, (cout, stride) in enumerate([(16, 1), (32, 2), (64, 2)]):
        a = net.conv(t, f"s{stage}_a", cout, 3, stride, "RELU")
        b = net.conv(a, f"s{stage}_b", cout, 3, 1, "NONE")
        short = t if stride == 1 else net.conv(t, f"s{stage}_proj", cout, 1, stride, "NONE")
        t = net.add(short, b, f"s{stage}_add")
    pooled = net.add_tensor(_act("pool", (1, 64), net.tensors[t].per_tensor_scale(), -128))
    net.ops.append(Op("MEAN", [t, ], [pooled], {"axes": (1, 2), "keep_dims": False}, name="pool"))
    ws = rng.uniform(0.005, 0.02, 10).astype(np.float32)
    net.add_tensor(Tensor("fc_w", (10, 64), "int8", scale=ws, zero_point=np.zeros(10, np.int64), quant_axis=0,
                          data=rng.integers(-127, 128, (10, 64)).astype(np.int8)))
    s_pool = net.tensors[pooled].per_tensor_scale()
    net.add_tensor(Tensor("fc_b", (10,), "int32", scale=(s_pool * ws).astype(np.float32),
                          zero_point=np.zeros(10, np.int64), quant_axis=0, bits=32, data=np.zeros(10, np.int32)))
    net.add_tensor(_act("logits", (1, 10), s_pool * float(np.median(ws)) * 8 * 60 * 73 / 40, 0))
    net.ops.append(Op("FULLY_CONNECTED", [pooled, "fc_w", "fc_b"], ["logits"], {"act": "NONE"}, name="fc"))
    net.calibrate("logits")
    net.add_tensor(_act("prob", (1, 10), 1 / 256, -128))
    net.ops.append(Op("SOFTMAX", ["logits"], ["prob"], {"beta": 1.0}, name="softmax"))
    g = IntGraph(net.tensors, net.ops, ["input"], ["prob"], name="resnet8_like")
    g.validate()
    return g, sample


def run_c(graph: IntGraph, x: np.ndarray, iters: int, work: Path) -> tuple[float, int, np.ndarray]:
    """(ms per inference, arena bytes, output) of the generated C built with gcc -O2."""
    emit_c(graph, work, prefix="bench")
    (work / "main.c").write_text(BENCH_MAIN)
    exe = work / "bench"
    sources = [str(work / p.name) for p in runtime_sources() if p.suffix == ".c"]
    subprocess.run(["gcc", "-std=c99", "-O2", "-D_POSIX_C_SOURCE=199309L", "-I", str(work), "-o", str(exe),
                    str(work / "main.c"), str(work / "bench.c")] + sources, check=True)
    (work / "x.bin").write_bytes(x.tobytes())
    proc = subprocess.run([str(exe), str(work / "x.bin"), str(work / "y.bin"), str(iters)],
                          capture_output=True, text=True, check=True)
    arena = int(re.search(r"#define BENCH_ARENA_BYTES (\d+)", (work / "bench.h").read_text()).group(1))
    out = np.frombuffer((work / "y.bin").read_bytes(), np.int8)
    return float(proc.stdout.strip()), arena, out


def run_tflm(model: bytes, x: np.ndarray, iters: int) -> tuple[float, int, int, np.ndarray]:
    """(ms per inference, arena head bytes, arena total bytes, output) of TFLite Micro."""
    from tflite_micro import runtime as tflm

    it = tflm.Interpreter.from_bytes(model)
    it.set_input(x, 0)
    for _ in range(3):
        it.invoke()
    t0 = time.perf_counter()
    for _ in range(iters):
        it.invoke()
    ms = (time.perf_counter() - t0) * 1e3 / iters
    out = np.array(it.get_output(0)).reshape(-1)
    # the recording allocator prints its totals on the C++ side's stderr
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            it.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    head = int(re.search(r"allocation head (\d+)", text).group(1))
    total = int(re.search(r"allocation total (\d+)", text).group(1))
    return ms, head, total, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--tflite", type=Path, help="an int8 .tflite to benchmark instead of the built-in network")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    if args.tflite:
        from firmware_export.tflite_reader import read_tflite

        model = args.tflite.read_bytes()
        graph = read_tflite(model)
        t = graph.tensor(graph.inputs[0])
        x = rng.integers(-128, 128, t.shape).astype(np.int8)
    else:
        graph, x = resnet8_like(rng)
        model = write_tflite(graph)
    want = reference.run(graph, {graph.inputs[0]: x})[graph.outputs[0]].reshape(-1)
    with tempfile.TemporaryDirectory() as tmp:
        c_ms, c_arena, c_out = run_c(graph, x, args.iters, Path(tmp))
    t_ms, t_head, t_total, t_out = run_tflm(model, x, args.iters)
    macs = sum(int(np.prod(graph.tensor(op.outputs[0]).shape)) * int(np.prod(graph.tensor(op.inputs[1]).shape[1:]))
               for op in graph.ops if op.kind in ("CONV_2D", "FULLY_CONNECTED"))
    print(f"model: {graph.name} ({len(graph.ops)} ops, {macs / 1e6:.1f} M MACs in conv/FC), "
          f"{args.iters} timed runs after 3 warm-up runs, this host")
    print(f"{'engine':<34} {'ms/inference':>12} {'arena bytes':>12}  bit-exact vs reference")
    print(f"{'EdgeSmith C (gcc -O2)':<34} {c_ms:>12.3f} {c_arena:>12}  {'yes' if np.array_equal(c_out, want) else 'NO'}")
    print(f"{'TFLite Micro (Python interpreter)':<34} {t_ms:>12.3f} {t_head:>12}  "
          f"{'yes' if np.array_equal(t_out, want) else 'NO'}   (TFLM arena total incl. persistent: {t_total})")


if __name__ == "__main__":
    main()
