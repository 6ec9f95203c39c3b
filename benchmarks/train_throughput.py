"""Training throughput: the EdgeSmith engine vs a plain hand-written PyTorch loop.

Same model, batch size, device and data; the two alternate in one process
(engine, plain, engine, plain, ...) so machine noise hits both alike. The plain
loop is what a user writes first: fp32, NCHW, a DataLoader over a Dataset that
crops and flips one image at a time. The engine runs through
``trainer.engine.train`` exactly as ``edgesmith train`` does (on-device batched
augmentation from the uint8 cache, channels_last, AMP on CUDA).

    python benchmarks/train_throughput.py --data /path/to/cifar10 --device cpu
    python benchmarks/train_throughput.py --device cuda --models resnet18 --batch-sizes 512
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import config_from_dict  # noqa: E402
from trainer.data import open_dataset  # noqa: E402
from trainer.engine import train  # noqa: E402
from trainer.engine.setup import channel_stats  # noqa: E402
from trainer.models import build_model  # noqa: E402


class PlainCifarDataset(torch.utils.data.Dataset):
    """Per-image pad + random crop + flip + normalise, as in a typical first training script."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1).float() / 255.0
        img = F.pad(img, (4, 4, 4, 4))
        y0, x0 = np.random.randint(0, 9, size=2)
        img = img[:, y0 : y0 + 32, x0 : x0 + 32]
        if np.random.rand() < 0.5:
            img = img.flip(2)
        return (img - self.mean) / self.std, int(self.labels[i])


def plain_loop(model_name, width, ds, mean, std, batch_size, device, steps, warmup, workers) -> float:
    """img/s of the plain loop over ``steps`` steps after ``warmup`` steps."""
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=len(ds.classes), width_mult=width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(
        PlainCifarDataset(ds.train.images, ds.train.labels, mean, std), batch_size=batch_size, shuffle=True,
        num_workers=workers, drop_last=True, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    done, t0 = 0, 0.0
    while done < warmup + steps:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            if done == warmup + steps:
                break
    loss.item()  # wait for the device
    return steps * batch_size / (time.perf_counter() - t0)


def engine_loop(model_name, width, data, batch_size, device, steps, warmup, val_fraction, compile_) -> float:
    """img/s of trainer.engine.train between optimizer steps ``warmup`` and ``warmup + steps``."""
    cfg = config_from_dict({
        "model": {"name": model_name, "width_mult": width},
        "data": {"path": data, "val_fraction": val_fraction},
        "epochs": 1000, "batch_size": batch_size, "device": device.type, "max_steps": warmup + steps,
        "log_every": 10_000, "compile": compile_,
    })
    stamps: dict[int, float] = {}

    def on_step(step, model, stop):
        if step in (warmup, warmup + steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as run_dir:
        train(cfg, run_dir, on_step=on_step, show_progress=False)
    return steps * batch_size / (stamps[warmup + steps] - stamps[warmup])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic", help="dataset path (default: built-in synthetic set)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default="resnet8,resnet18:0.25", help="NAME[:WIDTH],... ")
    ap.add_argument("--batch-sizes", default="128,256")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="2", help="plain-loop DataLoader workers, comma-separated variants")
    ap.add_argument("--val-fraction", type=float, default=0.02)
    ap.add_argument("--compile", action="store_true", help="also torch.compile in the engine")
    args = ap.parse_args()

    device = torch.device(args.device)
    ds = open_dataset(args.data, val_fraction=args.val_fraction, seed=0)
    mean, std = channel_stats(ds.train.images)
    console = Console()
    console.print(f"data: {ds.source} ({ds.format}, {len(ds.train.labels)} train images), device {device}, "
                  f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    table = Table(title="training throughput (img/s, median of rounds)")
    for col in ("model", "batch", "plain workers", "plain img/s", "engine img/s", "ratio"):
        table.add_column(col, justify="right")
    for spec in args.models.split(","):
        name, _, width = spec.partition(":")
        width = float(width or 1.0)
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            for workers in (int(w) for w in args.workers.split(",")):
                eng, plain = [], []
                for _ in range(args.rounds):
                    eng.append(engine_loop(name, width, args.data, bs, device, args.steps, args.warmup,
                                           args.val_fraction, args.compile))
                    plain.append(plain_loop(name, width, ds, mean, std, bs, device, args.steps, args.warmup, workers))
                e, p = statistics.median(eng), statistics.median(plain)
                table.add_row(f"{name} w{width:g}", str(bs), str(workers), f"{p:.0f}", f"{e:.0f}", f"{e / p:.2f}x")
                console.print(f"{name} w{width:g} bs{bs} workers{workers}: engine {[round(v) for v in eng]} "
                              f"plain {[round(v) for v in plain]}")
    console.print(table)


if __name__ == "__main__":
    main()
