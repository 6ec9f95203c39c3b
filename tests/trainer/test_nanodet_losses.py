"""GFL losses and box utilities against hand-computed values."""

import math

import pytest
import torch

from trainer.detection.boxes import (aligned_giou, box_iou, box_to_distance, decode_boxes, distance_to_box, integral,
                                     make_priors)
from trainer.detection.losses import GFLLoss, distribution_focal_loss, giou_loss, quality_focal_loss

LN2 = math.log(2.0)


@pytest.fixture(autouse=True)
def one_thread():
    # On a busy 2-core machine two OpenMP threads spin-wait on each other; one is several times faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quality_focal_loss_hand_values():
    # logit 0 -> p = 0.5: BCE ln 2, modulator |t - 0.5|^2 = 0.25, for target 1 and for target 0 alike
    loss = quality_focal_loss(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(2 * 0.25 * LN2, abs=1e-6)
    # p = 0.75 against soft target 0.5: BCE = -(0.5 ln .75 + 0.5 ln .25), modulator 0.25^2
    loss = quality_focal_loss(torch.tensor([[math.log(3.0)]]), torch.tensor([0]), torch.tensor([0.5]))
    expected = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) * 0.0625
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # background prior: every class has target 0; p = 0.75 -> -ln(0.25) * 0.75^2
    loss = quality_focal_loss(torch.tensor([[math.log(3.0)]]), torch.tensor([-1]), torch.tensor([0.9]))
    assert loss.item() == pytest.approx(-math.log(0.25) * 0.5625, abs=1e-6)


def test_distribution_focal_loss_hand_values():
    # uniform over 8 bins: -ln(1/8) whatever the target's split between the two bins
    assert distribution_focal_loss(torch.zeros(1, 8), torch.tensor([2.3])).item() == pytest.approx(math.log(8), abs=1e-6)
    # p = [0.25, 0.75]; target 0.5 -> half each bin; target 0 -> all on bin 0
    logits = torch.tensor([[0.0, math.log(3.0)]] * 2)
    got = distribution_focal_loss(logits, torch.tensor([0.5, 0.0]))
    assert got[0].item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)), abs=1e-6)
    assert got[1].item() == pytest.approx(-math.log(0.25), abs=1e-6)


def test_giou_loss_hand_values():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [1, 1, 3, 4]])
    b = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [1, 1, 3, 4]])
    # overlap 1, union 7, enclosure 9: GIoU = 1/7 - 2/9; disjoint: 0 - (3 - 2)/3; identical: 1
    expected = [1 - (1 / 7 - 2 / 9), 1 + 1 / 3, 0.0]
    assert giou_loss(a, b).tolist() == pytest.approx(expected, abs=1e-6)
    assert aligned_giou(a, b)[2].item() == pytest.approx(1.0)
    assert box_iou(a[:1], b[:1]).item() == pytest.approx(1 / 7, abs=1e-6)


def test_integral_and_distance_round_trip():
    assert integral(torch.zeros(1, 32), 7).tolist() == [[3.5] * 4]
    peaked = torch.full((1, 4, 8), -1e4)
    peaked[0, torch.arange(4), torch.tensor([0, 2, 5, 7])] = 0.0
    assert integral(peaked.reshape(1, 32), 7).tolist() == [[0.0, 2.0, 5.0, 7.0]]
    points = torch.tensor([[10.0, 20.0]])
    boxes = torch.tensor([[4.0, 15.0, 30.0, 21.0]])
    d = box_to_distance(points, boxes)
    assert d.tolist() == [[6.0, 5.0, 20.0, 1.0]]
    assert distance_to_box(points, d).tolist() == boxes.tolist()


def test_priors_and_decoding():
    priors = make_priors((32, 48), (8, 16))
    assert priors.shape == (4 * 6 + 2 * 3, 3)
    assert priors[0].tolist() == [4.0, 4.0, 8.0] and priors[6].tolist() == [4.0, 12.0, 8.0]
    assert priors[24].tolist() == [8.0, 8.0, 16.0]
    # distribution peaked at 1 bin on every side: a box of +-1 stride around the prior
    reg = torch.full((1, 4, 8), -1e4)
    reg[..., 1] = 0.0
    box = decode_boxes(reg.reshape(1, 32), priors[24:25], 7)
    assert box.tolist() == [[-8.0, -8.0, 24.0, 24.0]]


@pytest.mark.parametrize("assigner", ["atss", "dynamic"])
def test_gfl_loss_trains_towards_a_box_and_handles_empty_images(assigner):
    torch.manual_seed(0)
    strides, reg_max, hw = (8, 16), 7, (32, 32)
    n = 16 + 4
    cls = torch.nn.Parameter(torch.full((2, 1, n), -4.0))
    reg = torch.nn.Parameter(torch.zeros(2, 32, n))
    # ATSS positives need the box to match the 5*stride anchors of one level better than the other's
    gt_boxes = torch.tensor([[[0.0, 2.0, 30.0, 32.0]], [[-1.0, -1, -1, -1]]])
    gt_labels = torch.tensor([[0], [-1]])  # the second image has no objects
    loss_fn = GFLLoss(1, strides, reg_max, assigner)

    def outputs():
        return (cls[..., :16].reshape(2, 1, 4, 4), reg[..., :16].reshape(2, 32, 4, 4),
                cls[..., 16:].reshape(2, 1, 2, 2), reg[..., 16:].reshape(2, 32, 2, 2))

    opt = torch.optim.Adam([cls, reg], lr=0.1)
    first = None
    for _ in range(60):
        loss, parts = loss_fn(outputs(), gt_boxes, gt_labels, hw)
        first = first if first is not None else (loss.item(), parts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first[1]["num_pos"] >= 1
    assert loss.item() < 0.5 * first[0]
    assert parts["giou"] < first[1]["giou"]
    # nothing learned on the empty image is positive: all its scores fall
    assert cls[1].sigmoid().max().item() < 0.02


def test_gfl_loss_without_objects_is_finite_with_zero_box_terms():
    loss_fn = GFLLoss(2, (8,), 7, "atss")
    outs = (torch.zeros(1, 2, 2, 2, requires_grad=True), torch.zeros(1, 32, 2, 2, requires_grad=True))
    loss, parts = loss_fn(outs, torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long), (16, 16))
    loss.backward()
    assert parts["num_pos"] == 0 and parts["giou"] == 0 and parts["dfl"] == 0
    # QFL of 8 logits at 0 with target 0: 8 * ln2 * 0.25, normalised by max(num_pos, 1)
    assert loss.item() == pytest.approx(8 * LN2 * 0.25, abs=1e-5)
