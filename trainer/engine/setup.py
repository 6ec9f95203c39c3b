"""Run set-up that the loop needs but that is not the loop: device, precision, seeding, signals."""

from __future__ import annotations

import random
import signal
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import FrameType

import numpy as np
import torch

from edgesmith.errors import ConfigError

# Per-channel mean/std used when a streamed (large-image) dataset cannot cheaply be
# measured: the ImageNet statistics, the convention users of pretrained models expect.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise ConfigError(
            f"--device cuda was requested but no CUDA device is visible (torch {torch.__version__}, {build}); "
            "use --device cpu or --device auto"
        )
    return torch.device(name)


@dataclass
class Precision:
    """How the forward pass runs: autocast dtype (or none) and whether a GradScaler is needed."""

    dtype: torch.dtype | None
    device_type: str

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """AMP policy: bf16 on CUDA where supported, else fp16 with a GradScaler; off on CPU unless asked."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return Precision(None, device.type)
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Precision(dtype, "cuda")
    return Precision(torch.bfloat16, device.type)  # amp=on on CPU: bf16 autocast


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step.

    The step in flight finishes, a checkpoint is written, and the run exits 130.
    A second Ctrl-C while stopping raises KeyboardInterrupt for users who really
    want out at once (the last checkpoint on disk is still intact: writes are atomic).
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def request(self, reason: str = "request") -> None:
        """Ask the loop to stop after the current step (what a signal does; also for API users)."""
        self.requested = True
        self.signal_name = reason

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def channel_stats(images: np.ndarray, max_images: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of uint8 NHWC images in [0, 1] units (from at most ``max_images``)."""
    sample = images[:max_images].astype(np.float64) / 255.0
    mean = sample.mean(axis=(0, 1, 2))
    std = sample.std(axis=(0, 1, 2))
    std = np.where(std < 1e-3, 1.0, std)  # a constant channel: avoid dividing by ~0
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]
