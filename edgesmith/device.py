"""``edgesmith build``, ``edgesmith flash`` and ``edgesmith run``: firmware onto (emulated) devices.

* :func:`build` exports the model for the board when the run has no export yet, then compiles
  the firmware (``targets.build.build_firmware``) and checks its size against the board.
* :func:`flash` writes a weight blob into the device's inactive A/B slot over the EdgeSmith
  protocol (``targets.flasher``: hash read-back, trial boot, confirm), or a whole firmware image
  with the board's vendor tool (``targets.ports``). No ``--port``: auto-detect.
* :func:`run` boots the firmware (QEMU for ``mps2-an500``, a pty for ``host``), flashes the run's
  blob, runs one image on the device and compares the output with the reference interpreter;
  for a detector run (``postprocess.json``) the device also decodes and NMSes
  (:mod:`edgesmith.device_detect`) and the detections are compared with postprocess_np's.

:func:`add_parsers` and :data:`COMMANDS` are the argparse wiring for ``edgesmith/cli.py``.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgesmith.errors import ConfigError

RUN_BOARDS = ("mps2-an500", "host")
FLASH_TOOLS = ("esptool", "stm32loader", "pyocd", "dfu-util")


def _export_dir(target: str | Path, board: str, variant: str | None, log: Callable[[str], None]) -> tuple[Path, Path]:
    """(export folder with c/ and weights.bin, model file) for a run directory or model file;
    exports first when the folder is missing or incomplete."""
    from edgesmith.firmware import export, resolve_model  # noqa: PLC0415

    model_path, run_dir = resolve_model(target, variant)
    out = (run_dir / "targets" / board) if run_dir is not None else model_path.parent / f"{model_path.stem}-{board}"
    header = out / "c" / "model.h"
    # a detector run's export must carry the post-processing (exports made before it did not)
    stale = run_dir is not None and (run_dir / "postprocess.json").is_file() and (
        not header.is_file() or "MODEL_DETECT " not in header.read_text())
    if stale or not header.is_file() or not (out / "weights.bin").is_file():
        log(f"exporting {model_path} for {board} into {out}")
        export(str(target), board, variant=variant, out=str(out), log=log)
    return out, model_path


def build(target: str | Path, board: str, *, variant: str | None = None, out: str | Path | None = None,
          public_key: str | Path | None = None, log: Callable[[str], None] = print):
    """Compile the firmware for ``board``; returns ``targets.build.FirmwareImage``. With
    ``public_key`` (KEY.pem) the firmware runs only blobs signed by the matching private key."""
    from targets.boards import get_board  # noqa: PLC0415
    from targets.build import build_firmware  # noqa: PLC0415

    profile = get_board(board)
    export_dir, _ = _export_dir(target, profile.name, variant, log)
    out_dir = Path(out) if out else export_dir / "firmware"
    image = build_firmware(export_dir, profile.name, out_dir, public_key=public_key)
    log(f"firmware {image.elf}" + (f" (requires blobs signed for {public_key})" if public_key else ""))
    if image.image:
        log(f"image    {image.image}")
    limits = (f" of {image.flash_limit_bytes} / {image.ram_limit_bytes}"
              if image.flash_limit_bytes else "")
    log(f"flash {image.flash_bytes} bytes, RAM {image.ram_bytes} bytes{limits}")
    for note in image.notes:
        log(note)
    return image


def flash(port: str | None = None, *, blob: str | Path | None = None, image: str | Path | None = None,
          baud: int = 115200, board: str | None = None, tool: str | None = None,
          public_key: str | Path | None = None, require_signature: bool = False,
          log: Callable[[str], None] = print):
    """Flash a weight blob (returns ``targets.flasher.FlashResult``) or a firmware image with the
    vendor tool (returns the command line run). Exactly one of ``blob`` and ``image``."""
    if (blob is None) == (image is None):
        raise ConfigError("pass exactly one of --blob FILE (weights, over the EdgeSmith protocol) and "
                          "--image FILE (whole firmware, with the vendor tool)")
    if image is not None:
        from targets.ports import flash_image  # noqa: PLC0415

        return flash_image(image, board, port=port, baud=baud, tool=tool, log=log)
    from targets.flasher import flash_blob  # noqa: PLC0415
    from targets.ports import detect_port  # noqa: PLC0415

    path = Path(blob)
    if not path.is_file():
        raise ConfigError(f"no blob at {path}; edgesmith export writes weights.bin into RUN_DIR/targets/BOARD")
    key = None
    if public_key:
        from firmware_export.blob import load_public_key  # noqa: PLC0415

        key = load_public_key(public_key)
    if require_signature and key is None:
        raise ConfigError("--require-signature needs --public-key KEY.pem to check the signature")
    url = port or detect_port()
    log(f"flashing {path} ({path.stat().st_size} bytes) over {url}")
    result = flash_blob(url, path.read_bytes(), baud=baud, public_key=key,
                        require_signature=require_signature, log=log)
    log(f"verified: slot {'AB'[result.slot]} active and confirmed, sha256 {result.sha256[:16]}…, "
        f"{result.written_bytes} bytes in {result.write_seconds:.2f} s "
        f"({result.write_throughput / 1024:.1f} KiB/s)"
        + (f", resumed at byte {result.resumed_from}" if result.resumed_from else ""))
    return result


@dataclasses.dataclass
class RunReport:
    """One image on the device next to the reference interpreter."""

    board: str
    prediction: int
    label: str
    scores: list[float]
    bit_exact: bool
    cycles: int
    flash_seconds: float


def _quantized_input(image_path: Path, run_dir: Path, graph: Any) -> np.ndarray:
    """The image preprocessed as in training, quantized to the graph's int8 input."""
    from edgesmith.manifest import load_manifest  # noqa: PLC0415
    from firmware_export.fixedpoint import round_half_away_array  # noqa: PLC0415
    from quantize.calibration import PreprocessSpec  # noqa: PLC0415
    from trainer.data.imagefolder import decode_image  # noqa: PLC0415

    pre = load_manifest(run_dir).get("model", {}).get("preprocessing")
    if not pre:
        raise ConfigError(f"run {run_dir} records no preprocessing in manifest.json (model.preprocessing)")
    t = graph.tensor(graph.inputs[0])
    if t.dtype != "int8" or len(t.shape) != 4:
        raise ConfigError(f"edgesmith run feeds one int8 image tensor; the model's input is {t.dtype} {t.shape}")
    nhwc = t.shape[-1] in (1, 3)
    spec = dataclasses.replace(PreprocessSpec.from_run(pre), layout="NHWC" if nhwc else "NCHW")
    if not image_path.is_file():
        raise ConfigError(f"no image at {image_path}")
    rgb = decode_image(image_path.read_bytes(), str(image_path), tuple(spec.size))
    x = spec.apply(rgb[None])
    q = round_half_away_array(x / np.float32(t.per_tensor_scale())) + t.per_tensor_zero_point()
    q = np.clip(q, -128, 127).astype(np.int8)
    if tuple(q.shape) != tuple(t.shape):
        raise ConfigError(f"preprocessed image has shape {q.shape}, the model expects {tuple(t.shape)}")
    return q


