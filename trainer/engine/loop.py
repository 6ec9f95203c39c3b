"""The training loop every task shares: config → data → model → optimizer → loop → checkpoint.

Read top to bottom. :func:`run_training` owns what is the same for every kind of model: device and
DDP set-up, resume, the AMP forward / backward / clip / GradScaler / EMA step, the learning-rate
schedule, progress, the metrics log, the finite-loss check, checkpoints, Ctrl-C
(:class:`StopRequest`) and per-epoch validation and history. A :class:`TrainTask` supplies what
differs: its data and batches, the loss, validation, and what the checkpoint and reports say about
the task (``trainer.engine.classify`` for classifiers, ``trainer.detection.train`` for detectors).

Everything a resumed run needs to continue *exactly* (weights, optimizer moments, BN statistics,
EMA, GradScaler, the position in the epoch) is in the checkpoint; data order and augmentation are
functions of (seed, epoch, batch index), so nothing else has to be saved.
"""

from __future__ import annotations

import copy
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import edgesmith
from edgesmith.errors import TrainingError
from trainer.checkpoint import save_checkpoint
from trainer.config import TrainConfig
from trainer.engine.distributed import DistInfo, all_reduce_sum, any_rank, init_distributed
from trainer.engine.ema import ModelEMA
from trainer.engine.optim import build_optimizer, lr_factor, set_lr
from trainer.engine.reporting import MetricsLog, PhaseTimer, TrainProgress
from trainer.engine.resume import ResumePoint, restore_for_resume, wrap_for_training
from trainer.engine.setup import Precision, StopRequest, resolve_device, resolve_precision, seed_everything

METRICS_FILE = "metrics.jsonl"
# In DDP every rank must agree to stop at the same step; agreeing costs a collective,
# so ranks compare stop flags every this many steps (a single process checks every step).
DDP_STOP_CHECK_EVERY = 10

StepCallback = Callable[[int, nn.Module, StopRequest], None]


@dataclass
class TrainResult:
    """What a finished (or interrupted) run hands to export and the manifest."""

    run_dir: Path
    config: TrainConfig
    model: nn.Module  # the weights to ship (EMA when enabled), float32, eval mode, CPU
    classes: list[str]
    preprocessing: dict[str, Any]
    dataset: Any  # the task's dataset (trainer.data.Dataset or a detection dataset)
    metrics: dict[str, Any]
    interrupted: bool = False
    stop_reason: str = ""
    profile: dict[str, Any] | None = None
    dist: DistInfo = field(default_factory=DistInfo)


@dataclass
class Batch:
    """One training batch of this rank: its index in the epoch, the model input, the loss target, its image count."""

    index: int
    inputs: torch.Tensor
    target: Any
    size: int


@dataclass
class StepLoss:
    """One batch's loss, extra fields for its ``step`` line in metrics.jsonl, (classifiers) its correct predictions."""

    loss: torch.Tensor
    parts: dict[str, Any] = field(default_factory=dict)
    correct: torch.Tensor | None = None


@dataclass
class EpochStats:
    """What the engine measured over one epoch (``epoch`` is 1-based, as users count)."""

    epoch: int
    total_epochs: int
    step: int
    train_loss: float
    train_acc: float | None  # None for tasks without an accuracy
    lr: float
    img_per_s: float
    epoch_time_s: float


class TrainTask(ABC):
    """What one kind of model needs beyond the shared loop of :func:`run_training`.

    A task is built once per run, after device and process group are set up; its constructor
    opens the data and builds the loaders and the loss, and sets the attributes below.
    """

    dataset: Any  # has .format, .source and .content_hash (checked on resume)
    classes: list[str]
    preprocessing: dict[str, Any]
    steps_per_epoch: int
    #: how the non-finite-loss error names the loss, and a gradient-clipping value to suggest there
    loss_label: str = "training loss"
    grad_clip_hint: str = "1.0"
    #: whether :meth:`loss` counts correct predictions (a running accuracy on the progress bar)
    reports_accuracy: bool = False

    @abstractmethod
    def build_model(self, model_args: dict[str, Any], resume: bool) -> nn.Module:
        """The model (on the CPU) to train; ``resume``: its weights will be loaded from the checkpoint."""

    @abstractmethod
    def batches(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        """This rank's training batches of ``epoch`` from ``start_batch`` on, on the device and ready for the model."""

    @abstractmethod
    def loss(self, outputs: Any, target: Any) -> StepLoss:
        """The loss of the model's (autocast) ``outputs`` against ``target``."""

    @abstractmethod
    def validate(self, model: nn.Module, epoch: int, last_epoch: bool, precision: Precision) -> Any | None:
        """Evaluate ``model`` after ``epoch`` (0-based); None where this epoch is not evaluated on this rank."""

    @abstractmethod
    def epoch_report(self, stats: EpochStats, val: Any | None) -> tuple[dict[str, Any], str]:
        """The epoch's record (metrics.jsonl and history) and the line printed for it.

        The record carries at least ``type`` ("epoch"), ``epoch``, ``step`` and ``img_per_s`` from
        ``stats``: the engine reads them back (resume truncates the log by step; the run's metrics
        report the last epoch's throughput).
        """

    @abstractmethod
    def train_state(self) -> dict[str, Any]:
        """What the checkpoint's train_state says about the task: classes, preprocessing, dataset, ..."""

    @abstractmethod
    def final_metrics(self, last_val: Any | None) -> dict[str, Any]:
        """The task's entries in the run's metrics (the last validation, ...)."""


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, DistributedDataParallel) else model


