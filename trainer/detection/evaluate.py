"""Detector evaluation: letterbox the images, run the model, post-process, COCO mAP.

Predictions are mapped back to original-image pixels (undoing the letterbox) and scored
against the original annotations with :func:`trainer.detection.metrics.coco_map`.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from trainer.data.augment import Normalizer
from trainer.data.detection.transforms import LetterboxInfo, letterbox, undo_letterbox
from trainer.data.detection.types import DetectionSample, DetectionSplit
from trainer.detection.postprocess import postprocess
from trainer.detection.postprocess_np import PostprocessParams

LETTERBOX_PAD = 114

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [K, 4] xyxy, scores [K], labels [K]


def letterboxed_batches(split: DetectionSplit, input_hw: tuple[int, int], batch_size: int
                        ) -> Iterator[tuple[np.ndarray, list[LetterboxInfo], list[DetectionSample]]]:
    """uint8 NHWC batches of letterboxed images with their letterbox infos and original samples."""
    batch: list[tuple[np.ndarray, LetterboxInfo, DetectionSample]] = []
    for i in range(len(split)):
        sample = split.load(i)
        image, _, info = letterbox(sample.image, None, input_hw, LETTERBOX_PAD)
        batch.append((image, info, sample))
        if len(batch) == batch_size or i == len(split) - 1:
            yield np.stack([b[0] for b in batch]), [b[1] for b in batch], [b[2] for b in batch]
            batch = []


def to_input(images: np.ndarray, normalizer: Normalizer, device: torch.device) -> torch.Tensor:
    """uint8 NHWC numpy batch -> normalised float NCHW tensor on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
    return normalizer(x)


@torch.no_grad()
def predict_split(model: nn.Module, split: DetectionSplit, params: PostprocessParams, preprocessing: dict,
                  device: torch.device, batch_size: int = 16,
                  run: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None
                  ) -> tuple[list[Prediction], list[DetectionSample]]:
    """Detections in original-image pixels for every image of ``split`` (and the samples themselves)."""
    was_training = model.training
    model.eval()
    normalizer = Normalizer(preprocessing["mean"], preprocessing["std"], device, channels_last=False)
    preds: list[Prediction] = []
    samples: list[DetectionSample] = []
    for images, infos, batch_samples in letterboxed_batches(split, params.input_hw, batch_size):
        outputs = (run or model)(to_input(images, normalizer, device))
        for (boxes, scores, labels), info in zip(postprocess(tuple(o.float() for o in outputs), params), infos):
            preds.append((undo_letterbox(boxes.cpu().numpy(), info), scores.cpu().numpy(), labels.cpu().numpy()))
        samples.extend(batch_samples)
    model.train(was_training)
    return preds, samples


def score_predictions(preds: list[Prediction], samples: list[DetectionSample], classes: list[str]) -> dict:
    """COCO mAP of ``preds`` against the samples' annotations."""
    from trainer.detection.metrics import coco_map

    ground_truth = [(s.boxes, s.labels, s.iscrowd) for s in samples]
    return coco_map(preds, ground_truth, classes)


def evaluate_detector(model: nn.Module, split: DetectionSplit, classes: list[str], params: PostprocessParams,
                      preprocessing: dict, device: torch.device, batch_size: int = 16) -> dict:
    """COCO mAP (``map``, ``map50``, ... as :func:`coco_map` returns) of ``model`` on ``split``."""
    preds, samples = predict_split(model, split, params, preprocessing, device, batch_size)
    result = score_predictions(preds, samples, classes)
    result["num_images"] = len(samples)
    return result
