"""COCO mAP (trainer.detection.metrics.coco_map) against pycocotools on crowded, empty and multi-class fixtures."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from trainer.data.detection import DetectionSample
from trainer.detection.metrics import box_iou_coco, coco_map

pycocotools = pytest.importorskip("pycocotools", reason="pycocotools is the reference (pip install -e .[dev])")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

CLASSES = ["cat", "dog", "bird"]
KEYS = ("map", "map50", "map75", "map_small", "map_medium", "map_large")
STAT_INDEX = {"map": 0, "map50": 1, "map75": 2, "map_small": 3, "map_medium": 4, "map_large": 5, "mar100": 8}


def _random_box(rng, size=640.0):
    # Sides from 4 to 300 px so small, medium and large ranges all get objects.
    w, h = np.exp(rng.uniform(np.log(4), np.log(300), 2))
    x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
    return [x, y, x + w, y + h]


def _jitter(box, rng, amount):
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    d = rng.normal(0, amount, 4) * [w, h, w, h]
    out = [x1 + d[0], y1 + d[1], x2 + d[2], y2 + d[3]]
    if out[2] - out[0] < 1:
        out[2] = out[0] + 1
    if out[3] - out[1] < 1:
        out[3] = out[1] + 1
    return out


def make_fixture(seed: int):
    """Ground truth and detections for 20 images: crowded ones (many overlapping objects and crowd
    regions), empty ones (no objects, maybe false positives), and multi-class ones."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for i in range(20):
        boxes, labels, crowd = [], [], []
        kind = i % 4
        if kind == 0:  # crowded: a cluster of overlapping objects plus a crowd region over them
            cx, cy = rng.uniform(150, 450, 2)
            for _ in range(rng.integers(6, 15)):
                w, h = rng.uniform(15, 80, 2)
                x, y = cx + rng.uniform(-60, 60), cy + rng.uniform(-60, 60)
                boxes.append([x, y, x + w, y + h])
                labels.append(int(rng.integers(0, 2)))
                crowd.append(False)
            boxes.append([cx - 70, cy - 70, cx + 150, cy + 150])
            labels.append(0)
            crowd.append(True)
        elif kind in (1, 2):  # multi-class, scattered
            for _ in range(rng.integers(1, 8)):
                boxes.append(_random_box(rng))
                labels.append(int(rng.integers(0, 3)))
                crowd.append(bool(rng.random() < 0.1))
        # kind 3: an empty image
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64)
        crowd = np.asarray(crowd, dtype=bool)
        gts.append((boxes, labels, crowd))

        p_boxes, p_scores, p_labels = [], [], []
        for b, l in zip(boxes, labels):
            for _ in range(rng.integers(0, 3)):  # misses, hits and duplicates
                p_boxes.append(_jitter(b, rng, rng.choice([0.02, 0.08, 0.2])))
                p_scores.append(rng.uniform(0.05, 1.0))
                wrong = rng.random() < 0.15
                p_labels.append(int((l + 1) % 3) if wrong else int(l))
        for _ in range(rng.integers(0, 5)):  # false positives anywhere
            p_boxes.append(_random_box(rng))
            p_scores.append(rng.uniform(0.0, 0.6))
            p_labels.append(int(rng.integers(0, 3)))
        preds.append((np.asarray(p_boxes, dtype=np.float64).reshape(-1, 4), np.asarray(p_scores),
                      np.asarray(p_labels, dtype=np.int64)))
    return preds, gts


