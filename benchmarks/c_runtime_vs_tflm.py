"""EdgeSmith's generated C vs TensorFlow Lite Micro on the same int8 ``.tflite`` files, on this host.

For each model (by default: a ResNet-8-style CIFAR network with random weights built here, written
with ``firmware_export.tflite_writer``, plus the exported ResNet-8 of the ``bench-r8-30ep`` run when
it exists; or every ``--tflite FILE`` given) this

1. reads the ``.tflite`` with ``firmware_export.tflite_reader.read_tflite``, emits C with
   ``firmware_export.c_emitter`` and builds it with ``gcc -O2``;
2. loads the same bytes into the ``tflite_micro`` Python interpreter (reference kernels);
3. feeds both the same random int8 inputs and checks that both outputs equal the numpy reference
   interpreter bit for bit (float model edges are (de)quantized with the model's own parameters);
4. times them in alternating rounds (C then TFLM, then TFLM then C, ...), so load on a shared
   machine hits both alike, and reports the median ms per inference with the min-max spread, and
   the speed-up as the median of the per-round ratios;
5. prints a table: model, MACs, ms, speed-up, arena bytes (ours: ``<PREFIX>_ARENA_BYTES``; TFLM:
   the allocator's non-persistent "head" = activations, and its total incl. persistent data),
   bit-exact.

    python benchmarks/c_runtime_vs_tflm.py [--tflite model.tflite ...] [--rounds 9] [--iters 20]
                                           [--arm-size]

``--arm-size`` also prints the ``.text`` bytes of every runtime source built for Cortex-M7 with
``arm-none-eabi-gcc -Os``.
"""
from __future__ import annotations

import argparse
import dataclasses
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


#: the exported ResNet-8 of the benchmark run, used by default when it exists
DEFAULT_R8 = Path(__file__).resolve().parent.parent / "runs/bench-r8-30ep/targets/mps2-an500/model.tflite"
CC_FLAGS = ["-std=c99", "-O2", "-D_POSIX_C_SOURCE=199309L"]
ARM_FLAGS = ["-std=c99", "-mcpu=cortex-m7", "-mthumb", "-Os"]


@dataclasses.dataclass
class Result:
    """One model's row: per-round timings and the sizes/exactness checks."""

    name: str
    macs: int = 0
    c_ms: list[float] = dataclasses.field(default_factory=list)
    tflm_ms: list[float] = dataclasses.field(default_factory=list)
    c_arena: int = 0
    tflm_head: int = 0
    tflm_total: int = 0
    exact: str = ""
    error: str = ""


