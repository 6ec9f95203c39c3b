"""Export a quantized model for a board: load (QDQ ONNX or int8 .tflite) -> IntGraph -> emitters.

Emitters are a small registry (STYLE: backends are tiny interfaces in an explicit registry):
each takes the graph and an output folder and returns the files it wrote.

* ``tflite``: ``model.tflite`` (flatbuffer, runs in LiteRT and TFLite Micro)
* ``c``:      ``c/`` — ``model.h`` / ``model.c`` + the C runtime, a static arena plan
* ``blob``:   ``weights.bin`` — the constants in the versioned, CRC-checked blob format

Every export also writes ``memory.json`` (the arena plan) and ``fit.json`` (flash, RAM, MACs and
an estimated latency on the board). The board profile comes in as a plain object or dict: this
package never imports ``targets``.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

from edgesmith.errors import ExportError
from firmware_export.intgraph import IntGraph

FORMATS = ("tflite", "c", "blob")
C_DIR = "c"
C_PREFIX = "model"


def load_model(path: str | Path) -> IntGraph:
    """Read a QDQ ONNX or an int8 ``.tflite`` file into an IntGraph (errors name what is unsupported)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no model file at {path}; pass a QDQ .onnx (edgesmith quantize) or an int8 .tflite")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from firmware_export.onnx_importer import read_qdq_onnx  # noqa: PLC0415

        graph = read_qdq_onnx(path, name=path.stem)
    elif suffix == ".tflite":
        from firmware_export.tflite_reader import read_tflite  # noqa: PLC0415

        graph = read_tflite(path)
        graph.name = path.stem
    else:
        raise ExportError(f"{path}: unknown model format {suffix!r}; firmware export reads .onnx (QDQ) and .tflite")
    graph.validate()
    return graph


def _emit_tflite(graph: IntGraph, out: Path, **_: Any) -> list[Path]:
    from firmware_export.tflite_writer import write_tflite  # noqa: PLC0415

    path = out / "model.tflite"
    path.write_bytes(write_tflite(graph))
    return [path]


def _emit_c(graph: IntGraph, out: Path, *, weights_section: str | None = None, detection: Any = None,
            **_: Any) -> list[Path]:
    from firmware_export.c_emitter import emit_c  # noqa: PLC0415

    return emit_c(graph, out / C_DIR, prefix=C_PREFIX, weights_section=weights_section, detection=detection)


def _emit_blob(graph: IntGraph, out: Path, *, signing_key: Any = None, **_: Any) -> list[Path]:
    from firmware_export.blob import write_blob  # noqa: PLC0415

    path = out / "weights.bin"
    path.write_bytes(write_blob(graph, signing_key=signing_key))
    return [path]


EMITTERS: dict[str, Callable[..., list[Path]]] = {"tflite": _emit_tflite, "c": _emit_c, "blob": _emit_blob}


def parse_formats(text: str | None) -> list[str]:
    """``"tflite,c"`` -> ["tflite", "c"]; an unknown name lists the valid ones."""
    names = [f.strip() for f in (text or ",".join(FORMATS)).split(",") if f.strip()]
    bad = [n for n in names if n not in EMITTERS]
    if bad or not names:
        raise ExportError(f"unknown export format {', '.join(bad) or '(none)'}; choose from: {', '.join(FORMATS)}")
    return names


@dataclasses.dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, list[Path]]
    fit: Any  # firmware_export.fit.FitReport
    arena_bytes: int
    graph_hash: str

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "graph_hash": self.graph_hash, "arena_bytes": self.arena_bytes,
                "files": {k: [str(p) for p in v] for k, v in self.files.items()}, "fit": self.fit.to_dict()}


def measure_code_bytes(c_dir: Path, compiler: str, flags: tuple[str, ...], weight_bytes: int) -> int | None:
    """Code bytes of the generated C built with the board's compiler (-Os), weights excluded; None if
    the compiler is not installed. Uses ``<compiler prefix>size`` on the objects."""
    cc = shutil.which(compiler)
    size_tool = shutil.which(compiler[: -len("gcc")] + "size") if compiler.endswith("gcc") else None
    if cc is None or size_tool is None:
        return None
    sources = sorted(c_dir.glob("*.c"))
    with tempfile.TemporaryDirectory(prefix="edgesmith-size-") as tmp:
        objs = []
        for src in sources:
            obj = Path(tmp) / (src.stem + ".o")
            cmd = [cc, *flags, "-std=c99", "-Os", "-ffunction-sections", "-fdata-sections", "-c", str(src), "-o", str(obj)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ExportError(f"{compiler} could not compile {src.name} for the board: {proc.stderr.strip()[:800]}")
            objs.append(str(obj))
        proc = subprocess.run([size_tool, "-t", *objs], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    total = proc.stdout.strip().splitlines()[-1].split()
    text_and_data = int(total[0]) + int(total[1])
    return max(0, text_and_data - weight_bytes)


def export_model(graph: IntGraph, out_dir: str | Path, board: Any, *, formats: list[str] | None = None,
                 weights_section: str | None = None, signing_key: Any = None,
                 postprocess: Any = None) -> ExportResult:
    """Write the requested formats for ``board`` into ``out_dir`` plus memory.json and fit.json.

    ``postprocess``: a detector's post-processing (the run's ``postprocess.json`` path, or its
    dict): the C sources then also decode boxes and run NMS on the device (es_detect.c) and
    ``postprocess.json`` is copied into ``out_dir`` (see :mod:`firmware_export.c_detect`).
    """
    from firmware_export.analysis import analyse  # noqa: PLC0415
    from firmware_export.c_emitter import strip_float_edges  # noqa: PLC0415
    from firmware_export.fit import fit_report  # noqa: PLC0415
    from firmware_export.planner import check_plan, plan_memory  # noqa: PLC0415

    formats = formats or list(FORMATS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {}
    detection = None
    if postprocess is not None:
        from firmware_export.c_detect import detection_ram_bytes, detector_levels, load_postprocess  # noqa: PLC0415

        detection = load_postprocess(postprocess)
        detector_levels(strip_float_edges(graph), detection)  # a mismatch fails before any file is written
    for fmt in formats:
        files[fmt] = EMITTERS[fmt](graph, out, weights_section=weights_section, signing_key=signing_key,
                                   detection=detection)
    if detection is not None:
        spec_path = out / "postprocess.json"
        spec_path.write_text(json.dumps(detection.to_dict(), indent=2))
        files["postprocess"] = [spec_path]
    int_graph = strip_float_edges(graph)
    plan = plan_memory(int_graph)
    check_plan(int_graph, plan)
    plan.graph_hash = graph.graph_hash()
    files["memory"] = [plan.save(out / "memory.json")]
    code_bytes = None
    toolchain = board.get("toolchain") if isinstance(board, dict) else getattr(board, "toolchain", None)
    if "c" in files and toolchain is not None:
        compiler = toolchain["compiler"] if isinstance(toolchain, dict) else toolchain.compiler
        flags = tuple(toolchain["flags"] if isinstance(toolchain, dict) else toolchain.flags)
        code_bytes = measure_code_bytes(out / C_DIR, compiler, flags, analyse(graph).param_bytes)
    fit = fit_report(graph, board, arena_bytes=plan.arena_bytes, code_bytes=code_bytes,
                     postprocess_bytes=detection_ram_bytes(detection) if detection is not None else 0)
    fit_path = out / "fit.json"
    fit_path.write_text(json.dumps(fit.to_dict(), indent=2))
    files["fit"] = [fit_path]
    return ExportResult(out, files, fit, plan.arena_bytes, graph.graph_hash())
