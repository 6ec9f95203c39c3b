"""QAT for the NanoDet-style detectors: the detector's own batches and GFL loss in the QAT loop.

The run's training config decides everything the fine-tuning sees — input size, augmentation
(flip, scale, translate, HSV; mosaic off), assigner and loss weights — so the fake-quantized model
is trained on the task it was trained on, only with a small learning rate.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from quantize.qat import QatSettings, QatTask
from trainer.config import config_from_dict
from trainer.data.augment import Normalizer
from trainer.data.detection import open_detection_dataset
from trainer.data.detection.transforms import DetectionAugment
from trainer.detection.data import DetectionLoader
from trainer.detection.evaluate import LETTERBOX_PAD
from trainer.detection.losses import GFLLoss, LossWeights
from trainer.detection.train import detection_preprocessing, input_hw
from trainer.models.nanodet import detector_spec

#: detector QAT batches: small, like the detector's own training (16 by default)
DETECTOR_QAT_BATCH = 16


class DetectorQatTask(QatTask):
    """Letterboxed, augmented detection batches of the run's training split and the GFL loss."""

    def __init__(self, train_state: dict, settings: QatSettings, device: torch.device = torch.device("cpu"),
                 data: str | None = None) -> None:
        cfg = config_from_dict(train_state["config"])
        if data is not None:
            cfg.data.path = data
        ds = open_detection_dataset(cfg.data.path, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
        self.hw = input_hw(cfg)
        a = cfg.detection.augment
        augment = DetectionAugment(self.hw, flip=a.flip, scale=tuple(a.scale), translate=a.translate,
                                   hsv=tuple(a.hsv), mosaic=0.0, pad_value=LETTERBOX_PAD)
        batch = min(settings.batch_size, DETECTOR_QAT_BATCH, len(ds.train))
        self._loader = DetectionLoader(ds.train, augment, batch, settings.seed, 0, 1, 0)
        pre = detection_preprocessing(self.hw)
        self._normalizer = Normalizer(pre["mean"], pre["std"], device, channels_last=False)
        spec = detector_spec(cfg.model.name)
        d = cfg.detection
        assigner = spec.assigner if d.assigner == "auto" else d.assigner
        self._criterion = GFLLoss(len(ds.classes), spec.strides, spec.reg_max, assigner,
                                  LossWeights(d.qfl_weight, d.dfl_weight, d.giou_weight))
        self.device = device
        self.steps_per_epoch = len(self._loader)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, Any]]:
        for _batch, images, gt_boxes, gt_labels in self._loader.iterate(epoch):
            xb = self._normalizer(images.to(self.device).permute(0, 3, 1, 2).contiguous())
            yield xb, (gt_boxes.to(self.device), gt_labels.to(self.device), len(images))

    def loss(self, outputs: Any, target: Any) -> tuple[torch.Tensor, dict[str, float], int]:
        gt_boxes, gt_labels, n = target
        loss, parts = self._criterion(tuple(o.float() for o in outputs), gt_boxes, gt_labels, self.hw)
        return loss, {"loss": loss.item() * n, **{k: parts[k] * n for k in ("qfl", "giou", "dfl")}}, n
