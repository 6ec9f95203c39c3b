"""Detection post-processing in torch (training-time evaluation, ``edgesmith detect``).

Step for step the same as :mod:`trainer.detection.postprocess_np` (see its docstring), so
PyTorch and onnxruntime + numpy give the same detections. No torchvision: NMS is here.
"""

from __future__ import annotations

import torch

from trainer.detection.boxes import decode_boxes, flatten_outputs, make_priors
from trainer.detection.postprocess_np import PostprocessParams


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thr: float) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes, highest score first (ties: lower index first)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order].float()
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    over = (inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-7)) > iou_thr
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    over = over.cpu()
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


@torch.no_grad()
def postprocess(outputs: tuple[torch.Tensor, ...], params: PostprocessParams) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image ``(boxes [K, 4] xyxy in input pixels, scores [K], labels [K])``, best first."""
    cls, reg = flatten_outputs(outputs, params.num_classes, params.reg_max)
    priors = make_priors(params.input_hw, params.strides, cls.device)
    if cls.shape[1] != priors.shape[0]:
        raise ValueError(f"outputs hold {cls.shape[1]} priors; a {params.input_hw} input with strides "
                         f"{params.strides} has {priors.shape[0]}")
    h, w = params.input_hw
    limits = torch.tensor([w, h, w, h], dtype=torch.float32, device=cls.device)
    results = []
    for i in range(cls.shape[0]):
        flat = cls[i].float().sigmoid().reshape(-1)
        cand = torch.nonzero(flat > params.score_thr).squeeze(1)
        if len(cand) > params.pre_nms_topk:
            top = torch.sort(flat[cand], descending=True, stable=True).indices[: params.pre_nms_topk]
            cand = cand[top].sort().values
        prior_idx, labels = cand // params.num_classes, cand % params.num_classes
        boxes = decode_boxes(reg[i][prior_idx].float(), priors[prior_idx], params.reg_max)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        scores = flat[cand]
        offset = (labels.float() * (max(h, w) + 1))[:, None]
        keep = nms(boxes + offset, scores, params.iou_thr)[: params.max_det]
        results.append((boxes[keep], scores[keep], labels[keep]))
    return results


def undo_letterbox(boxes: torch.Tensor, scale: float, pad_x: float, pad_y: float,
                   orig_hw: tuple[int, int]) -> torch.Tensor:
    """Boxes from letterboxed-input pixels back to original-image pixels, clipped to the image."""
    h, w = orig_hw
    pad = torch.tensor([pad_x, pad_y, pad_x, pad_y], dtype=boxes.dtype, device=boxes.device)
    limits = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(((boxes - pad) / scale).clamp(min=0), limits)