def pycoco_reference(preds, gts, num_classes):
    """pycocotools' stats and per-class AP@[.5:.95] (all areas, 100 dets) for the same data."""
    images, anns, dets = [], [], []
    for i, ((boxes, labels, crowd), (p_boxes, p_scores, p_labels)) in enumerate(zip(gts, preds)):
        images.append({"id": i + 1, "width": 640, "height": 640})
        for b, l, c in zip(boxes, labels, crowd):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(l) + 1,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": int(c)})
        for b, s, l in zip(p_boxes, p_scores, p_labels):
            dets.append({"image_id": i + 1, "category_id": int(l) + 1,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    per_class = []
    for k in range(num_classes):
        p = ev.eval["precision"][:, :, k, 0, 2]
        per_class.append(float(p[p > -1].mean()) if (p > -1).any() else -1.0)
    return ev.stats, per_class


@pytest.mark.parametrize("seed", range(8))
def test_coco_map_matches_pycocotools(seed):
    preds, gts = make_fixture(seed)
    ours = coco_map(preds, gts, CLASSES)
    stats, per_class = pycoco_reference(preds, gts, len(CLASSES))
    for key in KEYS + ("mar100",):
        assert ours[key] == pytest.approx(stats[STAT_INDEX[key]], abs=1e-3), key
    assert [ours["per_class"][c] for c in CLASSES] == pytest.approx(per_class, abs=1e-3)
    # The fixture must exercise every area range, or the comparison would prove little.
    assert all(stats[STAT_INDEX[k]] > 0 for k in ("map_small", "map_medium", "map_large"))


def test_fixture_has_crowd_empty_and_multiclass_images():
    _, gts = make_fixture(0)
    assert any(c.any() for _, _, c in gts)
    assert any(len(b) == 0 for b, _, _ in gts)
    assert any(len(set(l.tolist())) >= 2 for _, l, _ in gts)


def test_perfect_detections_score_one_and_crowd_absorbs_duplicates():
    boxes = np.array([[10, 10, 60, 60], [100, 100, 300, 260], [0, 0, 20, 20]], dtype=np.float64)
    labels = np.array([0, 1, 0])
    crowd = np.array([False, False, True])
    gt = [DetectionSample(np.zeros((400, 400, 3), np.uint8), boxes.astype(np.float32), labels, "a", crowd)]
    # Exact hits on the two real objects, plus two detections inside the crowd region: not false positives.
    pred_boxes = np.vstack([boxes[:2], [[1, 1, 10, 10], [5, 5, 15, 15]]])
    preds = [(pred_boxes, np.array([0.9, 0.8, 0.95, 0.99]), np.array([0, 1, 0, 0]))]
    result = coco_map(preds, gt, ["a", "b"])
    assert result["map"] == pytest.approx(1.0)
    assert result["per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    # Without the crowd flag the same two detections are false positives ranked above the hit.
    plain = coco_map(preds, [(boxes[:3], labels, np.zeros(3, bool))], ["a", "b"])
    assert plain["per_class"]["a"] < 0.9


def test_class_without_ground_truth_is_left_out():
    gts = [(np.array([[0, 0, 50, 50]]), np.array([0]))]
    preds = [(np.array([[0, 0, 50, 50], [100, 100, 150, 150]]), np.array([0.9, 0.8]), np.array([0, 1]))]
    result = coco_map(preds, gts, ["a", "b"])
    assert result["per_class"]["b"] == -1.0
    assert result["map"] == pytest.approx(1.0)
    empty = coco_map([(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))], [(np.zeros((0, 4)), np.zeros(0, int))], ["a"])
    assert empty["map"] == -1.0


def test_crowd_iou_uses_detection_area():
    dets = np.array([[0, 0, 10, 10.0]])
    gts = np.array([[0, 0, 100, 100.0], [0, 0, 100, 100.0]])
    iou = box_iou_coco(dets, gts, np.array([True, False]))
    assert iou[0, 0] == pytest.approx(1.0)
    assert iou[0, 1] == pytest.approx(0.01)


def test_bad_inputs_are_rejected():
    gt = [(np.zeros((1, 4)), np.array([0]))]
    with pytest.raises(ValueError, match="one prediction per"):
        coco_map([], gt, ["a"])
    with pytest.raises(ValueError, match="labels must be in 0..0"):
        coco_map([(np.zeros((1, 4)), np.ones(1), np.array([3]))], gt, ["a"])
    with pytest.raises(ValueError, match="1 boxes, 2 scores"):
        coco_map([(np.zeros((1, 4)), np.ones(2), np.array([0]))], gt, ["a"])