def run(run_dir: str | Path, board: str, input_path: str | Path, *, variant: str | None = None,
        log: Callable[[str], None] = print):
    """Boot the firmware, flash the run's blob, infer one image; report the prediction and
    whether the device's output equals the reference interpreter's. A detector run returns a
    :class:`edgesmith.device_detect.DetectRunReport` (detections and whether they equal the
    reference), a classifier run a :class:`RunReport`."""
    from firmware_export.export import load_model  # noqa: PLC0415
    from edgesmith.manifest import load_manifest  # noqa: PLC0415
    from targets.flasher import flash_blob  # noqa: PLC0415
    from targets.runner import HostFirmware, QemuBoard, infer_on_device  # noqa: PLC0415

    if board not in RUN_BOARDS:
        raise ConfigError(f"edgesmith run boots {', '.join(RUN_BOARDS)}; got {board!r} (flash real "
                          f"boards with edgesmith flash)")
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no manifest.json)")
    export_dir, model_path = _export_dir(run_dir, board, variant, log)
    from edgesmith.device_detect import is_detector_run, run_detector  # noqa: PLC0415

    if is_detector_run(run_dir):
        return run_detector(run_dir, board, Path(input_path), export_dir, model_path, variant, log=log)
    graph = load_model(model_path)
    x = _quantized_input(Path(input_path), run_dir, graph)
    image = build(run_dir, board, variant=variant, log=log)
    blob = (export_dir / "weights.bin").read_bytes()
    with tempfile.TemporaryDirectory(prefix="edgesmith-run-") as tmp:
        target = QemuBoard(image.elf) if board == "mps2-an500" else HostFirmware(image.elf, Path(tmp) / "flash.bin")
        with target:
            flashed = flash_blob(target.url, blob, log=log)
            with target.open() as dev:
                result = infer_on_device(dev, graph, x)
    out = graph.tensor(graph.outputs[0])
    q = result.output.view(np.int8)[:out.nbytes].astype(np.float32)
    scores = ((q - out.per_tensor_zero_point()) * out.per_tensor_scale()).tolist()
    pred = int(np.argmax(scores))
    classes = load_manifest(run_dir).get("model", {}).get("classes") or []
    label = classes[pred] if pred < len(classes) else str(pred)
    log(f"prediction: {label} (class {pred}, score {scores[pred]:.3f}); {result.cycles} cycles on {board}")
    log(f"device output {'equals' if result.bit_exact else 'DIFFERS FROM'} the reference interpreter's")
    return RunReport(board, pred, label, scores, result.bit_exact, result.cycles, flashed.total_seconds)


