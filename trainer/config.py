"""Training configuration: dataclasses that mirror the YAML tree, loaded strictly.

A YAML file, CLI flags and ``--set key=value`` overrides all land in one
:class:`TrainConfig`. Unknown keys, wrong types and invalid choices raise
:class:`~edgesmith.errors.ConfigError` naming the key and the valid options:
a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from edgesmith.errors import ConfigError


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass
class ModelConfig:
    name: str = "resnet18"
    width_mult: float = 1.0


@dataclass
class DataConfig:
    path: str = "synthetic"  # 'synthetic', a CIFAR-10 folder/archive, or an image folder
    val_fraction: float = 0.1  # used when the data has no test/val split
    download: bool = False
    image_size: Optional[list[int]] = None  # [H, W]; None keeps the data's own size
    num_workers: int = 2  # DataLoader workers for streamed (large-image) folders
    cache_dir: Optional[str] = None


@dataclass
class AugmentConfig:
    crop_padding: int = 4  # random crop after padding this many pixels on each side (0 = off)
    flip: bool = True  # random horizontal flip
    cutout: int = 0  # side of a random square zeroed in each image (0 = off)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1  # peak learning rate, for a global batch of ``batch_size``
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # never applied to BN parameters or biases
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    label_smoothing: float = 0.1
    grad_clip: float = 0.0  # max global grad norm; 0 = off


@dataclass
class ScheduleConfig:
    name: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_epochs: float = 1.0  # linear warm-up (cosine); one-cycle uses pct_start
    pct_start: float = 0.25  # one-cycle: fraction of steps spent rising to the peak
    final_lr_ratio: float = 0.0  # final lr = lr * final_lr_ratio


@dataclass
class DetectionAugmentConfig:
    flip: float = 0.5  # probability of a horizontal flip
    scale: list[float] = field(default_factory=lambda: [0.6, 1.4])  # zoom range around the letterbox fit
    translate: float = 0.2  # max shift as a fraction of the input size
    hsv: list[float] = field(default_factory=lambda: [0.015, 0.7, 0.4])  # hue, saturation, value gains
    mosaic: float = 0.0  # probability of a 4-image mosaic


@dataclass
class DetectionConfig:
    """Detector-only settings (used when model.name is a nanodet-* model; data.image_size is the input)."""

    assigner: Literal["auto", "atss", "dynamic"] = "auto"  # auto: the model's own (m: atss, plus: dynamic)
    init_backbone: Optional[str] = None  # run directory of a shufflenetv2 classifier with the same width_mult
    qfl_weight: float = 1.0
    dfl_weight: float = 0.25
    giou_weight: float = 2.0
    score_thr: float = 0.05  # evaluation / export post-processing
    iou_thr: float = 0.6  # class-aware NMS IoU threshold
    max_det: int = 100  # detections kept per image
    eval_every: int = 1  # epochs between mAP evaluations (the last epoch is always evaluated)
    augment: DetectionAugmentConfig = field(default_factory=DetectionAugmentConfig)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 10
    batch_size: int = 256  # global batch: split evenly across DDP processes
    eval_batch_size: int = 1024
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "on", "off"] = "auto"  # auto: bf16/fp16 on CUDA, off on CPU
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    ema_decay: float = 0.0  # exponential moving average of weights; 0 = off
    seed: int = 0
    profile: bool = False  # report per-phase time and peak memory
    log_every: int = 50  # steps between loss records in metrics.jsonl
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs); for smoke tests
    out: Optional[str] = None  # run directory; default runs/<model>-<time>

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: invalid value {value!r}; choose from: {', '.join(map(str, choices))}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            # YAML 1.1 reads '1e-4' (no dot) as a string; users mean the number.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return str(value)
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys in {where}: {', '.join(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a nested mapping."""
    cfg = _from_dict(TrainConfig, data, "")
    validate(cfg)
    return cfg


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a nested dict (not yet validated)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``key.sub=value`` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r} (e.g. --set optim.lr=0.05)")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    _check_key_path(key)
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
    node[parts[-1]] = value


def _check_key_path(key: str) -> None:
    """Raise a ConfigError for an override key that names no config field."""
    cls: Any = TrainConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            where = ".".join(parts[:i]) or "config"
            raise ConfigError(f"unknown config key '{key}'; valid keys in {where}: {', '.join(names)}")
        tp = typing.get_type_hints(cls)[part]
        if dataclasses.is_dataclass(tp):
            if i == len(parts) - 1:
                raise ConfigError(f"--set {key}: '{key}' is a section; set one of its keys, e.g. {key}.{dataclasses.fields(tp)[0].name}=...")
            cls = tp
        elif i != len(parts) - 1:
            raise ConfigError(f"--set {key}: '{'.'.join(parts[:i + 1])}' is a value, not a section")


