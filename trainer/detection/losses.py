"""Generalized Focal Loss (Li et al. 2020) as NanoDet uses it.

* Quality Focal Loss: sigmoid BCE against a soft target (the IoU of the predicted box with
  its ground truth for the assigned class, 0 elsewhere), scaled by ``|target - p|^beta``.
* Distribution Focal Loss: cross-entropy on the two integer bins around each continuous
  box-side distance, weighted by closeness to the target.
* GIoU loss ``1 - GIoU`` of the decoded boxes.

:class:`GFLLoss` runs an assigner per image, then combines the three terms as NanoDet:
QFL normalised by the number of positives; GIoU and DFL weighted by each positive's
highest predicted class score and normalised by the sum of those weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from trainer.detection.assigners import atss_assign, dynamic_soft_label_assign
from trainer.detection.boxes import aligned_giou, aligned_iou, box_to_distance, decode_boxes, flatten_outputs, make_priors


def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """QFL per prior, summed over classes: logits [N, C], labels [N] (-1 = background), scores [N].

    For background priors (and the non-target classes of positives) the target is 0;
    for the labelled class of a positive it is ``scores`` (the IoU quality).
    """
    logits = logits.float()
    target = torch.zeros_like(logits)
    pos = labels >= 0
    target[pos, labels[pos]] = scores[pos].to(target.dtype)
    modulator = (target - logits.sigmoid()).abs().pow(beta)
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * modulator).sum(dim=1)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL per distribution: logits [M, R+1], continuous targets [M] in [0, R)."""
    left = target.long()
    right = left + 1
    w_left = right.float() - target
    w_right = target - left.float()
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.gather(1, left[:, None]).squeeze(1) * w_left + logp.gather(1, right[:, None]).squeeze(1) * w_right)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - GIoU`` of aligned box pairs [N, 4] -> [N]."""
    return 1.0 - aligned_giou(pred, target)


@dataclass
class LossWeights:
    qfl: float = 1.0
    dfl: float = 0.25
    giou: float = 2.0


class GFLLoss:
    """Assign, then QFL + DFL + GIoU over a batch of raw head outputs."""

    def __init__(self, num_classes: int, strides: tuple[int, ...], reg_max: int, assigner: str = "atss",
                 weights: LossWeights | None = None) -> None:
        if assigner not in ("atss", "dynamic"):
            raise ValueError(f"assigner must be 'atss' or 'dynamic', got {assigner!r}")
        self.num_classes, self.strides, self.reg_max = num_classes, tuple(strides), reg_max
        self.assigner = assigner
        self.weights = weights or LossWeights()

    def __call__(self, outputs: tuple[torch.Tensor, ...], gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                 image_hw: tuple[int, int]) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its parts; ``gt_boxes`` [B, M, 4] / ``gt_labels`` [B, M] padded with label -1."""
        cls, reg = flatten_outputs(outputs, self.num_classes, self.reg_max)
        b, n, _ = cls.shape
        priors = make_priors(image_hw, self.strides, cls.device)
        if priors.shape[0] != n:
            raise ValueError(f"head outputs cover {n} priors but a {image_hw} input has {priors.shape[0]}")
        level_counts = [int((priors[:, 2] == s).sum()) for s in self.strides]
        pred_boxes = decode_boxes(reg, priors, self.reg_max)  # [B, N, 4]

        labels = torch.full((b, n), -1, dtype=torch.long, device=cls.device)
        target_boxes = torch.zeros((b, n, 4), device=cls.device)
        for i in range(b):
            keep = gt_labels[i] >= 0
            boxes_i, labels_i = gt_boxes[i][keep].float(), gt_labels[i][keep].long()
            if self.assigner == "atss":
                idx = atss_assign(priors, level_counts, boxes_i)
            else:
                idx = dynamic_soft_label_assign(priors, cls[i].detach(), pred_boxes[i].detach(), boxes_i, labels_i)
            pos = idx >= 0
            labels[i, pos] = labels_i[idx[pos]]
            target_boxes[i, pos] = boxes_i[idx[pos]]

        cls, reg, labels = cls.reshape(b * n, -1), reg.reshape(b * n, -1), labels.reshape(-1)
        pred_boxes, target_boxes = pred_boxes.reshape(b * n, 4), target_boxes.reshape(b * n, 4)
        all_priors = priors.repeat(b, 1)
        pos = labels >= 0
        num_pos = int(pos.sum())
        scores = torch.zeros(b * n, device=cls.device)
        if num_pos:
            scores[pos] = aligned_iou(pred_boxes[pos].detach(), target_boxes[pos]).clamp(min=0)
        loss_qfl = quality_focal_loss(cls, labels, scores).sum() / max(num_pos, 1)

        if num_pos:
            weight = cls[pos].detach().float().sigmoid().max(dim=1).values
            weight_sum = weight.sum().clamp(min=1e-6)
            loss_giou = (giou_loss(pred_boxes[pos], target_boxes[pos]) * weight).sum() / weight_sum
            p = all_priors[pos]
            target_dist = box_to_distance(p[:, :2], target_boxes[pos]) / p[:, 2:3]
            target_dist = target_dist.clamp(min=0, max=self.reg_max - 0.01)
            dfl = distribution_focal_loss(reg[pos].reshape(-1, self.reg_max + 1), target_dist.reshape(-1))
            loss_dfl = (dfl * weight.repeat_interleave(4)).sum() / (4 * weight_sum)
        else:  # no objects in the batch: zero box losses that still touch the graph
            loss_giou = reg.sum() * 0.0
            loss_dfl = reg.sum() * 0.0
        w = self.weights
        total = w.qfl * loss_qfl + w.giou * loss_giou + w.dfl * loss_dfl
        parts = {"qfl": float(loss_qfl.detach()), "giou": float(loss_giou.detach()),
                 "dfl": float(loss_dfl.detach()), "num_pos": num_pos}
        return total, parts
