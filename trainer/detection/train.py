"""The detector training loop: config → data → model → optimizer → loop → checkpoint.

The same engine as the classifier loop (:mod:`trainer.engine.loop`) with a detection batch
source, the GFL loss and COCO mAP as the validation metric: optimizer and schedule, AMP,
EMA, DDP, reporting, Ctrl-C (:class:`StopRequest`) and exact resume all come from the
engine. Everything a resumed run needs is in the checkpoint; batch order and augmentation
are functions of (seed, epoch, position).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import edgesmith
from edgesmith.errors import TrainingError
from trainer.checkpoint import save_checkpoint
from trainer.config import TrainConfig
from trainer.engine.resume import ResumePoint, restore_for_resume, wrap_for_training
from trainer.data.augment import Normalizer
from trainer.data.detection import open_detection_dataset
from trainer.data.detection.transforms import DetectionAugment
from trainer.detection.backbone_init import init_backbone_from_run
from trainer.detection.data import DetectionLoader
from trainer.detection.evaluate import LETTERBOX_PAD, evaluate_detector
from trainer.detection.losses import GFLLoss, LossWeights
from trainer.detection.postprocess_np import PostprocessParams
from trainer.engine.distributed import all_reduce_sum, any_rank, barrier, init_distributed
from trainer.engine.ema import ModelEMA
from trainer.engine.loop import DDP_STOP_CHECK_EVERY, METRICS_FILE, TrainResult, _export_copy
from trainer.engine.optim import build_optimizer, lr_factor, set_lr
from trainer.engine.reporting import MetricsLog, PhaseTimer, TrainProgress
from trainer.engine.setup import IMAGENET_MEAN, IMAGENET_STD, StopRequest, resolve_device, resolve_precision, seed_everything
from trainer.models import build_model
from trainer.models.nanodet import detector_spec

EVAL_BATCH = 16


def input_hw(cfg: TrainConfig) -> tuple[int, int]:
    """The detector input (H, W): ``data.image_size`` or the named config's default."""
    if cfg.data.image_size:
        return int(cfg.data.image_size[0]), int(cfg.data.image_size[1])
    side = detector_spec(cfg.model.name).input_size
    return side, side


def postprocess_params(cfg: TrainConfig, num_classes: int) -> PostprocessParams:
    spec = detector_spec(cfg.model.name)
    d = cfg.detection
    return PostprocessParams(num_classes, tuple(spec.strides), spec.reg_max, input_hw(cfg), d.score_thr, d.iou_thr,
                             d.max_det)


def detection_preprocessing(hw: tuple[int, int]) -> dict[str, Any]:
    return {"image_size": list(hw), "layout": "NCHW", "colour_order": "RGB", "scale": 1 / 255,
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "resize": "letterbox", "pad_value": LETTERBOX_PAD}


