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
    "init_backbone": "detection.init_backbone",
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesmith", description="Train a vision model and take it to an edge device.")
    parser.add_argument("--version", action="version", version=f"edgesmith {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a classifier or detector; writes a run directory with checkpoint, model.onnx, manifest")
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
    t.add_argument("--init-backbone", metavar="RUN_DIR", help="detectors: start from the backbone of a shufflenetv2 run")

    e = sub.add_parser("eval", help="top-1 and per-class accuracy of a run's model or of an ONNX classifier")
    e.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="run directory (gives the model and its preprocessing)")
    e.add_argument("--data", metavar="PATH", help="dataset (default: the one the run was trained on)")
    e.add_argument("--onnx", metavar="FILE", help="evaluate this ONNX classifier in onnxruntime instead of the PyTorch checkpoint")
    e.add_argument("--split", choices=["val", "train"], default="val")
    e.add_argument("--batch-size", type=int, default=512)
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument("--mean", metavar="R,G,B", help="ONNX without a run: per-channel mean of pixel/255 (default 0,0,0)")
    e.add_argument("--std", metavar="R,G,B", help="ONNX without a run: per-channel std of pixel/255 (default 1,1,1)")
    e.add_argument("--variant", metavar="NAME", help="evaluate RUN_DIR/variants/NAME.onnx in onnxruntime (fp32 = "
                   "model.onnx, all = every variant); updates reports/variants.json and variants.png")
    e.add_argument("--json", action="store_true", help="print the result as JSON")

    q = sub.add_parser("quantize", help="INT8 (PTQ or QAT) and FP16 variants of a run's model or of any FP32 ONNX")
    q.add_argument("target", metavar="RUN_DIR|MODEL.onnx", help="a run directory, or your own FP32 ONNX model")
    q.add_argument("--int8", action="store_true", help="post-training INT8 quantization (the default)")
    q.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning of a run (classifier or detector), writes int8-qat.onnx")
    q.add_argument("--epochs", type=int, default=2, help="QAT epochs (default 2)")
    q.add_argument("--qat-lr", type=float, default=1e-4, help="QAT peak learning rate, cosine decay (default 1e-4)")
    q.add_argument("--fp16", action="store_true", help="also write fp16.onnx (GPU targets)")
    q.add_argument("--calib-data", metavar="PATH", help="folder of calibration images (default: the run's training split)")
    q.add_argument("--calib-size", type=int, default=512, help="calibration images (default 512)")
    q.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy", "mse"],
                   help="activation range calibration (default minmax)")
    q.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    q.add_argument("--keep-float", nargs="+", default=[], metavar="NODE", help="ONNX node names left in float")
    q.add_argument("--no-fuse-leaky-relu", dest="fuse_leaky_relu", action="store_false",
                   help="quantize each conv output before its LeakyReLU (for converters without a fused "
                        "LeakyReLU, e.g. to TFLite); default: fused, one int8 rounding per conv")
    q.add_argument("--name", help="variant name (default int8 / int8-qat): writes variants/NAME.onnx")
    q.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/variants or next to the model)")
    q.add_argument("--seed", type=int, default=0, help="seed for the calibration sample and QAT")
    q.add_argument("--input-size", metavar="H,W", help="your ONNX: input size (default: from the model)")
    q.add_argument("--mean", metavar="R,G,B", help="your ONNX: mean of pixel*scale per channel (default 0,0,0)")
    q.add_argument("--std", metavar="R,G,B", help="your ONNX: std per channel (default 1,1,1)")
    q.add_argument("--layout", choices=["NCHW", "NHWC"], help="your ONNX: input layout (default: from the model)")
    q.add_argument("--colour-order", choices=["RGB", "BGR"], default="RGB", help="your ONNX: channel order")
    q.add_argument("--pixel-scale", type=float, default=1 / 255, help="your ONNX: pixel multiplier before mean/std")

    x = sub.add_parser("export", help="compile a quantized model for a board: .tflite, C sources, weight blob, fit report")
    x.add_argument("target", metavar="RUN_DIR|MODEL_FILE", help="a run directory, or a QDQ .onnx / int8 .tflite file")
    x.add_argument("--target", dest="board", required=True, metavar="BOARD", help="board name (see: edgesmith boards)")
    x.add_argument("--variant", help="run directories: which variants/NAME.onnx (default int8)")
    x.add_argument("--format", dest="formats", metavar="LIST", help="comma list of tflite,c,blob (default all)")
    x.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/targets/BOARD)")
    x.add_argument("--weights-section", metavar="NAME", help="C: put weights in this linker section (external flash)")
    x.add_argument("--sign-key", metavar="KEY.pem", help="sign the weight blob with this Ed25519 private key")

    i = sub.add_parser("inspect", help="ops, tensors, bytes and MACs of a QDQ .onnx or int8 .tflite model")
    i.add_argument("model", metavar="MODEL_FILE")

    sub.add_parser("boards", help="list the board profiles: core, clock, memories, toolchain, emulator")

    from edgesmith import device  # build / flash / run (argparse lines live beside their handlers)

    device.add_parsers(sub)

    d = sub.add_parser("detect", help="run a detector run on images; writes PNGs with boxes and labels")
    d.add_argument("run_dir", metavar="RUN_DIR", help="run directory of a detector (nanodet-*) run")
    d.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    d.add_argument("--out", metavar="DIR", default="detections", help="output folder (default ./detections)")
    d.add_argument("--score-thr", type=float, help="minimum score of a drawn box (default 0.35)")
    d.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
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
    if "map50" in val:
        print(f"val mAP@[.5:.95]: {val['map']:.4f}  mAP@.5: {val['map50']:.4f} on {val['num_images']} images")
    elif val:
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

    if args.variant:
        return cmd_eval_variant(args)
    if args.run_dir and not args.onnx and _is_detector_run(args.run_dir):
        return cmd_eval_detection(args)
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


