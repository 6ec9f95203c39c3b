"""Model variants side by side: FP16 conversion, MACs, onnxruntime CPU latency, the variants report.

``reports/variants.json`` holds one entry per variant (``fp32`` is the run's ``model.onnx``):
accuracy, file bytes, MACs and onnxruntime CPU latency; ``reports/variants.png`` charts them.
No torch here: accuracy is measured by the caller (``edgesmith eval``) and passed in.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgesmith.errors import ExportError

REPORT_JSON = "variants.json"
REPORT_PNG = "variants.png"
LATENCY_WARMUP = 5
LATENCY_RUNS = 30


def convert_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    """FP16 weights and activations for GPU targets; inputs and outputs stay float32 for callers."""
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415 (heavy import)

    model = onnx.load(str(fp32_path))
    try:
        half = convert_float_to_float16(model, keep_io_types=True)
    except Exception as e:
        raise ExportError(f"could not convert {fp32_path} to FP16: {e}") from e
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(half, str(out_path))
    return out_path


def _dims(vi) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]


def count_macs(model: onnx.ModelProto | str | Path) -> int:
    """Multiply-accumulates of one inference (batch 1): Conv, ConvTranspose, Gemm and MatMul."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: _dims(vi) for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    # behind DequantizeLinear the weight shape is the quantized initializer's
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in shapes:
            shapes.setdefault(n.output[0], shapes[n.input[0]])
    macs = 0
    for n in model.graph.node:
        if n.op_type == "Conv" and n.output[0] in shapes and n.input[1] in shapes:
            # every output element needs (C_in / groups) * kh * kw MACs: the weight's trailing dims
            macs += int(np.prod(shapes[n.output[0]][1:])) * int(np.prod(shapes[n.input[1]][1:]))
        elif n.op_type == "ConvTranspose" and n.input[0] in shapes and n.input[1] in shapes:
            # every input element is scattered through (C_out / groups) * kh * kw weights
            macs += int(np.prod(shapes[n.input[0]][1:])) * int(np.prod(shapes[n.input[1]][1:]))
        elif n.op_type in ("Gemm", "MatMul") and n.input[1] in shapes and n.output[0] in shapes:
            w = shapes[n.input[1]]
            trans_b = n.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in n.attribute)
            k = w[1] if trans_b else w[0]
            macs += int(np.prod(shapes[n.output[0]][1:])) * int(k)
    return macs


def cpu_latency_ms(path: str | Path, *, runs: int = LATENCY_RUNS, threads: int = 1) -> float:
    """Median onnxruntime CPU latency (ms) of one image, on ``threads`` intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(LATENCY_WARMUP):
        sess.run(None, {inp.name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def variant_entry(name: str, path: str | Path, metrics: dict) -> dict:
    """One row of the variants report: ``metrics`` (accuracy...) plus bytes, MACs and latency."""
    path = Path(path)
    return {"variant": name, "file": str(path.name), "bytes": path.stat().st_size, "macs": count_macs(path),
            "cpu_latency_ms": round(cpu_latency_ms(path), 3), **metrics}


def update_report(reports_dir: str | Path, entries: list[dict]) -> Path:
    """Merge ``entries`` into ``reports/variants.json`` (by variant name) and redraw the PNG."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / REPORT_JSON
    current = {}
    if path.exists():
        try:
            current = {e["variant"]: e for e in json.loads(path.read_text())["variants"]}
        except (ValueError, KeyError, TypeError):
            current = {}  # a damaged report is rebuilt from the measurements at hand
    for e in entries:
        current[e["variant"]] = e
    rows = sorted(current.values(), key=lambda e: (e["variant"] != "fp32", e["variant"]))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"variants": rows}, indent=2))
    tmp.replace(path)
    plot_report(rows, reports_dir / REPORT_PNG)
    return path


def plot_report(rows: list[dict], out: Path) -> None:
    """Four bar charts (accuracy, size, MACs, latency), one bar per variant."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = [r["variant"] for r in rows]
    panels = [("top1", "top-1 accuracy (%)", 100.0), ("bytes", "file size (KiB)", 1 / 1024),
              ("macs", "MACs (M)", 1e-6), ("cpu_latency_ms", "onnxruntime CPU latency (ms)", 1.0)]
    if any("map50" in r for r in rows):
        panels[0] = ("map50", "mAP@.5", 1.0)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, title, mult) in zip(axes, panels):
        vals = [(r.get(key) or 0) * mult for r in rows]
        ax.bar(names, vals, color="#4c72b0")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45)
        for i, v in enumerate(vals):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
