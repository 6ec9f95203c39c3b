"""Label assignment: which prior points learn which ground-truth box.

Both assigners return, for one image, a long tensor ``[N]`` over the priors holding the
index of the assigned ground-truth box, or ``-1`` for background.

* :func:`atss_assign` — ATSS (Zhang et al. 2020), used by NanoDet-m: per level the ``topk``
  priors nearest to each box centre are candidates; the IoU threshold of a box is the mean +
  standard deviation of its candidates' IoUs (with square anchors of ``anchor_scale * stride``);
  candidates above it whose centre lies inside the box are positives. A prior claimed by
  several boxes goes to the one with the highest IoU.
* :func:`dynamic_soft_label_assign` — NanoDet-Plus's dynamic soft-label assigner (SimOTA-style):
  priors whose centre lies inside a box are candidates; the cost of (prior, box) is the
  soft-label BCE of the predicted scores weighted by ``|iou - score|^2`` plus
  ``iou_weight * -log(iou)`` of the predicted box; each box takes its ``k`` cheapest priors,
  ``k`` being the sum of its ``topk`` best IoUs (at least 1); a prior claimed twice goes to
  the cheaper box.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from trainer.detection.boxes import box_iou

ATSS_TOPK = 9
ATSS_ANCHOR_SCALE = 5.0  # NanoDet/GFL octave_base_scale: anchors of 5 * stride pixels
DYNAMIC_TOPK = 13
DYNAMIC_IOU_WEIGHT = 3.0
_CENTRE_MARGIN = 0.01  # a prior centre must lie this far inside a box (pixels)


def _centres_inside(priors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """[N, G] True where prior centre n lies strictly inside box g."""
    c = priors[:, None, :2]
    deltas = torch.cat([c - gt_boxes[None, :, :2], gt_boxes[None, :, 2:] - c], dim=-1)
    return deltas.min(dim=-1).values > _CENTRE_MARGIN


def atss_assign(priors: torch.Tensor, num_level_priors: list[int], gt_boxes: torch.Tensor,
                topk: int = ATSS_TOPK, anchor_scale: float = ATSS_ANCHOR_SCALE) -> torch.Tensor:
    """ATSS assignment of priors [N, 3] (cx, cy, stride) to boxes [G, 4]; see the module docstring."""
    n, g = priors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((n,), -1, dtype=torch.long, device=priors.device)
    if g == 0 or n == 0:
        return assigned
    half = priors[:, 2:3] * anchor_scale / 2
    anchors = torch.cat([priors[:, :2] - half, priors[:, :2] + half], dim=1)
    ious = box_iou(anchors, gt_boxes)  # [N, G]
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    dist = torch.cdist(priors[:, :2], gt_centres)  # [N, G]

    candidates = []
    start = 0
    for count in num_level_priors:
        k = min(topk, count)
        _, idx = dist[start:start + count].topk(k, dim=0, largest=False)
        candidates.append(idx + start)
        start += count
    cand = torch.cat(candidates, dim=0)  # [K, G]
    cand_ious = ious.gather(0, cand)
    threshold = cand_ious.mean(0) + cand_ious.std(0)  # std is unbiased (n - 1), as in the ATSS paper's code
    inside = _centres_inside(priors, gt_boxes).gather(0, cand)
    positive = (cand_ious >= threshold[None, :]) & inside

    # IoU of each (prior, box) pair that ATSS accepted, -inf elsewhere; the best box wins.
    overlaps = torch.full((n, g), float("-inf"), device=priors.device)
    cols = torch.arange(g, device=priors.device).expand_as(cand)
    overlaps[cand[positive], cols[positive]] = cand_ious[positive]
    best, best_gt = overlaps.max(dim=1)
    hit = best > float("-inf")
    assigned[hit] = best_gt[hit]
    return assigned


@torch.no_grad()
def dynamic_soft_label_assign(priors: torch.Tensor, cls_logits: torch.Tensor, pred_boxes: torch.Tensor,
                              gt_boxes: torch.Tensor, gt_labels: torch.Tensor, topk: int = DYNAMIC_TOPK,
                              iou_weight: float = DYNAMIC_IOU_WEIGHT) -> torch.Tensor:
    """NanoDet-Plus assignment of priors [N, 3] given predictions (logits [N, C], boxes [N, 4])."""
    n, g = priors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((n,), -1, dtype=torch.long, device=priors.device)
    if g == 0 or n == 0:
        return assigned
    valid = _centres_inside(priors, gt_boxes).any(dim=1)
    num_valid = int(valid.sum())
    if num_valid == 0:
        return assigned
    logits = cls_logits[valid].float()
    ious = box_iou(pred_boxes[valid].float(), gt_boxes.float())  # [V, G]
    iou_cost = -torch.log(ious + 1e-7)
    onehot = F.one_hot(gt_labels.long(), cls_logits.shape[1]).float()  # [G, C]
    soft_label = onehot[None, :, :] * ious[:, :, None]  # [V, G, C]
    scores = logits[:, None, :].expand(-1, g, -1)
    scale = (soft_label - scores.sigmoid()).abs().pow(2.0)
    cls_cost = (F.binary_cross_entropy_with_logits(scores, soft_label, reduction="none") * scale).sum(-1)
    cost = cls_cost + iou_weight * iou_cost  # [V, G]

    k_cand = min(topk, num_valid)
    dynamic_k = ious.topk(k_cand, dim=0).values.sum(0).int().clamp(min=1)
    matching = torch.zeros_like(cost, dtype=torch.bool)
    for j in range(g):
        _, idx = cost[:, j].topk(int(dynamic_k[j]), largest=False)
        matching[idx, j] = True
    multi = matching.sum(1) > 1
    if multi.any():  # a prior claimed by several boxes keeps the cheapest one
        cheapest = cost[multi].argmin(1)
        matching[multi] = False
        matching[multi.nonzero().squeeze(1), cheapest] = True
    fg = matching.any(1)
    valid_idx = valid.nonzero().squeeze(1)
    assigned[valid_idx[fg]] = matching[fg].float().argmax(1)
    return assigned
