"""NanoDet on the shared Raccoon set (160 VOC images) on the CPU: mAP, training speed, size.

Runs what a user runs — ``edgesmith train --config examples/configs/nanodet_m_raccoon.yaml``
(train → ONNX export with detection parity → manifest) — on the Raccoon images with a seeded
10% validation split carved from them, then reports COCO mAP@.5 and mAP@[.5:.95] on that
split (``edgesmith eval``), training images/s on the CPU, and parameters and FLOPs at 320x320
against NanoDet-m's published 0.95 M params / 0.72 GFLOPs (NanoDet counts multiply-accumulates
as FLOPs, so the MAC count is the comparable figure). Goal: mAP@.5 >= 0.6.

    tar xzf /work/shared/datasets/raccoon-voc-train.tar.gz -C /tmp
    python benchmarks/nanodet_raccoon.py --data /tmp/raccoon-train --out runs/bench-nanodet --set epochs=60
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgesmith.cli import main as cli_main  # noqa: E402
from trainer.models import build_model  # noqa: E402
from trainer.models.nanodet.shufflenet import ChannelSelect  # noqa: E402

ARCHIVE = Path("/work/shared/datasets/raccoon-voc-train.tar.gz")
PUBLISHED = {"params_m": 0.95, "gflops": 0.72}  # NanoDet-m at 320, from the NanoDet README
GOAL_MAP50 = 0.6


def count_macs(model: nn.Module, hw: tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    total = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, ChannelSelect):  # nanodet-mcu's channel split: a fixed 1x1 conv
            total += output.numel() * module.weight.shape[1]

    counted = (nn.Conv2d, nn.Linear, ChannelSelect)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, *hw))
    for h in handles:
        h.remove()
    return total


def size_table(num_classes: int) -> list[dict]:
    rows = []
    for name, width in (("nanodet-m", 0.5), ("nanodet-m", 1.0), ("nanodet-m", 1.5), ("nanodet-plus-m", 1.0),
                        ("nanodet-mcu", 0.5)):
        model = build_model(name, num_classes=num_classes, width_mult=width)
        # nanodet-mcu's channel-split selection convs are buffers (not parameters) but are counted as MACs.
        params = sum(p.numel() for p in model.parameters())
        rows.append({"model": name, "width_mult": width, "params_m": params / 1e6,
                     "gmacs_320": count_macs(model, (320, 320)) / 1e9})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/raccoon-train", help="the extracted Raccoon set (extracted here if missing)")
    ap.add_argument("--config", default=str(ROOT / "examples/configs/nanodet_m_raccoon.yaml"))
    ap.add_argument("--out", default="runs/bench-nanodet")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared 2-core machine one thread trains ~5x faster "
                         "than two, which spin-wait on each other)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = Path(args.data)
    if not data.exists():
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(data.parent, filter="data")
    out = Path(args.out)
    if (out / "checkpoint.safetensors").exists():
        sys.exit(f"{out} already holds a run; pass another --out")

    print("size at 320x320 (80 COCO classes, as published):")
    for row in size_table(80):
        print(f"  {row['model']:15s} {row['width_mult']:>4}x  params {row['params_m']:.3f} M  "
              f"MACs {row['gmacs_320']:.3f} G")
    print(f"  published NanoDet-m 1.0x: {PUBLISHED['params_m']} M params, {PUBLISHED['gflops']} GFLOPs (MACs)")

    train_args = ["train", "--config", args.config, "--data", str(data), "--device", "cpu", "--out", str(out),
                  "--no-progress"] + [x for s in args.set for x in ("--set", s)]
    t0 = time.perf_counter()
    rc = cli_main(train_args)
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"training failed with exit status {rc}")
    manifest = json.loads((out / "manifest.json").read_text())
    train_metrics = manifest["metrics"]["train"]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["img_per_s"] for r in history if r.get("type") == "epoch"]
    print(f"\ntraining: {train_metrics['epochs_completed']} epochs in {wall:.0f} s wall; "
          f"{sum(speeds) / max(1, len(speeds)):.1f} img/s mean over epochs (CPU, {torch.get_num_threads()} threads)")
    rc = cli_main(["eval", str(out), "--device", "cpu"])
    val = train_metrics.get("val", {})
    if val:
        verdict = "meets" if val["map50"] >= GOAL_MAP50 else "misses"
        print(f"\nraccoon val ({val['num_images']} images): mAP@.5 {val['map50']:.4f} ({verdict} the goal "
              f"{GOAL_MAP50}), mAP@[.5:.95] {val['map']:.4f}")
    parity = manifest["artifacts"].get("model.onnx", {}).get("parity")
    if parity:
        print(f"ONNX parity: {parity['num_detections']} detections on {parity['num_images']} images, max box diff "
              f"{parity['max_box_diff']:.2e} px, passed {parity['passed']}")


if __name__ == "__main__":
    main()
