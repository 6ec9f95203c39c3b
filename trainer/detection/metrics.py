"""COCO-style box mAP in numpy, matching pycocotools' ``COCOeval`` (iouType 'bbox').

What is reproduced, because each changes the numbers:

- IoU thresholds .50:.05:.95, 101 recall points, precision made monotone
  from the right and read at the first point reaching each recall;
- per image and class, detections sorted by score (stable) and cut to
  ``max_dets``; greedy matching in score order to the best-IoU ground truth
  not yet taken, preferring non-ignored ground truth, ties to the later one;
- crowd ground truth (``iscrowd``) is ignored and may absorb any number of
  detections, its IoU being intersection over the detection's own area;
- area ranges all / small (< 32²) / medium / large (> 96²) by box area, inclusive
  bounds; ground truth outside a range is ignored, and so are unmatched
  detections outside it;
- a class with no non-ignored ground truth is left out of the mean (AP -1).

Area is the box area for ground truth too (pycocotools uses the ``area`` field
of the annotation, the segmentation area for COCO itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1)
AREA_RANGES = {"all": (0.0, 1e5 ** 2), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e5 ** 2)}
MAX_DETS = 100


def coco_map(predictions: Sequence, ground_truth: Sequence, classes: Sequence[str], *,
             max_dets: int = MAX_DETS) -> dict:
    """COCO box mAP of ``predictions`` against ``ground_truth``, image by image.

    ``predictions[i]`` is ``(boxes [K, 4] xyxy, scores [K], labels [K])`` for
    image i; ``ground_truth[i]`` is a DetectionSample (``.boxes``, ``.labels``,
    ``.iscrowd``) or a tuple ``(boxes, labels)`` / ``(boxes, labels, iscrowd)``
    in the same pixel frame. Returns floats ``map`` (AP@[.5:.95]), ``map50``,
    ``map75``, ``map_small``, ``map_medium``, ``map_large``, ``mar100`` (recall
    at ``max_dets``) and ``per_class`` {name: AP@[.5:.95]}; -1.0 where there is
    no ground truth to score against, as pycocotools reports it.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"coco_map needs one prediction per ground-truth image, got {len(predictions)} "
                         f"predictions and {len(ground_truth)} images")
    num_classes = len(classes)
    images = [(_as_predictions(p, i, num_classes), _as_ground_truth(g, i, num_classes))
              for i, (p, g) in enumerate(zip(predictions, ground_truth))]
    areas = list(AREA_RANGES.values())
    t_count, r_count = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = -np.ones((t_count, r_count, num_classes, len(areas)))
    recall = -np.ones((t_count, num_classes, len(areas)))
    for k in range(num_classes):
        per_image = [_class_view(pred, gt, k, max_dets) for pred, gt in images]
        for a, area_rng in enumerate(areas):
            evals = [_evaluate_image(*view, area_rng) for view in per_image]
            result = _accumulate([e for e in evals if e is not None])
            if result is not None:
                precision[:, :, k, a], recall[:, k, a] = result

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(np.mean(valid)) if valid.size else -1.0

    t50, t75 = _threshold_index(0.5), _threshold_index(0.75)
    return {
        "map": mean(precision[:, :, :, 0]),
        "map50": mean(precision[t50, :, :, 0]),
        "map75": mean(precision[t75, :, :, 0]),
        "map_small": mean(precision[:, :, :, 1]),
        "map_medium": mean(precision[:, :, :, 2]),
        "map_large": mean(precision[:, :, :, 3]),
        "mar100": mean(recall[:, :, 0]),
        "per_class": {name: mean(precision[:, :, k, 0]) for k, name in enumerate(classes)},
    }


def _threshold_index(t: float) -> int:
    return int(np.argmin(np.abs(IOU_THRESHOLDS - t)))


def _as_predictions(pred, i: int, num_classes: int):
    try:
        boxes, scores, labels = pred
    except (TypeError, ValueError):
        raise ValueError(f"predictions[{i}] must be (boxes, scores, labels), got {type(pred).__name__}") from None
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"predictions[{i}]: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
    _check_labels(labels, f"predictions[{i}]", num_classes)
    return boxes, scores, labels


def _as_ground_truth(gt, i: int, num_classes: int):
    if hasattr(gt, "boxes") and hasattr(gt, "labels"):
        boxes, labels, crowd = gt.boxes, gt.labels, getattr(gt, "iscrowd", None)
    elif isinstance(gt, (tuple, list)) and len(gt) in (2, 3):
        boxes, labels, crowd = gt[0], gt[1], gt[2] if len(gt) == 3 else None
    else:
        raise ValueError(f"ground_truth[{i}] must be a DetectionSample or (boxes, labels[, iscrowd])")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    crowd = np.zeros(len(labels), dtype=bool) if crowd is None else np.asarray(crowd, dtype=bool).reshape(-1)
    if not len(boxes) == len(labels) == len(crowd):
        raise ValueError(f"ground_truth[{i}]: {len(boxes)} boxes, {len(labels)} labels, {len(crowd)} iscrowd flags")
    _check_labels(labels, f"ground_truth[{i}]", num_classes)
    return boxes, labels, crowd


