"""``edgesmith quantize`` and ``edgesmith eval --variant``: the quantize stage over a run or a user's ONNX.

A run directory gives everything: ``model.onnx``, the preprocessing and the training data (the
calibration set is a seeded sample of its training split). A user's own FP32 ONNX needs
``--calib-data`` (a folder of images) and the preprocessing spec. Variants land in
``variants/<name>.onnx``, the sensitivity report in ``reports/``, and both in the manifest.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgesmith.errors import ConfigError, DataError, ExportError
from edgesmith.manifest import load_manifest, now_iso, record_artifact, write_manifest
from quantize.calibration import (
    DEFAULT_CALIB_SIZE,
    CalibrationSet,
    PreprocessSpec,
    batches_of,
    check_batches_fit,
    folder_images,
    iter_feeds,
    model_input,
    sample_split,
)

ONNX_FILE = "model.onnx"
VARIANTS_DIR = "variants"
REPORTS_DIR = "reports"


@dataclasses.dataclass
class QuantizeRequest:
    """Everything ``edgesmith quantize`` was asked to do (CLI flags, typed)."""

    target: str
    int8: bool = True
    fp16: bool = False
    qat: bool = False
    epochs: int = 2
    qat_lr: float = 1e-4
    calib_data: str | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    method: str = "minmax"
    per_tensor: bool = False
    keep_float: Sequence[str] = ()
    fuse_leaky_relu: bool = True
    name: str | None = None
    out: str | None = None
    spec: PreprocessSpec | None = None  # user models; a run's comes from its checkpoint
    seed: int = 0


@dataclasses.dataclass
class _Source:
    fp32: Path
    out_dir: Path
    run_dir: Path | None
    spec: PreprocessSpec
    train_state: dict | None = None


def _resolve(req: QuantizeRequest) -> _Source:
    target = Path(req.target).expanduser()
    if target.is_dir():
        fp32 = target / ONNX_FILE
        if not fp32.is_file():
            raise ExportError(f"{target} has no {ONNX_FILE}; finish training (edgesmith train) or "
                              "pass an ONNX file instead of a run directory")
        from trainer.checkpoint import load_checkpoint  # noqa: PLC0415

        st = load_checkpoint(target, load_optimizer=False).train_state
        spec = req.spec or PreprocessSpec.from_run(st["preprocessing"])
        return _Source(fp32, Path(req.out) if req.out else target / VARIANTS_DIR, target, spec, st)
    if target.suffix.lower() == ".onnx" and target.is_file():
        if req.calib_data is None:
            raise ConfigError(f"{target} is not an EdgeSmith run: pass --calib-data FOLDER with images for calibration "
                              "(and --input-size/--mean/--std/--layout/--colour-order as the model expects)")
        spec = req.spec or _spec_from_model(target)
        return _Source(target, Path(req.out) if req.out else target.parent / VARIANTS_DIR, None, spec)
    raise ConfigError(f"{target} is neither a run directory nor an .onnx file; pass RUN_DIR or MODEL.onnx")


def _spec_from_model(path: Path) -> PreprocessSpec:
    _, dims = model_input(path)
    if len(dims) == 4 and dims[1] == 3 and dims[2] and dims[3]:
        return PreprocessSpec(size=(dims[2], dims[3]), layout="NCHW")
    if len(dims) == 4 and dims[3] == 3 and dims[1] and dims[2]:
        return PreprocessSpec(size=(dims[1], dims[2]), layout="NHWC")
    raise ConfigError(f"cannot tell the input size of {path} (input shape {dims}); pass --input-size H,W")


def calibration_set(src: _Source, req: QuantizeRequest) -> CalibrationSet:
    """The calibration images, preprocessed for the model and checked against its input."""
    if req.calib_size < 1:
        raise ConfigError(f"--calib-size must be >= 1, got {req.calib_size}")
    if req.calib_data is not None:
        images, _ = folder_images(req.calib_data, src.spec.size, req.calib_size, req.seed)
        where = req.calib_data
    elif _is_detector(src):
        from edgesmith.detection import calibration_images  # noqa: PLC0415

        images, where = calibration_images(src.run_dir, req.calib_size)
    else:
        ds = _run_dataset(src)
        images = sample_split(ds, req.calib_size, req.seed)
        where = f"{ds.source} [train]"
    batches = batches_of(src.spec.apply(images))
    _, dims = model_input(src.fp32)
    check_batches_fit(batches, dims, where)
    return CalibrationSet(batches, where, src.spec)


def _is_detector(src: _Source) -> bool:
    return bool(src.train_state) and src.train_state.get("task") == "detection"


def _run_dataset(src: _Source):
    from edgesmith.evaluation import open_eval_data  # noqa: PLC0415

    return open_eval_data(None, src.train_state.get("config"))


def _feeds(src: _Source, calib: CalibrationSet) -> list[dict[str, np.ndarray]]:
    name, dims = model_input(src.fp32)
    return list(iter_feeds(name, calib.batches, dims[0] if dims and dims[0] else None))


def quantize(req: QuantizeRequest, log: Callable[[str], None] = print) -> dict:
    """Run the requested conversions; returns {variant name: details} and updates the manifest."""
    from quantize.calibrators import METHODS  # noqa: PLC0415
    from quantize.ptq import quantize_int8  # noqa: PLC0415
    from quantize.sensitivity import format_report, sensitivity_report  # noqa: PLC0415
    from quantize.variants import convert_fp16  # noqa: PLC0415

    if req.method not in METHODS:
        raise ConfigError(f"unknown --method {req.method!r}; choose from: {', '.join(METHODS)}")
    if not (req.int8 or req.fp16 or req.qat):
        raise ConfigError("nothing to do: pass --int8, --qat and/or --fp16")
    src = _resolve(req)
    done: dict[str, dict] = {}
    if req.fp16:
        path = convert_fp16(src.fp32, src.out_dir / "fp16.onnx")
        done["fp16"] = {"path": str(path), "kind": "onnx_fp16"}
        log(f"fp16: {path}")
    if req.int8 or req.qat:
        calib = calibration_set(src, req)
        feeds = _feeds(src, calib)
        log(f"calibration: {calib.num_images} images from {calib.source}")
        if req.qat:
            name = req.name or "int8-qat"
            info = _run_qat(src, req, feeds, src.out_dir / f"{name}.onnx", log)
        else:
            name = req.name or "int8"
            result = quantize_int8(src.fp32, src.out_dir / f"{name}.onnx", feeds, method=req.method,
                                   per_channel=not req.per_tensor, keep_float=req.keep_float,
                                   calibration_images=calib.num_images, fuse_leaky_relu=req.fuse_leaky_relu)
            info = result.to_dict()
        report = sensitivity_report(src.fp32, info["path"], feeds)
        reports = (src.run_dir or src.out_dir) / REPORTS_DIR
        reports.mkdir(parents=True, exist_ok=True)
        sens_path = reports / f"sensitivity-{name}.json"
        sens_path.write_text(json.dumps([r.to_dict() for r in report], indent=1))
        info.update(kind="onnx_int8_qdq", calibration_source=calib.source, preprocessing=src.spec.to_dict(),
                    sensitivity=str(sens_path), output_sqnr_db=round(report[-1].sqnr_db, 2) if report else None)
        done[name] = info
        log(f"{name}: {info['path']} ({info['quantized_activations']} quantized activations)")
        log("layers losing the most SQNR (keep them in float with --keep-float NODE):\n" + format_report(report))
    if src.run_dir is not None:
        _record(src.run_dir, done)
    return done


def _run_qat(src: _Source, req: QuantizeRequest, feeds, out: Path, log) -> dict:
    if src.run_dir is None:
        raise ConfigError("--qat fine-tunes an EdgeSmith run (it needs the checkpoint and training data); "
                          "pass a run directory, or use PTQ (--int8) for your own ONNX model")
    from quantize.qat import ClassifierQatTask, QatSettings, qat_to_qdq  # noqa: PLC0415
    from trainer.checkpoint import build_model_from_checkpoint, load_checkpoint  # noqa: PLC0415
    from trainer.engine.setup import resolve_device  # noqa: PLC0415

    if req.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1 for QAT, got {req.epochs}")
    ckpt = load_checkpoint(src.run_dir, load_optimizer=False)
    device = resolve_device("auto")
    cfg = src.train_state.get("config") or {}
    if _is_detector(src):
        from edgesmith.detection import shipped_model  # noqa: PLC0415
        from quantize.qat_detection import DetectorQatTask  # noqa: PLC0415

        model = shipped_model(ckpt)  # the EMA weights model.onnx was exported from
        # Small detection batches: BN statistics and activation ranges stay as calibrated (ranges from
        # --method); only the weights adapt to the quantization noise.
        settings = QatSettings(epochs=req.epochs, lr=req.qat_lr, seed=req.seed, freeze_bn_epoch=0,
                               freeze_observer_epoch=0, init_method=req.method,
                               grad_clip=float(cfg.get("optim", {}).get("grad_clip", 0.0)))
        task = DetectorQatTask(src.train_state, settings, device)
    else:
        model = build_model_from_checkpoint(ckpt)
        ds = _run_dataset(src)
        aug = cfg.get("augment", {})
        settings = QatSettings(epochs=req.epochs, lr=req.qat_lr, seed=req.seed,
                               crop_padding=int(aug.get("crop_padding", 4)), flip=bool(aug.get("flip", True)))
        task = ClassifierQatTask(ds.train, ds.image_size, src.spec.mean, src.spec.std, settings, device)
    result = qat_to_qdq(model, src.fp32, out, task=task, feeds=feeds, settings=settings,
                        per_channel=not req.per_tensor, fuse_leaky_relu=req.fuse_leaky_relu, device=device,
                        log=log)
    return result.to_dict()


def _record(run_dir: Path, done: dict[str, dict]) -> None:
    manifest = load_manifest(run_dir)
    for name, info in done.items():
        rel = str(Path(info["path"]).resolve().relative_to(run_dir.resolve())) \
            if Path(info["path"]).resolve().is_relative_to(run_dir.resolve()) else info["path"]
        extra = {k: v for k, v in info.items() if k not in ("path", "kind")}
        record_artifact(manifest, run_dir, rel, kind=info["kind"], variant=name, **extra)
    manifest["lineage"].append({"stage": "quantize", "time": now_iso(), "outputs": sorted(done)})
    write_manifest(run_dir, manifest)


# ----------------------------------------------------------------------------- evaluation of variants
def variant_path(run_dir: str | Path, variant: str) -> Path:
    run_dir = Path(run_dir)
    path = run_dir / ONNX_FILE if variant == "fp32" else run_dir / VARIANTS_DIR / f"{variant}.onnx"
    if not path.is_file():
        have = ["fp32"] + sorted(p.stem for p in (run_dir / VARIANTS_DIR).glob("*.onnx"))
        raise ConfigError(f"run {run_dir} has no variant {variant!r}; it has: {', '.join(have)} "
                          "(make more with edgesmith quantize)")
    return path


def evaluate_variants(run_dir: str | Path, variant: str, *, data: str | None = None, split: str = "val",
                      batch_size: int = 512) -> list[dict]:
    """Accuracy, bytes, MACs and CPU latency of one variant (or ``all``); updates reports/variants.json + PNG."""
    from edgesmith.evaluation import evaluate_onnx  # noqa: PLC0415
    from quantize.variants import update_report, variant_entry  # noqa: PLC0415

    from trainer.checkpoint import load_checkpoint  # noqa: PLC0415

    run_dir = Path(run_dir)
    detector = load_checkpoint(run_dir, load_optimizer=False).train_state.get("task") == "detection"
    names = (["fp32"] + sorted(p.stem for p in (run_dir / VARIANTS_DIR).glob("*.onnx"))) if variant == "all" else [variant]
    entries = []
    for name in names:
        path = variant_path(run_dir, name)
        if detector:
            from edgesmith.detection import evaluate_detection_onnx  # noqa: PLC0415

            rep = evaluate_detection_onnx(run_dir, path, data=data, split=split)
            metrics = {"map": rep.metrics["map"], "map50": rep.metrics["map50"], "images": rep.metrics["num_images"],
                       "data": rep.data_desc}
        else:
            rep = evaluate_onnx(path, run_dir=run_dir, data=data, split=split, batch_size=batch_size)
            metrics = {"top1": rep.result.top1, "images": rep.result.total, "data": rep.data_desc}
        entries.append(variant_entry(name, path, metrics))
    if not entries:
        raise DataError(f"no variants to evaluate in {run_dir}")
    update_report(run_dir / REPORTS_DIR, entries)
    return entries
