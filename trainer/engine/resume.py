"""Pieces of the training loop kept apart: restoring exact state to resume, and wrapping the model for DDP / compile.

:func:`trainer.engine.loop.run_training` calls these for every task (classifiers and detectors),
so resuming behaves the same for all of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from edgesmith.errors import CheckpointError
from trainer.checkpoint import load_checkpoint


@dataclass
class ResumePoint:
    """Where a run continues: epoch, batch inside it, optimizer steps so far, time spent, per-epoch history."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def restore_for_resume(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler, ema,
                       content_hash: str, source: str, device: torch.device) -> ResumePoint:
    """Load weights, optimizer moments, GradScaler and EMA from the run's checkpoint; refuse other data."""
    ckpt = load_checkpoint(run_dir)
    if ckpt.optimizer_state is None:
        raise CheckpointError(f"{run_dir} has no optimizer state (optimizer.safetensors); cannot resume exactly")
    model.load_state_dict({k: v.to(device) for k, v in ckpt.state_dict.items()})
    optimizer.load_state_dict(ckpt.optimizer_state)
    st = ckpt.train_state
    saved_hash = st.get("dataset", {}).get("content_hash")
    if saved_hash and saved_hash != content_hash:
        raise CheckpointError(
            f"the data at {source} is not the data this run was trained on (content hash "
            f"{content_hash[:12]} vs {saved_hash[:12]} in the checkpoint); resume on the same data, "
            "or start a new run"
        )
    if st.get("scaler"):
        scaler.load_state_dict(st["scaler"])
    if ema is not None:
        ema.load_tensors(ckpt.extra_tensors, st.get("ema_updates", 0))
    return ResumePoint(st["epoch"], st["next_batch"], st["global_step"], st.get("elapsed_s", 0.0),
                       st.get("history", []))


def wrap_for_training(model: nn.Module, *, distributed: bool, compile_model: bool, device: torch.device) -> nn.Module:
    """DDP (when running under torchrun) and torch.compile around the model that takes optimizer steps."""
    wrapped: nn.Module = model
    if distributed:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        wrapped = torch.compile(wrapped)
    return wrapped