def validate(cfg: TrainConfig) -> None:
    """Range checks that types alone cannot express."""
    checks = [
        (cfg.epochs >= 1, "epochs", "an integer >= 1", cfg.epochs),
        (cfg.batch_size >= 1, "batch_size", "an integer >= 1", cfg.batch_size),
        (cfg.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1", cfg.eval_batch_size),
        (cfg.model.width_mult > 0, "model.width_mult", "a number > 0", cfg.model.width_mult),
        (cfg.optim.lr > 0, "optim.lr", "a number > 0", cfg.optim.lr),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay", "a number >= 0", cfg.optim.weight_decay),
        (0 <= cfg.optim.label_smoothing < 1, "optim.label_smoothing", "in [0, 1)", cfg.optim.label_smoothing),
        (0 <= cfg.ema_decay < 1, "ema_decay", "in [0, 1)", cfg.ema_decay),
        (0 < cfg.data.val_fraction < 1, "data.val_fraction", "in (0, 1)", cfg.data.val_fraction),
        (cfg.augment.crop_padding >= 0, "augment.crop_padding", "an integer >= 0", cfg.augment.crop_padding),
        (cfg.augment.cutout >= 0, "augment.cutout", "an integer >= 0", cfg.augment.cutout),
        (cfg.log_every >= 1, "log_every", "an integer >= 1", cfg.log_every),
        (cfg.max_steps >= 0, "max_steps", "an integer >= 0", cfg.max_steps),
        (0 < cfg.schedule.pct_start < 1, "schedule.pct_start", "in (0, 1)", cfg.schedule.pct_start),
        (cfg.data.num_workers >= 0, "data.num_workers", "an integer >= 0", cfg.data.num_workers),
    ]
    from trainer.models import model_names  # here, not at import time: the models pull in torch

    if cfg.model.name not in model_names():
        raise ConfigError(f"unknown model '{cfg.model.name}'; choose from: {', '.join(model_names())}")
    for ok, key, expected, actual in checks:
        if not ok:
            raise ConfigError(f"{key}: expected {expected}, got {actual!r}")
    if cfg.data.image_size is not None and (len(cfg.data.image_size) != 2 or min(cfg.data.image_size) < 8):
        raise ConfigError(f"data.image_size: expected [height, width] with both >= 8, got {cfg.data.image_size!r}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas: expected two numbers, got {cfg.optim.betas!r}")
    _validate_detection(cfg)


def _validate_detection(cfg: TrainConfig) -> None:
    """Range checks of the detection section, and the input size a detector needs."""
    d, a = cfg.detection, cfg.detection.augment
    checks = [
        (d.qfl_weight >= 0 and d.dfl_weight >= 0 and d.giou_weight >= 0, "detection.*_weight", "numbers >= 0",
         [d.qfl_weight, d.dfl_weight, d.giou_weight]),
        (0 <= d.score_thr < 1, "detection.score_thr", "in [0, 1)", d.score_thr),
        (0 < d.iou_thr <= 1, "detection.iou_thr", "in (0, 1]", d.iou_thr),
        (d.max_det >= 1, "detection.max_det", "an integer >= 1", d.max_det),
        (d.eval_every >= 1, "detection.eval_every", "an integer >= 1", d.eval_every),
        (0 <= a.flip <= 1, "detection.augment.flip", "a probability in [0, 1]", a.flip),
        (0 <= a.mosaic <= 1, "detection.augment.mosaic", "a probability in [0, 1]", a.mosaic),
        (0 <= a.translate < 1, "detection.augment.translate", "in [0, 1)", a.translate),
        (len(a.scale) == 2 and 0 < a.scale[0] <= a.scale[1], "detection.augment.scale", "[low, high] with 0 < low <= high", a.scale),
        (len(a.hsv) == 3 and all(0 <= g <= 1 for g in a.hsv), "detection.augment.hsv", "three gains in [0, 1]", a.hsv),
    ]
    for ok, key, expected, actual in checks:
        if not ok:
            raise ConfigError(f"{key}: expected {expected}, got {actual!r}")
    from trainer.models.nanodet import is_detector

    if is_detector(cfg.model.name) and cfg.data.image_size is not None:
        if any(v % 32 for v in cfg.data.image_size):
            raise ConfigError(
                f"data.image_size: a {cfg.model.name} input must be a multiple of 32 on both sides, got "
                f"{cfg.data.image_size!r}; e.g. [320, 320] or [416, 416]"
            )
