"""INT8 accuracy benchmark: FP32 vs PTQ (each calibrator, per-channel and per-tensor) vs QAT.

For each trained run (e.g. ResNet-8 and a width-reduced ResNet-18 trained on the shared CIFAR-10
images), writes the variants into the run's ``variants/`` with ``edgesmith quantize`` and measures
them with ``edgesmith eval --variant`` on the run's (carved) validation split: top-1, the drop
from FP32 in percentage points, and file size. Goals (issue #3): best per-channel PTQ within
0.2 pp of FP32, QAT within 0.1 pp; per-tensor reported beside them.

    python benchmarks/quantize_cifar10.py --run runs/resnet8 --run runs/resnet18-w025 --qat-epochs 1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgesmith.quantization import evaluate_variants  # noqa: E402
from variant_runs import write_variants  # noqa: E402

METHODS = ("minmax", "percentile", "entropy", "mse")


def bench_run(run: Path, calib_size: int, qat_epochs: int, qat_lr: float, skip_existing: bool) -> list[dict]:
    variants = [(f"int8-{m}", dict(method=m)) for m in METHODS]
    variants.append(("int8-pertensor", dict(method="minmax", per_tensor=True)))
    if qat_epochs:
        variants.append(("int8-qat", dict(qat=True, int8=False, epochs=qat_epochs, qat_lr=qat_lr)))
    timings = write_variants(run, variants, calib_size, skip_existing)
    rows = []
    for name in ["fp32"] + [v for v, _ in variants]:
        entry = evaluate_variants(run, name)[0]
        entry["quantize_s"] = round(timings.get(name, 0.0), 1)
        rows.append(entry)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="a trained run directory (repeatable)")
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--qat-epochs", type=int, default=2, help="0 skips QAT")
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--skip-existing", action="store_true", help="reuse variants already in the run")
    ap.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    args = ap.parse_args()
    results = {}
    for run in map(Path, args.run):
        manifest = json.loads((run / "manifest.json").read_text())
        model = manifest["config"]["model"]
        print(f"{run}: {model['name']} x{model['width_mult']}", flush=True)
        results[str(run)] = bench_run(run, args.calib_size, args.qat_epochs, args.qat_lr, args.skip_existing)
    print()
    print(f"{'run':<28} {'variant':<16} {'top-1':>8} {'vs FP32':>9} {'KiB':>8} {'quantize s':>10}")
    for run, rows in results.items():
        fp32 = rows[0]["top1"]
        for r in rows:
            delta = (r["top1"] - fp32) * 100
            print(f"{Path(run).name:<28} {r['variant']:<16} {r['top1']:8.2%} {delta:+8.2f}pp {r['bytes'] / 1024:8.1f} "
                  f"{r['quantize_s']:10.1f}")
        ptq = [r for r in rows if r["variant"].startswith("int8-") and r["variant"] not in ("int8-qat", "int8-pertensor")]
        best = max(ptq, key=lambda r: r["top1"])
        print(f"{'':<28} best per-channel PTQ: {best['variant']} ({(best['top1'] - fp32) * 100:+.2f} pp; goal >= -0.20)")
        qat = [r for r in rows if r["variant"] == "int8-qat"]
        if qat:
            print(f"{'':<28} QAT: {(qat[0]['top1'] - fp32) * 100:+.2f} pp (goal >= -0.10)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