def _check_labels(labels: np.ndarray, what: str, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what}: labels must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")


def _box_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou_coco(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """[D, G] IoU as pycocotools computes it: for a crowd ground truth the union is the detection's area."""
    if len(dets) == 0 or len(gts) == 0:
        return np.zeros((len(dets), len(gts)))
    iw = np.minimum(dets[:, None, 2], gts[None, :, 2]) - np.maximum(dets[:, None, 0], gts[None, :, 0])
    ih = np.minimum(dets[:, None, 3], gts[None, :, 3]) - np.maximum(dets[:, None, 1], gts[None, :, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    det_area, gt_area = _box_area(dets)[:, None], _box_area(gts)[None, :]
    union = np.where(crowd[None, :], det_area, det_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _class_view(pred, gt, k: int, max_dets: int):
    """One image's class-``k`` detections (score-sorted, top ``max_dets``), ground truth and their IoUs."""
    boxes, scores, labels = pred
    sel = labels == k
    d_boxes, d_scores = boxes[sel], scores[sel]
    order = np.argsort(-d_scores, kind="mergesort")[:max_dets]
    d_boxes, d_scores = d_boxes[order], d_scores[order]
    g_sel = gt[1] == k
    g_boxes, g_crowd = gt[0][g_sel], gt[2][g_sel]
    return d_boxes, d_scores, g_boxes, g_crowd, box_iou_coco(d_boxes, g_boxes, g_crowd)


def _evaluate_image(d_boxes, d_scores, g_boxes, g_crowd, ious, area_rng):
    """(scores, matched [T, D], ignored [T, D], gt_ignored [G]) for one image, class and area range;
    None when the image has neither detections nor ground truth of the class."""
    if len(d_boxes) == 0 and len(g_boxes) == 0:
        return None
    lo, hi = area_rng
    g_area = _box_area(g_boxes)
    g_ignore = g_crowd | (g_area < lo) | (g_area > hi)
    order = np.argsort(g_ignore, kind="mergesort")  # non-ignored ground truth first
    g_ignore, g_crowd, ious = g_ignore[order], g_crowd[order], ious[:, order]
    matched, ignored = _match(ious, g_ignore, g_crowd)
    d_area = _box_area(d_boxes)
    outside = (d_area < lo) | (d_area > hi)
    ignored |= ~matched & outside[None, :]
    return d_scores, matched, ignored, g_ignore


def _match(ious: np.ndarray, g_ignore: np.ndarray, g_crowd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching at each IoU threshold: (matched [T, D], matched-to-ignored [T, D]).

    This is pycocotools' loop, run over plain Python lists (numpy's per-call
    cost dominates at these sizes) and over each detection's candidates only:
    ground truth with IoU under the lowest threshold can never be matched.
    Ground truth must be sorted non-ignored first. For each detection, in
    score order, the best-IoU free ground truth wins (ties: the later one);
    ignored ground truth is considered only when no non-ignored one
    qualifies; crowd ground truth stays free after a match.
    """
    t_count, d_count = len(IOU_THRESHOLDS), ious.shape[0]
    matched = np.zeros((t_count, d_count), dtype=bool)
    ignored = np.zeros((t_count, d_count), dtype=bool)
    if ious.size == 0:
        return matched, ignored
    rows = ious.tolist()
    candidates = [np.flatnonzero(row >= IOU_THRESHOLDS[0]).tolist() for row in ious]
    active = [d for d in range(d_count) if candidates[d]]
    ign, crowd = g_ignore.tolist(), g_crowd.tolist()
    for t, thr in enumerate(IOU_THRESHOLDS):
        taken = [False] * len(ign)
        for d in active:
            best, m, row = min(thr, 1 - 1e-10), -1, rows[d]
            for g in candidates[d]:
                if taken[g] and not crowd[g]:
                    continue
                if m > -1 and not ign[m] and ign[g]:
                    break  # a non-ignored match beats any ignored one
                if row[g] < best:
                    continue
                best, m = row[g], g
            if m > -1:
                matched[t, d], ignored[t, d], taken[m] = True, ign[m], True
    return matched, ignored


def _accumulate(evals: list):
    """(precision [T, R], recall [T]) over the evaluated images of one class and area; None without ground truth."""
    if not evals:
        return None
    gt_ignored = np.concatenate([e[3] for e in evals])
    n_pos = int(np.count_nonzero(~gt_ignored))
    if n_pos == 0:
        return None
    scores = np.concatenate([e[0] for e in evals])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([e[1] for e in evals], axis=1)[:, order]
    ignored = np.concatenate([e[2] for e in evals], axis=1)[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    t_count, r_count = tp.shape[0], len(RECALL_THRESHOLDS)
    precision, recall = np.zeros((t_count, r_count)), np.zeros(t_count)
    for t in range(t_count):
        nd = tp.shape[1]
        if nd == 0:
            continue
        rc = tp[t] / n_pos
        pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
        recall[t] = rc[-1]
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # monotone from the right
        idx = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
        valid = idx < nd
        precision[t, valid] = pr[idx[valid]]
    return precision, recall