def _export_copy(model: nn.Module) -> nn.Module:
    """A float32, contiguous, CPU, eval-mode copy of the weights for export and evaluation."""
    m = copy.deepcopy(_unwrap(model)).float().cpu().eval()
    return m.to(memory_format=torch.contiguous_format)


def run_training(
    cfg: TrainConfig,
    run_dir: str | Path,
    open_task: Callable[[TrainConfig, torch.device, DistInfo], TrainTask],
    *,
    resume: bool = False,
    on_step: StepCallback | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train the model of the task ``open_task(cfg, device, dist)``; write checkpoints and metrics into ``run_dir``.

    ``on_step(global_step, model, stop)`` is called after every optimizer step with the
    unwrapped model (tests and API users can inspect it, or call ``stop.request()``).
    ``show_progress`` switches the live progress bar (terminals only); the main process
    prints one line per epoch either way. Returns even when interrupted
    (``result.interrupted``), after writing a checkpoint to resume from.
    """
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    dist = init_distributed(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    seed_everything(cfg.seed)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    # --- data (the task's) -------------------------------------------------------------
    task = open_task(cfg, device, dist)
    steps_per_epoch = task.steps_per_epoch
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    # --- model, optimizer, precision ---------------------------------------------------
    model_args = {"num_classes": len(task.classes), "width_mult": cfg.model.width_mult, "in_channels": 3}
    model = task.build_model(model_args, resume).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    precision = resolve_precision(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None

    # --- resume ------------------------------------------------------------------------
    point = ResumePoint()
    if resume:
        ds = task.dataset
        point = restore_for_resume(run_dir, model, optimizer, scaler, ema, ds.content_hash, ds.source, device)
    start_epoch, start_batch, global_step, elapsed_before = point.epoch, point.batch, point.global_step, point.elapsed_s
    history: list[dict[str, Any]] = point.history
    train_model = wrap_for_training(model, distributed=dist.enabled, compile_model=cfg.compile, device=device)

    metrics_log = MetricsLog(run_dir / METRICS_FILE, enabled=dist.is_main)
    if resume:
        metrics_log.truncate_after(global_step)
    timer = PhaseTimer(cfg.profile, device)

    def save(epoch: int, next_batch: int) -> None:
        if next_batch >= steps_per_epoch:
            epoch, next_batch = epoch + 1, 0
        if not dist.is_main:
            return
        save_checkpoint(
            run_dir,
            model_name=cfg.model.name,
            model_args=model_args,
            state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            train_state={
                **task.train_state(),
                "config": cfg.to_dict(),
                "epoch": epoch,
                "next_batch": next_batch,
                "global_step": global_step,
                "steps_per_epoch": steps_per_epoch,
                "scaler": scaler.state_dict() if precision.needs_scaler else None,
                "ema_updates": ema.updates if ema else 0,
                "elapsed_s": elapsed_before + (time.perf_counter() - t_start),
                "history": history,
                "edgesmith_version": edgesmith.__version__,
            },
            extra_tensors=ema.state_tensors() if ema else None,
            optimizer_state=optimizer.state_dict(),
        )

    def check_finite(loss_value: float, epoch: int) -> None:
        if not math.isfinite(loss_value):
            last = "no checkpoint was written yet" if not (run_dir / "checkpoint.safetensors").exists() else \
                f"the last good checkpoint is kept in {run_dir}"
            raise TrainingError(
                f"{task.loss_label} became {loss_value} at epoch {epoch + 1}, step {global_step}; {last}. "
                f"Try a lower learning rate (optim.lr is {cfg.optim.lr}), gradient clipping "
                f"(--set optim.grad_clip={task.grad_clip_hint}) or --set amp=off"
            )

    # --- loop --------------------------------------------------------------------------
    t_start = time.perf_counter()
    interrupted, stop_reason = False, ""
    last_val: Any | None = None
    epoch = start_epoch
    with StopRequest() as stop, TrainProgress(enabled=dist.is_main, live=show_progress, total_epochs=cfg.epochs,
                                              steps_per_epoch=steps_per_epoch) as progress:
        while epoch < cfg.epochs and not (cfg.max_steps and global_step >= cfg.max_steps):
            train_model.train()
            progress.start_epoch(epoch, start_batch)
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            correct = torch.zeros((), device=device, dtype=torch.float64)
            seen, batch, t_epoch = 0, start_batch, time.perf_counter()
            batches = task.batches(epoch, start_batch)
            while True:
                with timer.phase("data"):
                    item = next(batches, None)
                    if item is None:
                        break
                    batch = item.index
                lr = set_lr(optimizer, cfg.optim.lr, lr_factor(global_step, total_steps, steps_per_epoch, cfg.schedule))
                with timer.phase("forward"):
                    with precision.autocast():
                        outputs = train_model(item.inputs)
                    step = task.loss(outputs, item.target)
                with timer.phase("backward"):
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(step.loss).backward()
                with timer.phase("optimizer"):
                    if cfg.optim.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    if ema is not None:
                        ema.update(model)
                global_step += 1
                timer.steps += 1
                seen += item.size
                loss_sum += step.loss.detach().double() * item.size
                if step.correct is not None:
                    correct += step.correct

                if global_step % cfg.log_every == 0:
                    step_loss = all_reduce_sum(step.loss.detach().float().clone(), dist).item() / dist.world_size
                    check_finite(step_loss, epoch)
                    ips = seen * dist.world_size / max(1e-9, time.perf_counter() - t_epoch)
                    metrics_log.write({"type": "step", "epoch": epoch, "batch": batch, "step": global_step,
                                       "loss": step_loss, "lr": lr, **step.parts})
                    running_acc = (correct / max(1, seen)).item() if task.reports_accuracy else 0.0
                    progress.set_stats(step_loss, running_acc, ips)
                progress.advance()
                if on_step is not None:
                    on_step(global_step, model, stop)
                check_every = DDP_STOP_CHECK_EVERY if dist.enabled else 1
                if global_step % check_every == 0 and any_rank(stop.requested, dist, device):
                    interrupted, stop_reason = True, stop.signal_name or "stop requested on another rank"
                    break
                if cfg.max_steps and global_step >= cfg.max_steps:
                    break

            # --- end of epoch (or of the interrupted part of it) ---------------------------
            totals = torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device, dtype=torch.float64)])
            all_reduce_sum(totals, dist)
            train_loss = (totals[0] / totals[2].clamp(min=1)).item()
            check_finite(train_loss, epoch)
            if interrupted:
                save(epoch, batch + 1)
                break
            epoch_time = time.perf_counter() - t_epoch
            last_epoch = epoch + 1 >= cfg.epochs or bool(cfg.max_steps and global_step >= cfg.max_steps)
            val = task.validate(ema.module if ema else model, epoch, last_epoch, precision)
            if val is not None:
                last_val = val
            stats = EpochStats(
                epoch=epoch + 1, total_epochs=cfg.epochs, step=global_step, train_loss=train_loss,
                train_acc=(totals[1] / totals[2].clamp(min=1)).item() if task.reports_accuracy else None,
                lr=lr, img_per_s=totals[2].item() / max(1e-9, epoch_time), epoch_time_s=epoch_time,
            )
            record, line = task.epoch_report(stats, val)
            history.append(record)
            metrics_log.write(record)
            progress.epoch_line(line)
            save(epoch, batch + 1)
            epoch, start_batch = epoch + 1, 0

    wall = elapsed_before + time.perf_counter() - t_start
    final_model = _export_copy(ema.module if ema else model)
    metrics: dict[str, Any] = {
        "epochs_completed": epoch,
        "global_step": global_step,
        "train_time_s": round(wall, 3),
        "precision": precision.name,
        "device": str(device),
        "world_size": dist.world_size,
        **task.final_metrics(last_val),
    }
    if history:
        metrics["img_per_s"] = history[-1]["img_per_s"]
    return TrainResult(
        run_dir=run_dir, config=cfg, model=final_model, classes=task.classes, preprocessing=task.preprocessing,
        dataset=task.dataset, metrics=metrics, interrupted=interrupted, stop_reason=stop_reason,
        profile=timer.report() if cfg.profile else None, dist=dist,
    )
