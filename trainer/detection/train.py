"""Detector training: detection data, mosaic/letterbox augmentation, the GFL loss, COCO mAP.

:func:`train_detector` is the public entry point; the loop itself is the shared one
(:func:`trainer.engine.loop.run_training`: optimizer and schedule, AMP, EMA, DDP, reporting,
Ctrl-C and exact resume), fed through :class:`DetectionTask`. Batch order and augmentation
are functions of (seed, epoch, position), so a resumed run sees the batches it would have seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.data.augment import Normalizer
from trainer.data.detection import open_detection_dataset
from trainer.data.detection.transforms import DetectionAugment
from trainer.detection.backbone_init import init_backbone_from_run
from trainer.detection.data import DetectionLoader
from trainer.detection.evaluate import LETTERBOX_PAD, evaluate_detector
from trainer.detection.losses import GFLLoss, LossWeights
from trainer.detection.postprocess_np import PostprocessParams
from trainer.engine.distributed import DistInfo, barrier
from trainer.engine.loop import Batch, EpochStats, StepCallback, StepLoss, TrainResult, TrainTask, run_training
from trainer.engine.setup import IMAGENET_MEAN, IMAGENET_STD, Precision
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


class DetectionTask(TrainTask):
    """The GFL loss (QFL + DFL + GIoU) on augmented batches; COCO mAP on the main process every ``eval_every``."""

    loss_label = "detection loss"
    grad_clip_hint = "35"  # NanoDet's own clipping norm
    reports_accuracy = False

    def __init__(self, cfg: TrainConfig, device: torch.device, dist: DistInfo) -> None:
        self.cfg, self.device, self.dist = cfg, device, dist
        self.dataset = ds = open_detection_dataset(cfg.data.path, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
        self.classes = list(ds.classes)
        self.hw = input_hw(cfg)
        self.preprocessing = detection_preprocessing(self.hw)
        a = cfg.detection.augment
        augment = DetectionAugment(self.hw, flip=a.flip, scale=tuple(a.scale), translate=a.translate,
                                   hsv=tuple(a.hsv), mosaic=a.mosaic, pad_value=LETTERBOX_PAD)
        self.loader = DetectionLoader(ds.train, augment, cfg.batch_size, cfg.seed, dist.rank, dist.world_size,
                                      cfg.data.num_workers)
        self.normalizer = Normalizer(self.preprocessing["mean"], self.preprocessing["std"], device, cfg.channels_last)
        self.steps_per_epoch = len(self.loader)
        self.params = postprocess_params(cfg, len(self.classes))
        spec = detector_spec(cfg.model.name)
        d = cfg.detection
        self.assigner = spec.assigner if d.assigner == "auto" else d.assigner
        self.criterion = GFLLoss(len(self.classes), spec.strides, spec.reg_max, self.assigner,
                                 LossWeights(d.qfl_weight, d.dfl_weight, d.giou_weight))

    def build_model(self, model_args: dict[str, Any], resume: bool) -> nn.Module:
        model = build_model(self.cfg.model.name, **model_args)
        if self.cfg.detection.init_backbone and not resume:  # a resumed run loads all its weights
            init_backbone_from_run(model, self.cfg.detection.init_backbone)
        return model

    def batches(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        for batch, images, gt_boxes, gt_labels in self.loader.iterate(epoch, start_batch):
            xb = self.normalizer(images.to(self.device, non_blocking=True).permute(0, 3, 1, 2))
            yield Batch(batch, xb, (gt_boxes.to(self.device), gt_labels.to(self.device)), len(images))

    def loss(self, outputs: tuple[torch.Tensor, ...], target: tuple[torch.Tensor, torch.Tensor]) -> StepLoss:
        gt_boxes, gt_labels = target
        loss, parts = self.criterion(tuple(o.float() for o in outputs), gt_boxes, gt_labels, self.hw)
        return StepLoss(loss, parts)

    def validate(self, model: nn.Module, epoch: int, last_epoch: bool, precision: Precision) -> dict | None:
        if (epoch + 1) % self.cfg.detection.eval_every != 0 and not last_epoch:
            return None
        result = None
        if self.dist.is_main:  # mAP is computed once, on the main process
            result = evaluate_detector(model, self.dataset.val, self.classes, self.params, self.preprocessing,
                                       self.device, min(self.cfg.eval_batch_size, EVAL_BATCH))
        barrier(self.dist)
        return result

    def epoch_report(self, stats: EpochStats, val: dict | None) -> tuple[dict[str, Any], str]:
        record = {"type": "epoch", "epoch": stats.epoch, "step": stats.step, "train_loss": stats.train_loss,
                  "lr": stats.lr, "img_per_s": stats.img_per_s, "epoch_time_s": stats.epoch_time_s}
        line = f"epoch {stats.epoch}/{stats.total_epochs}  train loss {stats.train_loss:.4f}"
        if val is not None:
            record.update({"val_map": val["map"], "val_map50": val["map50"]})
            line += f"  val mAP {val['map']:.4f} mAP@.5 {val['map50']:.4f}"
        return record, f"{line}  {stats.img_per_s:.1f} img/s  {stats.epoch_time_s:.1f}s"

    def train_state(self) -> dict[str, Any]:
        ds = self.dataset
        return {"task": "detection", "classes": self.classes, "preprocessing": self.preprocessing,
                "postprocess": self.params.to_dict(),
                "dataset": {"format": ds.format, "source": ds.source, "content_hash": ds.content_hash}}

    def final_metrics(self, last_val: dict | None) -> dict[str, Any]:
        metrics: dict[str, Any] = {"assigner": self.assigner}
        if last_val is not None:
            metrics["val"] = last_val
        return metrics


def train_detector(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                   on_step: StepCallback | None = None, show_progress: bool = True) -> TrainResult:
    """Train the detector ``cfg.model`` on the detection data at ``cfg.data.path``; see :func:`trainer.engine.train`."""
    return run_training(cfg, run_dir, DetectionTask, resume=resume, on_step=on_step, show_progress=show_progress)
