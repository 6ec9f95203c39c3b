"""ATSS and the NanoDet-Plus dynamic soft-label assigner on hand-built cases."""

import torch

from trainer.detection.assigners import atss_assign, dynamic_soft_label_assign
from trainer.detection.boxes import make_priors


def _grid():
    # one level, stride 8 on a 32x32 input: priors at 4, 12, 20, 28 on both axes (index = 4 * row + col)
    priors = make_priors((32, 32), (8,))
    return priors, [16]


def test_atss_symmetric_candidates_all_pass_the_threshold():
    priors, counts = _grid()
    gt = torch.tensor([[0.0, 0.0, 16.0, 16.0]])  # centre (8, 8): four equidistant candidates, equal IoUs
    assigned = atss_assign(priors, counts, gt, topk=4)
    assert torch.nonzero(assigned >= 0).flatten().tolist() == [0, 1, 4, 5]
    assert set(assigned[assigned >= 0].tolist()) == {0}


def test_atss_requires_the_prior_centre_inside_the_box():
    priors, counts = _grid()
    gt = torch.tensor([[0.0, 0.0, 8.0, 8.0]])  # every candidate anchor (40 px) holds the box: equal IoUs
    assigned = atss_assign(priors, counts, gt, topk=4)
    assert torch.nonzero(assigned >= 0).flatten().tolist() == [0]  # only (4, 4) lies inside the box


def test_atss_iou_threshold_is_mean_plus_std():
    priors, counts = _grid()
    gt = torch.tensor([[0.0, 0.0, 13.0, 13.0]])
    # anchor_scale 1: 8x8 anchors. Candidate IoUs 64/169, 40/193, 40/193, 25/208 -> mean + std = 0.337:
    # only prior 0 passes although the centres of priors 1, 4 and 5 lie inside the box.
    assigned = atss_assign(priors, counts, gt, topk=4, anchor_scale=1.0)
    assert torch.nonzero(assigned >= 0).flatten().tolist() == [0]


def test_atss_two_boxes_and_no_boxes():
    priors, counts = _grid()
    gts = torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 16.0, 32.0, 32.0]])
    assigned = atss_assign(priors, counts, gts, topk=4)
    assert torch.nonzero(assigned == 0).flatten().tolist() == [0, 1, 4, 5]
    assert torch.nonzero(assigned == 1).flatten().tolist() == [10, 11, 14, 15]
    assert (atss_assign(priors, counts, torch.zeros(0, 4)) == -1).all()


def test_atss_uses_candidates_from_every_level():
    priors = make_priors((64, 64), (8, 16, 32))  # 64 + 16 + 4 priors
    gt = torch.tensor([[8.0, 8.0, 40.0, 48.0]])
    assigned = atss_assign(priors, [64, 16, 4], gt)
    pos = torch.nonzero(assigned >= 0).flatten()
    assert len(pos) > 0
    # positives come from the level whose 5*stride anchors fit the 32x40 box best (stride 8: 40 px)
    assert (priors[pos, 2] == 8).all()
    centres = priors[pos, :2]
    assert ((centres > gt[0, :2]) & (centres < gt[0, 2:])).all()


def _dynamic_case():
    priors = torch.tensor([[4.0, 4.0, 8.0], [12.0, 4.0, 8.0], [4.0, 12.0, 8.0], [28.0, 28.0, 8.0]])
    gt = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    labels = torch.tensor([1])
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0],  # exact: IoU 1
                          [8.0, 0.0, 16.0, 8.0],   # IoU 0.25
                          [0.0, 8.0, 4.0, 16.0],   # IoU 0.125
                          [0.0, 0.0, 16.0, 16.0]])  # exact but its centre is outside the box
    return priors, gt, labels, boxes


def test_dynamic_assigner_takes_k_cheapest_priors_inside_the_box():
    priors, gt, labels, boxes = _dynamic_case()
    logits = torch.zeros(4, 2)
    # dynamic k = int(1 + 0.25 + 0.125) = 1: only the cheapest prior (the exact box) is positive
    assigned = dynamic_soft_label_assign(priors, logits, boxes, gt, labels)
    assert assigned.tolist() == [0, -1, -1, -1]
    # two more good boxes raise the IoU sum, so k = 2: the two cheapest, never the prior outside
    boxes2 = boxes.clone()
    boxes2[1] = torch.tensor([0.0, 0.0, 16.0, 15.0])
    assigned = dynamic_soft_label_assign(priors, logits, boxes2, gt, labels)
    assert assigned.tolist() == [0, 0, -1, -1]


def test_dynamic_assigner_class_cost_and_conflicts():
    priors, gt, labels, boxes = _dynamic_case()
    boxes = torch.tensor([[0.0, 0.0, 16.0, 15.0], [0.0, 0.0, 16.0, 15.0], [0.0, 8.0, 4.0, 16.0], [0, 0, 1, 1.0]])
    logits = torch.zeros(4, 2)
    logits[1, 1] = 5.0  # equal boxes: the prior that already scores the right class is cheaper
    k1_case = dynamic_soft_label_assign(priors, logits, boxes, gt, labels, topk=1)
    assert k1_case.tolist() == [-1, 0, -1, -1]
    # a prior inside two boxes goes to the one it costs less for
    gts = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 20.0, 20.0]])
    pred = torch.tensor([[0.0, 0.0, 20.0, 20.0]] + [[0.0, 0.0, 1.0, 1.0]] * 3)
    got = dynamic_soft_label_assign(priors, torch.zeros(4, 2), pred, gts, torch.tensor([0, 0]), topk=1)
    assert got[0].item() == 1
    assert (dynamic_soft_label_assign(priors, logits, boxes, torch.zeros(0, 4), torch.zeros(0)) == -1).all()
