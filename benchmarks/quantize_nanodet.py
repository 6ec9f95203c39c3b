"""Detector INT8 benchmark: FP32 vs PTQ (each calibrator) vs QAT, mAP@.5 and mAP on two splits.

For a trained NanoDet-style run (e.g. nanodet-m 0.5x on the shared Raccoon images), writes the
variants into the run's ``variants/`` with ``edgesmith quantize`` and scores each in onnxruntime
with the float post-processing of ``edgesmith eval``, on

* ``val``: the run's held-out carve (the number that counts; small on Raccoon, so noisy), and
* ``train``: the images the model was trained and calibrated on (larger, so the INT8-vs-FP32 gap
  is measured with less noise; QAT also fine-tunes on these, so it flatters QAT a little).

Every INT8 variant fuses LeakyReLU into the conv before it (``edgesmith quantize``'s default);
``int8-percentile-unfused`` (``--no-fuse-leaky-relu``) shows what quantizing each conv output before
its LeakyReLU costs. For the held-out split a paired bootstrap over images (the same resampled
images for FP32 and the variant, ``--bootstrap`` draws) gives a 95% interval of the mAP@.5 change:
with ~80 images one raccoon more or less moves mAP@.5 by several points, so the interval says how
much of a difference the split can resolve.
Goal (issue #3): INT8 mAP@.5 within 1 pp of FP32.

    python benchmarks/quantize_nanodet.py --run runs/nanodet-m05 --qat-epochs 4
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from edgesmith.detection import predict_detection_onnx  # noqa: E402
from edgesmith.quantization import variant_path  # noqa: E402
from trainer.detection.evaluate import score_predictions  # noqa: E402
from variant_runs import write_variants  # noqa: E402

METHODS = ("minmax", "percentile", "entropy", "mse")
SPLITS = ("val", "train")


def make_variants(run: Path, calib_size: int, qat_epochs: int, qat_lr: float, qat_method: str,
                  skip_existing: bool) -> tuple[list[str], dict[str, float]]:
    variants = [(f"int8-{m}", dict(method=m)) for m in METHODS]
    variants.append(("int8-percentile-unfused", dict(method="percentile", fuse_leaky_relu=False)))
    if qat_epochs:
        variants.append(("int8-qat", dict(qat=True, int8=False, epochs=qat_epochs, qat_lr=qat_lr, method=qat_method)))
    timings = write_variants(run, variants, calib_size, skip_existing)
    return ["fp32"] + [v for v, _ in variants], timings


def bootstrap_map50(preds: list, samples: list, classes: list[str], draws: np.ndarray) -> np.ndarray:
    """mAP@.5 on each resampled image set (rows of ``draws``: image indices drawn with replacement)."""
    return np.array([score_predictions([preds[i] for i in d], [samples[i] for i in d], classes)["map50"]
                     for d in draws])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a trained detector run directory")
    ap.add_argument("--calib-size", type=int, default=128)
    ap.add_argument("--qat-epochs", type=int, default=4, help="0 skips QAT")
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--qat-method", default="percentile", help="calibrator for QAT's starting ranges")
    ap.add_argument("--skip-existing", action="store_true", help="reuse variants already in the run")
    ap.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap draws over held-out images")
    ap.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    args = ap.parse_args()
    run = Path(args.run)
    manifest = json.loads((run / "manifest.json").read_text())
    model = manifest["config"]["model"]
    print(f"{run}: {model['name']} x{model['width_mult']}", flush=True)
    names, timings = make_variants(run, args.calib_size, args.qat_epochs, args.qat_lr, args.qat_method,
                                   args.skip_existing)
    rows, preds = [], {}
    for name in names:
        path = variant_path(run, name)
        row = {"variant": name, "bytes": path.stat().st_size, "quantize_s": round(timings.get(name, 0.0), 1)}
        for split in SPLITS:
            p, samples, classes, _ = predict_detection_onnx(run, path, split=split)
            m = score_predictions(p, samples, classes)
            row[split] = {"map50": m["map50"], "map": m["map"], "images": len(samples)}
            if split == "val":  # kept for the paired bootstrap below
                preds[name] = (p, samples, classes)
        rows.append(row)
        print(f"  evaluated {name}", flush=True)
    draws = np.random.default_rng(0).integers(0, rows[0]["val"]["images"], (args.bootstrap, rows[0]["val"]["images"]))
    fp32_draws = bootstrap_map50(*preds["fp32"], draws)
    for row in rows[1:]:
        diff = bootstrap_map50(*preds[row["variant"]], draws) - fp32_draws
        row["val"]["diff_ci95_pp"] = [float(np.percentile(diff, q)) * 100 for q in (2.5, 97.5)]
    print()
    head = "".join(f" {s + ' mAP@.5':>14} {'vs FP32':>9} {s + ' mAP':>10}" for s in SPLITS)
    print(f"{'variant':<24}{head} {'val change, 95% CI':>20} {'KiB':>7} {'quantize s':>10}")
    fp32 = rows[0]
    for r in rows:
        cells = "".join(f" {r[s]['map50']:14.4f} {(r[s]['map50'] - fp32[s]['map50']) * 100:+8.2f}pp {r[s]['map']:10.4f}"
                        for s in SPLITS)
        ci = r["val"].get("diff_ci95_pp")
        ci_cell = f"[{ci[0]:+.2f}, {ci[1]:+.2f}] pp" if ci else ""
        print(f"{r['variant']:<24}{cells} {ci_cell:>20} {r['bytes'] / 1024:7.1f} {r['quantize_s']:10.1f}")
    print("images: " + ", ".join(f"{s} {fp32[s]['images']}" for s in SPLITS) + "; goal: INT8 mAP@.5 within 1 pp of FP32")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
