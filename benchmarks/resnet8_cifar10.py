"""ResNet-8 (MLPerf Tiny) on CIFAR-10 on the CPU: validation accuracy and wall time.

Runs the same code path as ``edgesmith train --config examples/configs/resnet8_cifar10.yaml``
(train → ONNX export with parity → manifest) on the images at ``--data`` and reports the
best and final validation top-1 against the MLPerf Tiny target (85%) and the wall time
against the goal (20 minutes on 2 cores). The wall time includes opening the dataset
(decoding on a cold cache, reading the uint8 cache on a warm one: both are printed).

    python benchmarks/resnet8_cifar10.py --data /path/to/cifar10-images --out runs/bench-resnet8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgesmith.pipeline import train_and_export  # noqa: E402
from trainer.config import apply_override, config_from_dict, load_config_file  # noqa: E402
from trainer.data import open_dataset  # noqa: E402

TARGET_TOP1 = 0.85
GOAL_SECONDS = 20 * 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 (binary/python/.tar.gz) or an image folder of it")
    ap.add_argument("--config", default=str(ROOT / "examples/configs/resnet8_cifar10.yaml"))
    ap.add_argument("--out", default="runs/bench-resnet8")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    data = load_config_file(args.config)
    apply_override(data, f"data.path={args.data}")
    apply_override(data, "device=cpu")
    for assignment in args.set:
        apply_override(data, assignment)
    cfg = config_from_dict(data)
    out = Path(args.out)
    if (out / "checkpoint.safetensors").exists():
        sys.exit(f"{out} already holds a run; pass another --out")

    t0 = time.perf_counter()
    ds = open_dataset(cfg.data.path, val_fraction=cfg.data.val_fraction, seed=cfg.seed, cache_dir=cfg.data.cache_dir)
    t_open = time.perf_counter() - t0
    result = train_and_export(cfg, out, show_progress=False)
    wall = time.perf_counter() - t0

    val = result.metrics["val"]["top1"]
    table = Table(title=f"ResNet-8 on {ds.source} ({len(ds.train.labels)} train / {len(ds.val.labels)} val"
                        f"{', carved' if ds.val_is_carved else ''}), torch {torch.__version__}, "
                        f"{torch.get_num_threads()} threads")
    for col in ("metric", "value", "goal", "met"):
        table.add_column(col)
    table.add_row("final val top-1", f"{val:.2%}", f">= {TARGET_TOP1:.0%}", "yes" if val >= TARGET_TOP1 else "NO")
    table.add_row("wall time (open data + train + export)", f"{wall:.0f} s", f"<= {GOAL_SECONDS} s",
                  "yes" if wall <= GOAL_SECONDS else "NO")
    table.add_row("  of which opening the dataset", f"{t_open:.1f} s", "", "")
    table.add_row("epochs", str(cfg.epochs), "", "")
    table.add_row("training img/s (last epoch)", f"{result.metrics.get('img_per_s', 0):.0f}", "", "")
    Console().print(table)
    print(f"run directory: {out}")


if __name__ == "__main__":
    main()
