"""Build and run generated C models on the host, many graphs per compile (test helper).

``CBatch`` emits each graph with its own prefix into one folder, compiles them in a single
translation unit together with the runtime and ``es_harness.c``, runs every model on its input
file and reads back the outputs, so a test pays one compiler start per batch.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

from conftest import session_tmpdir
import numpy as np

from firmware_export import reference
from firmware_export.c_emitter import emit_c, runtime_sources, strip_float_edges
from firmware_export.intgraph import IntGraph

HARNESS = Path(__file__).resolve().parent / "es_harness.c"
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
SANITIZE = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def have_gcc() -> bool:
    return shutil.which("gcc") is not None


def _compile(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"compile failed:\n{' '.join(cmd)}\n{proc.stderr[-6000:]}")


@functools.lru_cache(maxsize=None)
def runtime_objects(extra_flags: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The runtime and the harness compiled once per flag set per test session (sanitized objects)."""
    out = session_tmpdir("es_runtime_objs_")
    sources = [p for p in runtime_sources() if p.suffix == ".c"]
    objects = []
    for src in sources:
        obj = out / (src.stem + ".o")
        _compile(["gcc"] + STRICT + SANITIZE + list(extra_flags) + ["-c", str(src), "-o", str(obj)])
        objects.append(str(obj))
    return tuple(objects)


class CBatch:
    """Graphs plus inputs -> one host binary -> outputs per graph."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.models = self.dir / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        self.entries: list[tuple[str, IntGraph, list[str], list[str], dict]] = []

    def add(self, graph: IntGraph, inputs: dict, **emit_kwargs) -> str:
        """Emit ``graph``; ``inputs`` are the original graph's inputs (float edges allowed)."""
        prefix = f"m{len(self.entries)}"
        emit_c(graph, self.models, prefix=prefix, **emit_kwargs)
        stripped = strip_float_edges(graph)
        values = reference.run(graph, inputs, keep_all=True)
        self.entries.append((prefix, graph, stripped.inputs, stripped.outputs, values))
        return prefix

    def build(self, extra_flags=(), name: str = "harness") -> Path:
        """Compile every emitted model + runtime + harness into one executable."""
        includes = "".join(f'#include "{p}.c"\n' for p, *_ in self.entries)
        (self.models / "all_models.c").write_text(includes)
        (self.models / "models.inc").write_text("".join(f"ES_MODEL({p})\n" for p, *_ in self.entries))
        exe = self.dir / name
        flags = ["gcc"] + STRICT + SANITIZE + list(extra_flags) + ["-I", str(self.models)]
        _compile(flags + ["-o", str(exe), str(HARNESS), str(self.models / "all_models.c")]
                 + list(runtime_objects(tuple(extra_flags))))
        return exe

    def run(self, exe: Path) -> dict[str, list[np.ndarray]]:
        """Run every model once; prefix -> list of output arrays (graph output order)."""
        jobs = []
        for prefix, graph, ins, outs, values in self.entries:
            data = b"".join(np.ascontiguousarray(values[n]).astype(np.int8).tobytes() for n in ins)
            (self.dir / f"{prefix}.in").write_bytes(data)
            jobs.append(f"{prefix} {self.dir / (prefix + '.in')} {self.dir / (prefix + '.out')}\n")
        (self.dir / "jobs.txt").write_text("".join(jobs))
        proc = subprocess.run([str(exe), str(self.dir / "jobs.txt")], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"harness failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        results = {}
        for prefix, graph, ins, outs, values in self.entries:
            raw = np.frombuffer((self.dir / f"{prefix}.out").read_bytes(), dtype=np.int8)
            arrays, pos = [], 0
            for name in outs:
                shape = tuple(values[name].shape)
                n = int(np.prod(shape, dtype=np.int64))
                arrays.append(raw[pos:pos + n].reshape(shape))
                pos += n
            results[prefix] = arrays
        return results

    def expected(self, prefix: str) -> list[np.ndarray]:
        for p, graph, ins, outs, values in self.entries:
            if p == prefix:
                return [np.asarray(values[n]) for n in outs]
        raise KeyError(prefix)

    def mismatches(self, results: dict[str, list[np.ndarray]]) -> list[str]:
        """One line per model whose C output differs from the reference."""
        bad = []
        for prefix, graph, ins, outs, values in self.entries:
            for name, got in zip(outs, results[prefix]):
                want = values[name]
                if not np.array_equal(got, want):
                    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
                    bad.append(f"{prefix} ({graph.name}, {[op.kind for op in graph.ops]}) output {name!r}: "
                               f"{int((diff > 0).sum())}/{diff.size} differ, max |diff| {int(diff.max())}")
        return bad
