"""Classification accuracy: top-1 overall and per class, for PyTorch models and raw logits."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from trainer.data.augment import Normalizer
from trainer.engine.distributed import DistInfo, all_reduce_sum


@dataclass
class EvalResult:
    """Counts for top-1 accuracy; ``per_class_*`` are indexed by class id."""

    correct: int
    total: int
    loss_sum: float
    per_class_correct: list[int] = field(default_factory=list)
    per_class_total: list[int] = field(default_factory=list)

    @property
    def top1(self) -> float:
        return self.correct / max(1, self.total)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.total)

    def per_class_accuracy(self) -> list[float]:
        return [c / t if t else float("nan") for c, t in zip(self.per_class_correct, self.per_class_total)]

    def to_dict(self, classes: list[str] | None = None) -> dict:
        names = classes or [str(i) for i in range(len(self.per_class_total))]
        return {
            "top1": self.top1,
            "loss": self.loss,
            "num_images": self.total,
            "per_class": {n: a for n, a in zip(names, self.per_class_accuracy())},
        }


def result_from_logits(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> EvalResult:
    """Top-1 counts (and mean cross-entropy) from a logits array, e.g. from onnxruntime."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    pred = logits.argmax(axis=1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss_sum = float(-log_probs[np.arange(len(labels)), labels].sum())
    hit = pred == labels
    return EvalResult(
        correct=int(hit.sum()),
        total=len(labels),
        loss_sum=loss_sum,
        per_class_correct=np.bincount(labels[hit], minlength=num_classes).tolist(),
        per_class_total=np.bincount(labels, minlength=num_classes).tolist(),
    )


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader,
    normalizer: Normalizer,
    num_classes: int,
    device: torch.device,
    dist_info: DistInfo = DistInfo(),
    autocast: AbstractContextManager | None = None,
) -> EvalResult:
    """Top-1 of ``model`` over every batch of ``loader`` (summed over DDP ranks)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
    total = torch.zeros(num_classes, dtype=torch.float64, device=device)
    loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
    for _, x, y in loader.iterate(0):
        if len(y) == 0:
            continue
        with autocast or nullcontext():
            logits = model(normalizer(x))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        hit = (logits.argmax(1) == y).double()
        correct.index_add_(0, y, hit)
        total.index_add_(0, y, torch.ones_like(hit))
    for t in (correct, total, loss_sum):
        all_reduce_sum(t, dist_info)
    model.train(was_training)
    return EvalResult(
        correct=int(correct.sum().item()),
        total=int(total.sum().item()),
        loss_sum=float(loss_sum.item()),
        per_class_correct=[int(v) for v in correct.tolist()],
        per_class_total=[int(v) for v in total.tolist()],
    )
