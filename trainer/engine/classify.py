"""Classifier training: image-folder / CIFAR data, crop-flip-cutout augmentation, cross-entropy, top-1.

:func:`train` is the public entry point (``trainer.engine.train``); the loop itself is
:func:`trainer.engine.loop.run_training`, which this module feeds through :class:`ClassificationTask`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.data import ArraySplit, Dataset, open_dataset
from trainer.data.augment import Normalizer, augment_batch, batch_generator
from trainer.data.loader import make_loader
from trainer.engine.distributed import DistInfo, barrier
from trainer.engine.evaluate import EvalResult, evaluate_model
from trainer.engine.loop import Batch, EpochStats, StepCallback, StepLoss, TrainResult, TrainTask, run_training
from trainer.engine.setup import IMAGENET_MEAN, IMAGENET_STD, Precision, channel_stats
from trainer.models import build_model


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


class ClassificationTask(TrainTask):
    """Cross-entropy on augmented batches; top-1 on the validation split after every epoch."""

    loss_label = "training loss"
    grad_clip_hint = "1.0"
    reports_accuracy = True

    def __init__(self, cfg: TrainConfig, device: torch.device, dist: DistInfo) -> None:
        self.cfg, self.device, self.dist = cfg, device, dist
        self.dataset = ds = _open_data(cfg, dist)
        self.classes = list(ds.classes)
        self.preprocessing = _preprocessing(ds)
        image_size = tuple(ds.image_size)
        self.train_loader = make_loader(ds.train, batch_size=cfg.batch_size, train=True, device=device, seed=cfg.seed,
                                        rank=dist.rank, world_size=dist.world_size, image_size=image_size,
                                        num_workers=cfg.data.num_workers)
        self.val_loader = make_loader(ds.val, batch_size=cfg.eval_batch_size, train=False, device=device,
                                      seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
                                      image_size=image_size, num_workers=cfg.data.num_workers)
        self.normalizer = Normalizer(self.preprocessing["mean"], self.preprocessing["std"], device, cfg.channels_last)
        self.steps_per_epoch = len(self.train_loader)
        # where this rank's images sit inside each global batch (training batches are always full)
        self.shard = (dist.rank * (cfg.batch_size // dist.world_size), cfg.batch_size)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)

    def build_model(self, model_args: dict[str, Any], resume: bool) -> nn.Module:
        return build_model(self.cfg.model.name, **model_args)

    def batches(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        aug = self.cfg.augment
        for batch, xb, yb in self.train_loader.iterate(epoch, start_batch):
            gen = batch_generator(self.device, self.cfg.seed, epoch, batch)
            xb = augment_batch(xb, gen, crop_padding=aug.crop_padding, flip=aug.flip, cutout_size=aug.cutout,
                               shard=self.shard)
            yield Batch(batch, self.normalizer(xb), yb, len(yb))

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> StepLoss:
        loss = self.criterion(outputs.float(), target)
        return StepLoss(loss, correct=(outputs.detach().argmax(1) == target).sum().double())

    def validate(self, model: nn.Module, epoch: int, last_epoch: bool, precision: Precision) -> EvalResult:
        return evaluate_model(model, self.val_loader, self.normalizer, len(self.classes), self.device, self.dist,
                              precision.autocast())

    def epoch_report(self, stats: EpochStats, val: EvalResult) -> tuple[dict[str, Any], str]:
        record = {
            "type": "epoch", "epoch": stats.epoch, "step": stats.step,
            "train_loss": stats.train_loss, "train_acc": stats.train_acc,
            "val_loss": val.loss, "val_acc": val.top1, "lr": stats.lr,
            "img_per_s": stats.img_per_s, "epoch_time_s": stats.epoch_time_s,
        }
        line = (f"epoch {stats.epoch}/{stats.total_epochs}  train loss {stats.train_loss:.4f} "
                f"acc {stats.train_acc:.2%}  val loss {val.loss:.4f} acc {val.top1:.2%}  "
                f"{stats.img_per_s:.0f} img/s  {stats.epoch_time_s:.1f}s")
        return record, line

    def train_state(self) -> dict[str, Any]:
        ds = self.dataset
        return {"classes": self.classes, "preprocessing": self.preprocessing,
                "dataset": {"format": ds.format, "source": ds.source, "content_hash": ds.content_hash}}

    def final_metrics(self, last_val: EvalResult | None) -> dict[str, Any]:
        return {"val": last_val.to_dict(self.classes)} if last_val is not None else {}


def train(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, on_step: StepCallback | None = None,
          show_progress: bool = True) -> TrainResult:
    """Train the classifier ``cfg.model`` on ``cfg.data``; write checkpoints and metrics into ``run_dir``.

    ``on_step(global_step, model, stop)`` runs after every optimizer step (call ``stop.request()`` to
    stop); an interrupted run returns with ``result.interrupted`` after writing a checkpoint to resume
    from. See :func:`trainer.engine.loop.run_training` for the details.
    """
    return run_training(cfg, run_dir, ClassificationTask, resume=resume, on_step=on_step, show_progress=show_progress)