def train_detector(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                   on_step: Callable[[int, nn.Module, StopRequest], None] | None = None,
                   show_progress: bool = True) -> TrainResult:
    """Train the detector ``cfg.model`` on the detection data at ``cfg.data.path``; see :func:`trainer.engine.train`."""
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    dist = init_distributed(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    seed_everything(cfg.seed)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    # --- data -------------------------------------------------------------------------
    ds = open_detection_dataset(cfg.data.path, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    classes = list(ds.classes)
    hw = input_hw(cfg)
    preprocessing = detection_preprocessing(hw)
    a = cfg.detection.augment
    augment = DetectionAugment(hw, flip=a.flip, scale=tuple(a.scale), translate=a.translate, hsv=tuple(a.hsv),
                               mosaic=a.mosaic, pad_value=LETTERBOX_PAD)
    loader = DetectionLoader(ds.train, augment, cfg.batch_size, cfg.seed, dist.rank, dist.world_size,
                             cfg.data.num_workers)
    normalizer = Normalizer(preprocessing["mean"], preprocessing["std"], device, cfg.channels_last)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    params = postprocess_params(cfg, len(classes))

    # --- model, loss, optimizer, precision --------------------------------------------
    model_args = {"num_classes": len(classes), "width_mult": cfg.model.width_mult, "in_channels": 3}
    model = build_model(cfg.model.name, **model_args)
    if cfg.detection.init_backbone and not resume:
        init_backbone_from_run(model, cfg.detection.init_backbone)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = detector_spec(cfg.model.name)
    assigner = spec.assigner if cfg.detection.assigner == "auto" else cfg.detection.assigner
    d = cfg.detection
    criterion = GFLLoss(len(classes), spec.strides, spec.reg_max, assigner,
                        LossWeights(d.qfl_weight, d.dfl_weight, d.giou_weight))
    optimizer = build_optimizer(model, cfg.optim)
    precision = resolve_precision(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None

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
            run_dir, model_name=cfg.model.name, model_args=model_args,
            state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            train_state={
                "task": "detection", "config": cfg.to_dict(), "epoch": epoch, "next_batch": next_batch,
                "global_step": global_step, "steps_per_epoch": steps_per_epoch, "classes": classes,
                "preprocessing": preprocessing, "postprocess": params.to_dict(),
                "dataset": {"format": ds.format, "source": ds.source, "content_hash": ds.content_hash},
                "scaler": scaler.state_dict() if precision.needs_scaler else None,
                "ema_updates": ema.updates if ema else 0,
                "elapsed_s": elapsed_before + (time.perf_counter() - t_start),
                "history": history, "edgesmith_version": edgesmith.__version__,
            },
            extra_tensors=ema.state_tensors() if ema else None,
            optimizer_state=optimizer.state_dict(),
        )

    def check_finite(loss_value: float, epoch: int) -> None:
        if not math.isfinite(loss_value):
            last = "no checkpoint was written yet" if not (run_dir / "checkpoint.safetensors").exists() else \
                f"the last good checkpoint is kept in {run_dir}"
            raise TrainingError(
                f"detection loss became {loss_value} at epoch {epoch + 1}, step {global_step}; {last}. "
                f"Try a lower learning rate (optim.lr is {cfg.optim.lr}), gradient clipping "
                "(--set optim.grad_clip=35) or --set amp=off"
            )

    # --- loop --------------------------------------------------------------------------
    t_start = time.perf_counter()
    interrupted, stop_reason = False, ""
    last_val: dict[str, Any] | None = None
    epoch = start_epoch
    with StopRequest() as stop, TrainProgress(enabled=dist.is_main, live=show_progress, total_epochs=cfg.epochs,
                                              steps_per_epoch=steps_per_epoch) as progress:
        while epoch < cfg.epochs and not (cfg.max_steps and global_step >= cfg.max_steps):
            train_model.train()
            progress.start_epoch(epoch, start_batch)
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            seen, batch, t_epoch = 0, start_batch, time.perf_counter()
            batches = iter(loader.iterate(epoch, start_batch))
            while True:
                with timer.phase("data"):
                    item = next(batches, None)
                    if item is None:
                        break
                    batch, images, gt_boxes, gt_labels = item
                    xb = normalizer(images.to(device, non_blocking=True).permute(0, 3, 1, 2))
                    gt_boxes, gt_labels = gt_boxes.to(device), gt_labels.to(device)
                lr = set_lr(optimizer, cfg.optim.lr, lr_factor(global_step, total_steps, steps_per_epoch, cfg.schedule))
                with timer.phase("forward"):
                    with precision.autocast():
                        outputs = train_model(xb)
                    loss, parts = criterion(tuple(o.float() for o in outputs), gt_boxes, gt_labels, hw)
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
                seen += len(images)
                loss_sum += loss.detach().double() * len(images)
                if global_step % cfg.log_every == 0:
                    step_loss = all_reduce_sum(loss.detach().float().clone(), dist).item() / dist.world_size
                    check_finite(step_loss, epoch)
                    ips = seen * dist.world_size / max(1e-9, time.perf_counter() - t_epoch)
                    metrics_log.write({"type": "step", "epoch": epoch, "batch": batch, "step": global_step,
                                       "loss": step_loss, "lr": lr, **parts})
                    progress.set_stats(step_loss, 0.0, ips)
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
            totals = torch.stack([loss_sum, torch.tensor(float(seen), device=device, dtype=torch.float64)])
            all_reduce_sum(totals, dist)
            train_loss = (totals[0] / totals[1].clamp(min=1)).item()
            check_finite(train_loss, epoch)
            if interrupted:
                save(epoch, batch + 1)
                break
            epoch_time = time.perf_counter() - t_epoch
            last_epoch = epoch + 1 >= cfg.epochs or bool(cfg.max_steps and global_step >= cfg.max_steps)
            record = {"type": "epoch", "epoch": epoch + 1, "step": global_step, "train_loss": train_loss, "lr": lr,
                      "img_per_s": totals[1].item() / max(1e-9, epoch_time), "epoch_time_s": epoch_time}
            line = f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.4f}"
            if (epoch + 1) % cfg.detection.eval_every == 0 or last_epoch:
                if dist.is_main:  # mAP is computed once, on the main process
                    last_val = evaluate_detector(ema.module if ema else model, ds.val, classes, params,
                                                 preprocessing, device, min(cfg.eval_batch_size, EVAL_BATCH))
                    record.update({"val_map": last_val["map"], "val_map50": last_val["map50"]})
                    line += f"  val mAP {last_val['map']:.4f} mAP@.5 {last_val['map50']:.4f}"
                barrier(dist)
            history.append(record)
            metrics_log.write(record)
            progress.epoch_line(f"{line}  {record['img_per_s']:.1f} img/s  {epoch_time:.1f}s")
            save(epoch, batch + 1)
            epoch, start_batch = epoch + 1, 0

    wall = elapsed_before + time.perf_counter() - t_start
    final_model = _export_copy(ema.module if ema else model)
    metrics: dict[str, Any] = {
        "epochs_completed": epoch, "global_step": global_step, "train_time_s": round(wall, 3),
        "precision": precision.name, "device": str(device), "world_size": dist.world_size, "assigner": assigner,
    }
    if last_val is not None:
        metrics["val"] = last_val
    if history:
        metrics["img_per_s"] = history[-1]["img_per_s"]
    return TrainResult(
        run_dir=run_dir, config=cfg, model=final_model, classes=classes, preprocessing=preprocessing, dataset=ds,
        metrics=metrics, interrupted=interrupted, stop_reason=stop_reason,
        profile=timer.report() if cfg.profile else None, dist=dist,
    )
