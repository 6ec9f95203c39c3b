"""The ``edgesmith`` command: a thin shell over library functions of the same name.

``main(argv)`` returns the exit status, so tests call it directly. User faults
(:class:`EdgeSmithError`) print one ``error:`` line and exit 2; an interrupted
training run exits 130 after writing its checkpoint.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from edgesmith import __version__
from edgesmith.errors import ConfigError, EdgeSmithError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# train flags that map onto config keys (flag dest -> dotted key)
_TRAIN_FLAG_KEYS = {
    "model": "model.name",
    "data": "data.path",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "width_mult": "model.width_mult",
    "device": "device",
    "seed": "seed",
    "out": "out",
    "amp": "amp",
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesmith", description="Train a vision model and take it to an edge device.")
    parser.add_argument("--version", action="version", version=f"edgesmith {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a classifier; writes a run directory with checkpoint, model.onnx, manifest")
    t.add_argument("--config", metavar="FILE.yaml", help="YAML config (keys as in examples/configs/)")
    t.add_argument("--model", help="model name (resnet18, resnet8)")
    t.add_argument("--data", metavar="PATH", help="'synthetic' (default), a CIFAR-10 folder/.tar.gz, or an image folder")
    t.add_argument("--download", action="store_true", help="download CIFAR-10 into --data if it is not there")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int, help="global batch size (split across torchrun processes)")
    t.add_argument("--width-mult", type=float, help="channel width multiplier")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--amp", choices=["auto", "on", "off"], help="mixed precision (auto: on for CUDA)")
    t.add_argument("--out", metavar="DIR", help="run directory (default runs/<model>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    t.add_argument("--seed", type=int)
    t.add_argument("--profile", action="store_true", help="report per-phase time and peak memory")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key, e.g. optim.lr=0.05")
    t.add_argument("--no-progress", action="store_true", help="no progress output (one line per epoch is still printed)")

    e = sub.add_parser("eval", help="top-1 and per-class accuracy of a run's model or of an ONNX classifier")
    e.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="run directory (gives the model and its preprocessing)")
    e.add_argument("--data", metavar="PATH", help="dataset (default: the one the run was trained on)")
    e.add_argument("--onnx", metavar="FILE", help="evaluate this ONNX classifier in onnxruntime instead of the PyTorch checkpoint")
    e.add_argument("--split", choices=["val", "train"], default="val")
    e.add_argument("--batch-size", type=int, default=512)
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument("--mean", metavar="R,G,B", help="ONNX without a run: per-channel mean of pixel/255 (default 0,0,0)")
    e.add_argument("--std", metavar="R,G,B", help="ONNX without a run: per-channel std of pixel/255 (default 1,1,1)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _train_config(args: argparse.Namespace):
    from trainer.config import apply_override, config_from_dict, load_config_file

    data: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for dest, key in _TRAIN_FLAG_KEYS.items():
        value = getattr(args, dest)
        if value is not None:
            apply_override(data, f"{key}={json.dumps(value)}")
    for flag, key in (("download", "data.download"), ("profile", "profile"), ("compile", "compile")):
        if getattr(args, flag):
            apply_override(data, f"{key}=true")
    for assignment in args.set:
        apply_override(data, assignment)
    return config_from_dict(data)


def _resume_config(args: argparse.Namespace):
    from trainer.checkpoint import load_checkpoint
    from trainer.config import apply_override, config_from_dict

    given = [f"--{d.replace('_', '-')}" for d in list(_TRAIN_FLAG_KEYS) + ["config", "download", "compile"]
             if getattr(args, d) not in (None, False) and d not in ("device",)] + (["--set"] if args.set else [])
    if given:
        raise ConfigError(
            f"--resume continues a run with its saved config; remove {', '.join(given)} "
            "(only --device, --profile and --no-progress may be given)"
        )
    saved = load_checkpoint(args.resume).train_state.get("config")
    if not isinstance(saved, dict):
        raise ConfigError(f"{args.resume}: the checkpoint has no saved config; cannot resume")
    if args.device:
        apply_override(saved, f"device={args.device}")
    if args.profile:
        apply_override(saved, "profile=true")
    return config_from_dict(saved)


def cmd_train(args: argparse.Namespace) -> int:
    from edgesmith.pipeline import ONNX_FILE, train_and_export

    if args.resume:
        cfg, run_dir, resume = _resume_config(args), Path(args.resume), True
    else:
        cfg, resume = _train_config(args), False
        if cfg.out:
            run_dir = Path(cfg.out)
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("pass --out DIR when training with torchrun: every process must write the same run directory")
        else:
            run_dir = Path("runs") / f"{cfg.model.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        if (run_dir / "checkpoint.safetensors").exists():
            raise ConfigError(
                f"{run_dir} already holds a checkpoint; continue it with --resume {run_dir} or choose another --out"
            )
    result = train_and_export(cfg, run_dir, resume=resume, show_progress=not args.no_progress)
    if not result.dist.is_main:
        return EXIT_INTERRUPTED if result.interrupted else 0
    if result.interrupted:
        print(f"stopped ({result.stop_reason}) at step {result.metrics['global_step']}; checkpoint saved. "
              f"Continue with: edgesmith train --resume {run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    val = result.metrics.get("val", {})
    print(f"run directory: {run_dir}")
    if val:
        print(f"val top-1: {val['top1']:.2%} on {val['num_images']} images")
    print(f"model: {run_dir / ONNX_FILE} (parity with PyTorch checked), checkpoint: {run_dir / 'checkpoint.safetensors'}")
    if result.profile:
        _print_profile(result.profile)
    return 0


def _print_profile(profile: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"profile ({profile['steps']} steps)")
    for col in ("phase", "ms/step", "share"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    for phase, ms in profile["ms_per_step"].items():
        table.add_row(phase, f"{ms:.2f}", f"{profile['percent'][phase]:.1f}%")
    Console().print(table)
    print(f"peak memory: {profile['peak_memory_bytes'] / 2**20:.1f} MiB ({profile['peak_memory_kind']})")


def _floats3(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise ConfigError(f"{flag} expects three comma-separated numbers like 0.5,0.5,0.5, got {text!r}")
    return values


def cmd_eval(args: argparse.Namespace) -> int:
    from edgesmith.evaluation import evaluate_onnx, evaluate_run

    if args.onnx:
        report = evaluate_onnx(args.onnx, run_dir=args.run_dir, data=args.data, split=args.split,
                               batch_size=args.batch_size, mean=_floats3(args.mean, "--mean"),
                               std=_floats3(args.std, "--std"))
    elif args.run_dir:
        report = evaluate_run(args.run_dir, data=args.data, split=args.split, batch_size=args.batch_size,
                              device=args.device)
    else:
        raise ConfigError("eval needs a RUN_DIR, an --onnx FILE, or both")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    r = report.result
    table = Table(title=f"{report.model_desc} on {report.data_desc}")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("top-1", justify="right")
    for name, acc, total in zip(report.classes, r.per_class_accuracy(), r.per_class_total):
        table.add_row(name, str(total), "-" if total == 0 else f"{acc:.2%}")
    table.add_row("[bold]all", f"[bold]{r.total}", f"[bold]{r.top1:.2%}")
    Console().print(table)
    print(f"top-1: {r.top1:.4f} ({r.correct}/{r.total})")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval}


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except EdgeSmithError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
