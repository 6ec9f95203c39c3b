"""Post-processing: NMS, class-aware suppression, thresholds, top-k, letterbox undo; torch == numpy."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.detection.postprocess import nms, postprocess, undo_letterbox
from trainer.detection.postprocess_np import PostprocessParams, make_priors_np, nms_np, postprocess_np, undo_letterbox_np

BOXES = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=np.float32)
SCORES = np.array([0.9, 0.8, 0.7, 0.95], dtype=np.float32)


def test_nms_hand_case_in_both_implementations():
    # box 3 (0.95) beats box 0 (IoU 0.9) and box 1 (IoU 81/119 = 0.68); box 2 is far away
    assert nms_np(BOXES, SCORES, 0.5).tolist() == [3, 2]
    assert nms(torch.from_numpy(BOXES), torch.from_numpy(SCORES), 0.5).tolist() == [3, 2]
    # at IoU threshold 0.7, box 1 (IoU 0.68 with box 3, 0.68 with box 0) survives; box 0 does not (0.9)
    assert nms_np(BOXES, SCORES, 0.7).tolist() == [3, 1, 2]
    assert nms(torch.from_numpy(BOXES), torch.from_numpy(SCORES), 0.7).tolist() == [3, 1, 2]
    assert nms_np(BOXES[:0], SCORES[:0], 0.5).tolist() == []


def test_nms_ties_keep_the_lower_index():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=np.float32)
    scores = np.array([0.5, 0.5], dtype=np.float32)
    assert nms_np(boxes, scores, 0.5).tolist() == [0]
    assert nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).tolist() == [0]


def _outputs_with(hw, strides, num_classes, hits):
    """Raw outputs (torch) whose decoded detections are exactly ``hits``: (prior, class, logit, sides in bins)."""
    priors = make_priors_np(hw, strides)
    cls = np.full((1, len(priors), num_classes), -10.0, dtype=np.float32)
    reg = np.full((1, len(priors), 4, 8), -1e4, dtype=np.float32)
    for prior, label, logit, sides in hits:
        cls[0, prior, label] = logit
        reg[0, prior, np.arange(4), sides] = 0.0
    reg = reg.reshape(1, len(priors), 32)
    outs, start = [], 0
    for s in strides:
        fh, fw = -(-hw[0] // s), -(-hw[1] // s)
        n = fh * fw
        outs.append(torch.from_numpy(cls[:, start:start + n].transpose(0, 2, 1).reshape(1, num_classes, fh, fw).copy()))
        outs.append(torch.from_numpy(reg[:, start:start + n].transpose(0, 2, 1).reshape(1, 32, fh, fw).copy()))
        start += n
    return tuple(outs), priors


def test_decode_threshold_class_aware_nms_and_topk():
    hw, strides = (32, 32), (8, 16)
    # prior 5 = (12, 12) stride 8; prior 6 = (20, 12). Sides in bins of 8 px.
    hits = [(5, 0, 3.0, [1, 1, 1, 1]),   # class 0, box (4, 4, 20, 20), score 0.953
            (6, 0, 2.0, [2, 1, 0, 1]),   # class 0, (4, 4, 20, 20) again -> suppressed
            (6, 1, 1.0, [2, 1, 0, 1]),   # class 1, same box: other class, kept
            (10, 1, -4.0, [1, 1, 1, 1])]  # score 0.018 < 0.05: dropped
    outs, _ = _outputs_with(hw, strides, 2, hits)
    params = PostprocessParams(2, strides, 7, hw, score_thr=0.05, iou_thr=0.6, max_det=100)
    (boxes, scores, labels), = postprocess(outs, params)
    assert labels.tolist() == [0, 1]
    assert boxes.tolist() == [[4.0, 4.0, 20.0, 20.0], [4.0, 4.0, 20.0, 20.0]]
    assert scores.tolist() == pytest.approx([1 / (1 + np.exp(-3.0)), 1 / (1 + np.exp(-1.0))], abs=1e-6)
    (nb, ns, nl), = postprocess_np([o.numpy() for o in outs], params)
    assert nl.tolist() == [0, 1] and np.allclose(nb, boxes.numpy()) and np.allclose(ns, scores.numpy())
    # top-k keeps the best one; boxes are clipped to the input
    params1 = PostprocessParams(2, strides, 7, hw, max_det=1)
    assert postprocess(outs, params1)[0][2].tolist() == [0]
    assert postprocess_np([o.numpy() for o in outs], params1)[0][2].tolist() == [0]
    edge, _ = _outputs_with(hw, strides, 2, [(0, 1, 3.0, [3, 3, 1, 1])])  # (4, 4) +- 24: clipped at 0
    (eb, _, _), = postprocess(edge, params)
    assert eb.tolist() == [[0.0, 0.0, 12.0, 12.0]]


def test_undo_letterbox_hand_case():
    # a 100x200 (H x W) image letterboxed to 64x64: scale 0.32, pad_y 16
    boxes = np.array([[0.0, 16.0, 32.0, 32.0], [60.0, 0.0, 70.0, 70.0]], dtype=np.float32)
    expected = [[0.0, 0.0, 100.0, 50.0], [187.5, 0.0, 200.0, 100.0]]
    np.testing.assert_allclose(undo_letterbox_np(boxes, 0.32, 0, 16, (100, 200)), expected, rtol=1e-6)
    np.testing.assert_allclose(undo_letterbox(torch.from_numpy(boxes), 0.32, 0, 16, (100, 200)).numpy(), expected,
                               rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_classes=st.integers(1, 4), thr=st.sampled_from([0.3, 0.5, 0.7]))
def test_torch_and_numpy_postprocess_agree(seed, num_classes, thr):
    g = torch.Generator().manual_seed(seed)
    hw, strides = (48, 64), (8, 16, 32)
    outs = []
    for s in strides:
        fh, fw = -(-hw[0] // s), -(-hw[1] // s)
        outs.append(torch.randn(2, num_classes, fh, fw, generator=g) * 2 - 1)
        outs.append(torch.randn(2, 32, fh, fw, generator=g) * 3)
    params = PostprocessParams(num_classes, strides, 7, hw, score_thr=0.2, iou_thr=thr, max_det=20, pre_nms_topk=50)
    got_t = postprocess(tuple(outs), params)
    got_n = postprocess_np([o.numpy() for o in outs], params)
    for (tb, ts, tl), (nb, ns, nl) in zip(got_t, got_n):
        assert tl.tolist() == nl.tolist()
        assert len(tl) <= 20
        np.testing.assert_allclose(tb.numpy(), nb, atol=1e-4)
        np.testing.assert_allclose(ts.numpy(), ns, atol=1e-6)
        assert (np.diff(ns) <= 0).all()
