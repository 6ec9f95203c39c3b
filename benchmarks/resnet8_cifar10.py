"""ResNet-8 (MLPerf Tiny) on CIFAR-10 on the CPU: validation accuracy and wall time.

Runs the command a user runs — ``edgesmith train --config examples/configs/resnet8_cifar10.yaml``
(train → ONNX export with parity → manifest) — on the images at ``--data``, either as one
process or, with ``--nproc 2``, as ``torchrun`` DDP processes of one thread each (on a
2-core machine two single-threaded processes train faster than one two-threaded one:
PyTorch's CPU kernels for 16–64-channel convolutions scale poorly across threads).
Reports the final validation top-1 against the MLPerf Tiny target (85%) and the wall time
against the goal (20 minutes on 2 cores). Wall time = opening the dataset (decoding it on
a cold cache) + the training command.

    python benchmarks/resnet8_cifar10.py --data /path/to/cifar10-images --out runs/bench-resnet8 --nproc 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.config import apply_override, config_from_dict, load_config_file  # noqa: E402
from trainer.data import open_dataset  # noqa: E402

TARGET_TOP1 = 0.85
GOAL_SECONDS = 20 * 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 (binary/python/.tar.gz) or an image folder of it")
    ap.add_argument("--config", default=str(ROOT / "examples/configs/resnet8_cifar10.yaml"))
    ap.add_argument("--out", default="runs/bench-resnet8")
    ap.add_argument("--nproc", type=int, default=1, help="DDP processes (torchrun), one thread each when > 1")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    cfg_dict = load_config_file(args.config)
    for assignment in [f"data.path={args.data}", "device=cpu", *args.set]:
        apply_override(cfg_dict, assignment)
    cfg = config_from_dict(cfg_dict)
    out = Path(args.out)
    if (out / "checkpoint.safetensors").exists():
        sys.exit(f"{out} already holds a run; pass another --out")

    t0 = time.perf_counter()
    ds = open_dataset(cfg.data.path, val_fraction=cfg.data.val_fraction, seed=cfg.seed, cache_dir=cfg.data.cache_dir)
    t_open = time.perf_counter() - t0

    train_args = ["train", "--config", args.config, "--data", args.data, "--device", "cpu", "--out", str(out),
                  "--no-progress"] + [x for s in args.set for x in ("--set", s)]
    env = dict(os.environ)
    if args.nproc > 1:
        env["OMP_NUM_THREADS"] = "1"
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--standalone", f"--nproc_per_node={args.nproc}", "-m", "edgesmith", *train_args]
    else:
        cmd = [sys.executable, "-m", "edgesmith", *train_args]
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    t_train = time.perf_counter() - t1
    if proc.returncode != 0:
        sys.exit(f"training failed with exit status {proc.returncode}")
    wall = t_open + t_train

    manifest = json.loads((out / "manifest.json").read_text())
    train_metrics = manifest["metrics"]["train"]
    val = train_metrics["val"]["top1"]
    table = Table(title=f"ResNet-8 on {ds.source}: {len(ds.train.labels)} train / {len(ds.val.labels)} val"
                        f"{' (carved)' if ds.val_is_carved else ''}; {args.nproc} process(es), "
                        f"torch {manifest['packages'].get('torch')}")
    for col in ("metric", "value", "goal", "met"):
        table.add_column(col)
    table.add_row("final val top-1", f"{val:.2%}", f">= {TARGET_TOP1:.0%}", "yes" if val >= TARGET_TOP1 else "NO")
    table.add_row("wall time (open data + train + export)", f"{wall:.0f} s", f"<= {GOAL_SECONDS} s",
                  "yes" if wall <= GOAL_SECONDS else "NO")
    table.add_row("  opening the dataset", f"{t_open:.1f} s", "", "")
    table.add_row("  edgesmith train", f"{t_train:.0f} s", "", "")
    table.add_row("epochs / global batch", f"{cfg.epochs} / {cfg.batch_size}", "", "")
    table.add_row("training img/s (last epoch)", f"{train_metrics.get('img_per_s', 0):.0f}", "", "")
    table.add_row("ONNX parity max |diff|", f"{manifest['artifacts']['model.onnx']['parity']['max_abs_diff']:.2e}", "", "")
    Console().print(table)
    print(f"run directory: {out}")


if __name__ == "__main__":
    main()