def count_macs(graph: IntGraph) -> int:
    """Multiply-accumulates of the conv, depthwise and fully connected ops."""
    total = 0
    for op in graph.ops:
        if op.kind not in ("CONV_2D", "BINARY_CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        out = int(np.prod(graph.tensor(op.outputs[0]).shape))
        w = graph.tensor(op.inputs[1]).shape
        per_output = int(np.prod(w[1:3])) if op.kind == "DEPTHWISE_CONV_2D" else int(np.prod(w[1:]))
        total += out * per_output
    return total


class CModel:
    """The generated C of one graph, built with gcc -O2 into a timing executable."""

    def __init__(self, graph: IntGraph, work: Path):
        self.work = work
        emit_c(graph, work, prefix="bench")
        (work / "main.c").write_text(BENCH_MAIN)
        self.exe = work / "bench"
        sources = [str(work / p.name) for p in runtime_sources() if p.suffix == ".c"]
        subprocess.run(["gcc"] + CC_FLAGS + ["-I", str(work), "-o", str(self.exe), str(work / "main.c"),
                        str(work / "bench.c")] + sources, check=True)
        header = (work / "bench.h").read_text()
        self.arena = int(re.search(r"#define BENCH_ARENA_BYTES (\d+)", header).group(1))

    def run(self, x: bytes, iters: int) -> tuple[float, bytes]:
        """(ms per inference over ``iters`` runs after 3 warm-up runs, packed int8 outputs)."""
        (self.work / "x.bin").write_bytes(x)
        proc = subprocess.run([str(self.exe), str(self.work / "x.bin"), str(self.work / "y.bin"), str(iters)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"generated C failed with status {proc.returncode}: {proc.stderr.strip()}")
        return float(proc.stdout.strip()), (self.work / "y.bin").read_bytes()


class TflmModel:
    """The same .tflite in the TFLite Micro Python interpreter (reference kernels)."""

    def __init__(self, model: bytes, stripped: IntGraph):
        from tflite_micro import runtime as tflm

        self.it = tflm.Interpreter.from_bytes(model)
        self.stripped = stripped

    def set_inputs(self, xs: list[np.ndarray]) -> None:
        """int8 inputs of the C model; a float32 model input gets them dequantized."""
        for i, (x, name) in enumerate(zip(xs, self.stripped.inputs)):
            if self.it.get_input_details(i)["dtype"] == np.float32:
                t = self.stripped.tensor(name)
                x = (np.float32(t.per_tensor_scale()) * (x.astype(np.float32) - np.float32(t.per_tensor_zero_point())))
            self.it.set_input(x.astype(self.it.get_input_details(i)["dtype"]), i)

    def outputs(self) -> list[np.ndarray]:
        """Outputs as int8 in the C model's quantization (a float32 output is quantized back)."""
        outs = []
        for j, name in enumerate(self.stripped.outputs):
            y = np.array(self.it.get_output(j))
            if y.dtype == np.float32:
                t = self.stripped.tensor(name)
                y = np.clip(np.round(y / np.float32(t.per_tensor_scale())) + t.per_tensor_zero_point(), -128, 127)
            outs.append(y.astype(np.int8).reshape(-1))
        return outs

    def time(self, iters: int) -> float:
        self.it.invoke()  # one warm-up run, as the C side
        t0 = time.perf_counter()
        for _ in range(iters):
            self.it.invoke()
        return (time.perf_counter() - t0) * 1e3 / iters

    def arena(self) -> tuple[int, int]:
        """(head, total) bytes of the allocator: head = non-persistent (activations)."""
        # the recording allocator prints its totals on the C++ side's stderr
        with tempfile.TemporaryFile() as f:
            saved = os.dup(2)
            os.dup2(f.fileno(), 2)
            try:
                self.it.print_allocations()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            f.seek(0)
            text = f.read().decode(errors="replace")
        head = int(re.search(r"allocation head (\d+)", text).group(1))
        total = int(re.search(r"allocation total (\d+)", text).group(1))
        return head, total


def random_inputs(graph: IntGraph, rng) -> list[np.ndarray]:
    return [rng.integers(-128, 128, graph.tensor(n).shape).astype(np.int8) for n in graph.inputs]


def exactness(stripped: IntGraph, c: CModel, tflm: TflmModel, inputs: list[list[np.ndarray]]) -> str:
    """"yes" when C, TFLM and the reference agree on every input set, else what differs."""
    problems = []
    for k, xs in enumerate(inputs):
        want = reference.run(stripped, dict(zip(stripped.inputs, xs)))
        want = [np.asarray(want[n]).astype(np.int8).reshape(-1) for n in stripped.outputs]
        _, raw = c.run(b"".join(x.tobytes() for x in xs), 1)
        sizes = np.cumsum([w.size for w in want])[:-1]
        got_c = np.split(np.frombuffer(raw, np.int8), sizes)
        tflm.set_inputs(xs)
        tflm.it.invoke()
        got_t = tflm.outputs()
        for j, w in enumerate(want):
            if not np.array_equal(got_c[j], w):
                problems.append(f"C!=ref (input {k}, output {j}: {int(np.sum(got_c[j] != w))}/{w.size})")
            if not np.array_equal(got_t[j], w):
                problems.append(f"TFLM!=ref (input {k}, output {j}: {int(np.sum(got_t[j] != w))}/{w.size})")
    return "yes" if not problems else "NO: " + "; ".join(problems[:3])


def bench_model(name: str, model: bytes, rounds: int, iters: int, checks: int, seed: int) -> Result:
    """Import, build, check and time one .tflite (C and TFLM alternating)."""
    from firmware_export.c_table import strip_float_edges
    from firmware_export.tflite_reader import read_tflite

    res = Result(name)
    try:
        graph = read_tflite(model)
        stripped = strip_float_edges(graph)
        res.macs = count_macs(stripped)
        rng = np.random.default_rng(seed)
        inputs = [random_inputs(stripped, rng) for _ in range(max(checks, 1))]
        with tempfile.TemporaryDirectory() as tmp:
            c = CModel(graph, Path(tmp))
            tflm = TflmModel(model, stripped)
            res.c_arena = c.arena
            res.exact = exactness(stripped, c, tflm, inputs)
            x = b"".join(a.tobytes() for a in inputs[0])
            tflm.set_inputs(inputs[0])
            for r in range(rounds):  # alternate who goes first, so drifting load hits both alike
                if r % 2 == 0:
                    res.c_ms.append(c.run(x, iters)[0])
                    res.tflm_ms.append(tflm.time(iters))
                else:
                    res.tflm_ms.append(tflm.time(iters))
                    res.c_ms.append(c.run(x, iters)[0])
            res.tflm_head, res.tflm_total = tflm.arena()
    except Exception as exc:  # one bad model must not hide the others' rows
        res.error = f"{type(exc).__name__}: {exc}"
    return res


def _spread(values: list[float]) -> str:
    return f"{np.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def print_table(results: list[Result], rounds: int, iters: int) -> None:
    print(f"{rounds} alternating rounds of {iters} runs each (after warm-up); median [min-max] over rounds; "
          f"speed-up = median of per-round TFLM/C ratios; C built with gcc {' '.join(CC_FLAGS[:2])}")
    cols = f"{'model':<28} {'MMACs':>6} {'our ms':>19} {'TFLM ms':>19} {'speed-up':>17} " \
           f"{'our arena':>9} {'TFLM arena (total)':>18}  bit-exact"
    print(cols)
    print("-" * len(cols))
    for r in results:
        if r.error:
            print(f"{r.name:<28} error: {r.error}")
            continue
        ratios = [t / c for t, c in zip(r.tflm_ms, r.c_ms)]
        arena = f"{r.tflm_head} ({r.tflm_total})"
        print(f"{r.name:<28} {r.macs / 1e6:>6.2f} {_spread(r.c_ms):>19} {_spread(r.tflm_ms):>19} "
              f"{_spread(ratios) + 'x':>17} {r.c_arena:>9} {arena:>18}  {r.exact}")


def arm_text_sizes() -> dict[str, int]:
    """.text bytes of each runtime source for Cortex-M7 at -Os (arm-none-eabi-gcc)."""
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for src in runtime_sources():
            if src.suffix != ".c":
                continue
            obj = Path(tmp) / (src.stem + ".o")
            subprocess.run(["arm-none-eabi-gcc"] + ARM_FLAGS + ["-c", str(src), "-o", str(obj)], check=True)
            out = subprocess.run(["arm-none-eabi-size", str(obj)], capture_output=True, text=True, check=True)
            sizes[src.name] = int(out.stdout.splitlines()[1].split()[0])
    return sizes


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tflite", type=Path, action="append", default=[],
                    help="an int8 .tflite to benchmark (repeatable); default: the built-in network and "
                         f"{DEFAULT_R8.relative_to(DEFAULT_R8.parents[4])} when it exists")
    ap.add_argument("--rounds", type=int, default=9, help="alternating C/TFLM timing rounds per model")
    ap.add_argument("--iters", type=int, default=20, help="inferences per round")
    ap.add_argument("--checks", type=int, default=3, help="random input sets checked for bit-exactness")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arm-size", action="store_true", help="print the runtime's .text for Cortex-M7 at -Os")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.iters < 1:
        ap.error(f"--rounds and --iters must be >= 1, got {args.rounds} and {args.iters}")
    models: list[tuple[str, bytes]] = []
    if args.tflite:
        for path in args.tflite:
            models.append((path.name if len(path.name) <= 28 else path.name[:25] + "...", path.read_bytes()))
    else:
        graph, _ = resnet8_like(np.random.default_rng(args.seed))
        models.append(("resnet8_like (random w.)", write_tflite(graph)))
        if DEFAULT_R8.is_file():
            models.append(("bench-r8-30ep ResNet-8", DEFAULT_R8.read_bytes()))
        else:
            print(f"note: {DEFAULT_R8} does not exist, so the trained ResNet-8 is not in the table "
                  "(`edgesmith export runs/bench-r8-30ep --target mps2-an500 --variant NAME` writes it, "
                  "or pass any .tflite with --tflite)")
    results = [bench_model(name, data, args.rounds, args.iters, args.checks, args.seed) for name, data in models]
    print_table(results, args.rounds, args.iters)
    if args.arm_size:
        sizes = arm_text_sizes()
        print(f"runtime .text, arm-none-eabi-gcc {' '.join(ARM_FLAGS[1:])}: "
              + ", ".join(f"{k} {v}" for k, v in sizes.items()) + f"; total {sum(sizes.values())} bytes")


if __name__ == "__main__":
    main()