def _is_detector_run(run_dir: str) -> bool:
    from trainer.checkpoint import load_checkpoint

    return load_checkpoint(run_dir, load_optimizer=False).train_state.get("task") == "detection"


def cmd_eval_detection(args: argparse.Namespace) -> int:
    from edgesmith.detection import evaluate_detection_run

    report = evaluate_detection_run(args.run_dir, data=args.data, split=args.split, device=args.device)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    m = report.metrics
    print(f"{report.model_desc} on {report.data_desc} ({m['num_images']} images)")
    for name, ap in m["per_class"].items():
        print(f"  {name}: AP {'-' if ap < 0 else f'{ap:.4f}'}")
    print(f"mAP@[.5:.95]: {m['map']:.4f}  mAP@.5: {m['map50']:.4f}  mAP@.75: {m['map75']:.4f}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from edgesmith.detection import detect

    written = detect(args.run_dir, args.images, args.out, score_thr=args.score_thr, device=args.device)
    for path in written:
        print(path)
    return 0


def _preprocess_spec(args: argparse.Namespace):
    """The preprocessing flags of `quantize` for a user's ONNX (None: take the run's or the model's)."""
    from quantize.calibration import PreprocessSpec, model_input

    given = [args.input_size, args.mean, args.std, args.layout]
    if all(v is None for v in given) and args.colour_order == "RGB" and args.pixel_scale == 1 / 255:
        return None
    size = None
    if args.input_size:
        try:
            size = tuple(int(v) for v in args.input_size.split(","))
        except ValueError:
            size = ()
        if len(size) != 2:
            raise ConfigError(f"--input-size expects H,W like 224,224, got {args.input_size!r}")
    layout = args.layout
    if size is None or layout is None:
        target = Path(args.target)
        if target.is_dir():
            raise ConfigError("--input-size/--mean/--std/--layout describe your own ONNX model; "
                              "a run directory records its preprocessing")
        _, dims = model_input(target)
        layout = layout or ("NHWC" if len(dims) == 4 and dims[3] == 3 else "NCHW")
        if size is None:
            hw = dims[1:3] if layout == "NHWC" else dims[2:4]
            if len(hw) != 2 or not all(hw):
                raise ConfigError(f"cannot tell the input size of {target} (shape {dims}); pass --input-size H,W")
            size = tuple(hw)
    return PreprocessSpec(size=size, mean=tuple(_floats3(args.mean, "--mean") or (0.0, 0.0, 0.0)),
                          std=tuple(_floats3(args.std, "--std") or (1.0, 1.0, 1.0)), layout=layout,
                          colour_order=args.colour_order, scale=args.pixel_scale)


def cmd_quantize(args: argparse.Namespace) -> int:
    from edgesmith.quantization import QuantizeRequest, quantize

    req = QuantizeRequest(target=args.target, int8=args.int8 or not (args.fp16 or args.qat), fp16=args.fp16,
                          qat=args.qat, epochs=args.epochs, qat_lr=args.qat_lr, calib_data=args.calib_data,
                          calib_size=args.calib_size, method=args.method, per_tensor=args.per_tensor,
                          keep_float=args.keep_float, fuse_leaky_relu=args.fuse_leaky_relu, name=args.name,
                          out=args.out, spec=_preprocess_spec(args), seed=args.seed)
    quantize(req)
    return 0


def cmd_eval_variant(args: argparse.Namespace) -> int:
    from edgesmith.quantization import evaluate_variants

    if not args.run_dir or args.onnx:
        raise ConfigError("--variant needs a RUN_DIR (and no --onnx): variants live in RUN_DIR/variants/")
    entries = evaluate_variants(args.run_dir, args.variant, data=args.data, split=args.split,
                                batch_size=args.batch_size)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    metric = "map50" if "map50" in entries[0] else "top1"
    print(f"{'variant':<16} {'mAP@.5' if metric == 'map50' else 'top-1':>8} {'KiB':>9} {'MMACs':>8} {'CPU ms':>8}")
    for e in entries:
        value = f"{e[metric]:8.4f}" if metric == "map50" else f"{e[metric]:8.2%}"
        print(f"{e['variant']:<16} {value} {e['bytes'] / 1024:9.1f} {e['macs'] / 1e6:8.2f} {e['cpu_latency_ms']:8.3f}")
    print(f"report: {Path(args.run_dir) / 'reports' / 'variants.json'} (+ variants.png)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edgesmith.firmware import export

    result = export(args.target, args.board, variant=args.variant, formats=args.formats, out=args.out,
                    weights_section=args.weights_section, signing_key_path=args.sign_key)
    for kind, paths in result.files.items():
        for p in paths:
            print(f"{kind:<7} {p}")
    for line in result.fit.messages:
        print(line)
    print(f"fits {result.fit.board}: {'yes' if result.fit.fits else 'NO'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from edgesmith.firmware import inspect

    print(inspect(args.model))
    return 0


def cmd_boards(args: argparse.Namespace) -> int:
    from edgesmith.firmware import boards_table

    print(boards_table())
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "detect": cmd_detect, "quantize": cmd_quantize,
            "export": cmd_export, "inspect": cmd_inspect, "boards": cmd_boards}


def _device_commands() -> dict:
    from edgesmith import device

    return device.COMMANDS


COMMANDS.update(_device_commands())


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
