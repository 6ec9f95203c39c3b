"""Box utilities in torch: IoU and GIoU, distance <-> box encoding, the integral over a
box-side distribution, and the grid of prior points of a multi-level detector.

Boxes are ``[..., 4]`` xyxy in input pixels. A prior is ``(cx, cy, stride)`` at the centre
of its grid cell, ``((i + 0.5) * stride)``; the numpy post-processing uses the same grid.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

EPS = 1e-7


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of xyxy boxes (0 for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``a`` [N, 4] and ``b`` [M, 4] -> [N, M]."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=EPS)


def aligned_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each box in ``a`` [N, 4] with the box at the same index of ``b`` [N, 4] -> [N]."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (box_area(a) + box_area(b) - inter).clamp(min=EPS)


def aligned_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalized IoU (Rezatofighi et al. 2019) of aligned box pairs -> [N], in (-1, 1]."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (box_area(a) + box_area(b) - inter).clamp(min=EPS)
    enclose = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    return inter / union - (enclose - union) / enclose.clamp(min=EPS)


def distance_to_box(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Boxes from centre points [N, 2] and (left, top, right, bottom) distances [N, 4]."""
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)


def box_to_distance(points: torch.Tensor, boxes: torch.Tensor, max_dist: float | None = None) -> torch.Tensor:
    """(left, top, right, bottom) distances from points [N, 2] to the sides of boxes [N, 4]."""
    d = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
    return d if max_dist is None else d.clamp(min=0, max=max_dist)


def integral(reg_logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Expected value of each side's distribution over 0..reg_max: [..., 4*(R+1)] -> [..., 4]."""
    probs = F.softmax(reg_logits.reshape(*reg_logits.shape[:-1], 4, reg_max + 1).float(), dim=-1)
    project = torch.arange(reg_max + 1, dtype=probs.dtype, device=probs.device)
    return probs @ project


def make_priors(image_hw: tuple[int, int], strides: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """Prior points [N, 3] = (cx, cy, stride) for every cell of every level, level by level, row-major.

    Level sizes are ``ceil(H / s) x ceil(W / s)`` as produced by stride-2 convolutions with padding.
    """
    h, w = image_hw
    out = []
    for s in strides:
        fh, fw = -(-h // s), -(-w // s)
        ys, xs = torch.meshgrid(torch.arange(fh, device=device), torch.arange(fw, device=device), indexing="ij")
        cx = (xs.reshape(-1).float() + 0.5) * s
        cy = (ys.reshape(-1).float() + 0.5) * s
        out.append(torch.stack([cx, cy, torch.full_like(cx, float(s))], dim=-1))
    return torch.cat(out)


def flatten_outputs(outputs: tuple[torch.Tensor, ...], num_classes: int, reg_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level head outputs ``(cls_l, reg_l, ...)`` -> cls [B, N, C] and reg [B, N, 4*(R+1)] in prior order."""
    cls, reg = [], []
    for c, r in zip(outputs[0::2], outputs[1::2]):
        cls.append(c.flatten(2).transpose(1, 2))
        reg.append(r.flatten(2).transpose(1, 2))
    cls_all, reg_all = torch.cat(cls, 1), torch.cat(reg, 1)
    if cls_all.shape[-1] != num_classes or reg_all.shape[-1] != 4 * (reg_max + 1):
        raise ValueError(f"head outputs have {cls_all.shape[-1]} class and {reg_all.shape[-1]} box channels, "
                         f"expected {num_classes} and {4 * (reg_max + 1)}")
    return cls_all, reg_all


def decode_boxes(reg_logits: torch.Tensor, priors: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Boxes [..., N, 4] in pixels from distribution logits [..., N, 4*(R+1)] and priors [N, 3]."""
    dist = integral(reg_logits, reg_max) * priors[:, 2:3]
    return distance_to_box(priors[:, :2], dist)
