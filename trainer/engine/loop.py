"""The training loop: config → data → model → optimizer → loop → checkpoint.

Read top to bottom. Everything a resumed run needs to continue *exactly*
(weights, optimizer moments, BN statistics, EMA, GradScaler, the position in
the epoch) is in the checkpoint; data order and augmentation are functions of
(seed, epoch, batch index), so nothing else has to be saved.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import edgesmith
from edgesmith.errors import TrainingError
from trainer.checkpoint import save_checkpoint
from trainer.config import TrainConfig
from trainer.engine.resume import ResumePoint, restore_for_resume, wrap_for_training
from trainer.data import ArraySplit, Dataset, open_dataset
from trainer.data.augment import Normalizer, augment_batch, batch_generator
from trainer.data.loader import make_loader
from trainer.engine.distributed import DistInfo, all_reduce_sum, any_rank, barrier, init_distributed
from trainer.engine.ema import ModelEMA
from trainer.engine.evaluate import EvalResult, evaluate_model
from trainer.engine.optim import build_optimizer, lr_factor, set_lr
from trainer.engine.reporting import MetricsLog, PhaseTimer, TrainProgress
from trainer.engine.setup import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    StopRequest,
    channel_stats,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from trainer.models import build_model

METRICS_FILE = "metrics.jsonl"
# In DDP every rank must agree to stop at the same step; agreeing costs a collective,
# so ranks compare stop flags every this many steps (a single process checks every step).
DDP_STOP_CHECK_EVERY = 10


@dataclass
class TrainResult:
    """What a finished (or interrupted) run hands to export and the manifest."""

    run_dir: Path
    config: TrainConfig
    model: nn.Module  # the weights to ship (EMA when enabled), float32, eval mode, CPU
    classes: list[str]
    preprocessing: dict[str, Any]
    dataset: Dataset
    metrics: dict[str, Any]
    interrupted: bool = False
    stop_reason: str = ""
    profile: dict[str, Any] | None = None
    dist: DistInfo = field(default_factory=DistInfo)


def _open_data(cfg: TrainConfig, dist: DistInfo) -> Dataset:
    """Rank 0 decodes (and fills the cache) first; the others then read the cache."""
    kwargs = dict(
        val_fraction=cfg.data.val_fraction,
        seed=cfg.seed,
        download=cfg.data.download,
        cache_dir=cfg.data.cache_dir,
        image_size=tuple(cfg.data.image_size) if cfg.data.image_size else None,
    )
    if dist.enabled and not dist.is_main:
        barrier(dist)
    ds = open_dataset(cfg.data.path, **kwargs)
    if dist.enabled and dist.is_main:
        barrier(dist)
    return ds


def _preprocessing(ds: Dataset) -> dict[str, Any]:
    if isinstance(ds.train, ArraySplit):
        mean, std = channel_stats(ds.train.images)
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return {
        "image_size": list(ds.image_size),
        "layout": "NCHW",
        "colour_order": "RGB",
        "scale": 1 / 255,  # x = (pixel / 255 - mean) / std
        "mean": mean,
        "std": std,
    }


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, DistributedDataParallel) else model


def _export_copy(model: nn.Module) -> nn.Module:
    """A float32, contiguous, CPU, eval-mode copy of the weights for export and evaluation."""
    import copy

    m = copy.deepcopy(_unwrap(model)).float().cpu().eval()
    return m.to(memory_format=torch.contiguous_format)


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    on_step: Callable[[int, nn.Module, StopRequest], None] | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; write checkpoints and metrics into ``run_dir``.

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

    # --- data -------------------------------------------------------------------------
    ds = _open_data(cfg, dist)
    classes = list(ds.classes)
    preprocessing = _preprocessing(ds)
    image_size = tuple(ds.image_size)
    train_loader = make_loader(ds.train, batch_size=cfg.batch_size, train=True, device=device, seed=cfg.seed,
                               rank=dist.rank, world_size=dist.world_size, image_size=image_size,
                               num_workers=cfg.data.num_workers)
    val_loader = make_loader(ds.val, batch_size=cfg.eval_batch_size, train=False, device=device, seed=cfg.seed,
                             rank=dist.rank, world_size=dist.world_size, image_size=image_size,
                             num_workers=cfg.data.num_workers)
    normalizer = Normalizer(preprocessing["mean"], preprocessing["std"], device, cfg.channels_last)
    steps_per_epoch = len(train_loader)
    # where this rank's images sit inside each global batch (training batches are always full)
    shard = (dist.rank * (cfg.batch_size // dist.world_size), cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    # --- model, optimizer, precision ---------------------------------------------------
    model_args = {"num_classes": len(classes), "width_mult": cfg.model.width_mult, "in_channels": 3}
    model = build_model(cfg.model.name, **model_args).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    precision = resolve_precision(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)

    # --- resume ------------------------------------------------------------------------
    point = ResumePoint()
    if resume:
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
                "config": cfg.to_dict(),
                "epoch": epoch,
                "next_batch": next_batch,
                "global_step": global_step,
                "steps_per_epoch": steps_per_epoch,
                "classes": classes,
                "preprocessing": preprocessing,
                "dataset": {"format": ds.format, "source": ds.source, "content_hash": ds.content_hash},
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
                f"training loss became {loss_value} at epoch {epoch + 1}, step {global_step}; {last}. "
                f"Try a lower learning rate (optim.lr is {cfg.optim.lr}), gradient clipping "
                "(--set optim.grad_clip=1.0) or --set amp=off"
            )

    # --- loop --------------------------------------------------------------------------
    t_start = time.perf_counter()
    interrupted, stop_reason = False, ""
    last_val: EvalResult | None = None
    epoch = start_epoch
    with StopRequest() as stop, TrainProgress(enabled=dist.is_main, live=show_progress, total_epochs=cfg.epochs,
                                              steps_per_epoch=steps_per_epoch) as progress:
        while epoch < cfg.epochs and not (cfg.max_steps and global_step >= cfg.max_steps):
            train_model.train()
            progress.start_epoch(epoch, start_batch)
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            correct = torch.zeros((), device=device, dtype=torch.float64)
            seen, batch, t_epoch = 0, start_batch, time.perf_counter()
            batches = train_loader.iterate(epoch, start_batch)
            while True:
                with timer.phase("data"):
                    item = next(batches, None)
                    if item is None:
                        break
                    batch, xb, yb = item
                    gen = batch_generator(device, cfg.seed, epoch, batch)
                    xb = augment_batch(xb, gen, crop_padding=cfg.augment.crop_padding, flip=cfg.augment.flip,
                                       cutout_size=cfg.augment.cutout, shard=shard)
                    xb = normalizer(xb)
                lr = set_lr(optimizer, cfg.optim.lr, lr_factor(global_step, total_steps, steps_per_epoch, cfg.schedule))
                with timer.phase("forward"):
                    with precision.autocast():
                        logits = train_model(xb)
                    loss = criterion(logits.float(), yb)
                with timer.phase("backward"):
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
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
                seen += len(yb)
                loss_sum += loss.detach().double() * len(yb)
                correct += (logits.detach().argmax(1) == yb).sum().double()

                if global_step % cfg.log_every == 0:
                    step_loss = all_reduce_sum(loss.detach().float().clone(), dist).item() / dist.world_size
                    check_finite(step_loss, epoch)
                    ips = seen * dist.world_size / max(1e-9, time.perf_counter() - t_epoch)
                    metrics_log.write({"type": "step", "epoch": epoch, "batch": batch, "step": global_step,
                                       "loss": step_loss, "lr": lr})
                    progress.set_stats(step_loss, (correct / max(1, seen)).item(), ips)
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
            last_val = evaluate_model(ema.module if ema else model, val_loader, normalizer, len(classes), device,
                                      dist, precision.autocast())
            record = {
                "type": "epoch", "epoch": epoch + 1, "step": global_step,
                "train_loss": train_loss, "train_acc": (totals[1] / totals[2].clamp(min=1)).item(),
                "val_loss": last_val.loss, "val_acc": last_val.top1, "lr": lr,
                "img_per_s": totals[2].item() / max(1e-9, epoch_time), "epoch_time_s": epoch_time,
            }
            history.append(record)
            metrics_log.write(record)
            progress.epoch_line(
                f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.4f} acc {record['train_acc']:.2%}  "
                f"val loss {last_val.loss:.4f} acc {last_val.top1:.2%}  {record['img_per_s']:.0f} img/s  "
                f"{epoch_time:.1f}s"
            )
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
    }
    if last_val is not None:
        metrics["val"] = last_val.to_dict(classes)
    if history:
        metrics["img_per_s"] = history[-1]["img_per_s"]
    return TrainResult(
        run_dir=run_dir, config=cfg, model=final_model, classes=classes, preprocessing=preprocessing, dataset=ds,
        metrics=metrics, interrupted=interrupted, stop_reason=stop_reason,
        profile=timer.report() if cfg.profile else None, dist=dist,
    )