# --------------------------------------------------------------------------- CLI wiring

def add_parsers(sub: Any) -> None:
    """The build / flash / run subcommands (``sub`` is the parser's subparsers object)."""
    b = sub.add_parser("build", help="compile the firmware for a board (exports first if needed); size-checked")
    b.add_argument("target", metavar="RUN_DIR|MODEL_FILE", help="a run directory, or a QDQ .onnx / int8 .tflite")
    b.add_argument("--target", dest="board", required=True, metavar="BOARD", help="board name (see: edgesmith boards)")
    b.add_argument("--variant", help="run directories: which variants/NAME.onnx (default int8)")
    b.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/targets/BOARD/firmware)")
    b.add_argument("--public-key", metavar="KEY.pem",
                   help="compile this Ed25519 public key in: the firmware then runs only blobs signed with its private key")

    f = sub.add_parser("flash", help="write a weight blob into the device's A/B slot, or a firmware image")
    f.add_argument("--port", metavar="URL", help="/dev/ttyUSB0, a pty, socket://HOST:PORT (default: auto-detect)")
    what = f.add_mutually_exclusive_group(required=True)
    what.add_argument("--blob", metavar="FILE", help="weight blob (weights.bin) over the EdgeSmith protocol")
    what.add_argument("--image", metavar="FILE", help="whole firmware image, with the board's vendor tool")
    f.add_argument("--baud", type=int, default=115200, help="baud rate (default 115200)")
    f.add_argument("--target", dest="board", metavar="BOARD", help="--image: the board (default: from the file name)")
    f.add_argument("--tool", choices=FLASH_TOOLS, help="--image: vendor tool (default: the first installed)")
    f.add_argument("--public-key", metavar="KEY.pem", help="--blob: check the blob's Ed25519 signature")
    f.add_argument("--require-signature", action="store_true", help="--blob: refuse unsigned blobs")

    r = sub.add_parser("run", help="boot the firmware (QEMU), flash the run's blob, classify one image on it "
                                   "(detector runs: detect objects in it)")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--target", dest="board", default="mps2-an500", choices=RUN_BOARDS)
    r.add_argument("--input", required=True, metavar="IMAGE", help="an image file")
    r.add_argument("--variant", help="which variants/NAME.onnx (default int8)")


def cmd_build(args: argparse.Namespace) -> int:
    build(args.target, args.board, variant=args.variant, out=args.out, public_key=args.public_key)
    return 0


def cmd_flash(args: argparse.Namespace) -> int:
    flash(args.port, blob=args.blob, image=args.image, baud=args.baud, board=args.board, tool=args.tool,
          public_key=args.public_key, require_signature=args.require_signature)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    report = run(args.run_dir, args.board, args.input, variant=args.variant)
    return 0 if report.bit_exact else 1


COMMANDS = {"build": cmd_build, "flash": cmd_flash, "run": cmd_run}
