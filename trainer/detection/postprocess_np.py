"""Detection post-processing in numpy: what runners use on the raw outputs of ``model.onnx``.

Imports numpy only (no torch, nothing from ``trainer``) so a device-side runner can use it.
It mirrors :mod:`trainer.detection.postprocess` step for step:

1. priors ``(cx, cy, stride)`` at cell centres ``(i + 0.5) * stride``, level by level, row-major;
2. box sides = expected value of softmax over ``0..reg_max`` times the stride;
3. class scores = sigmoid(logits); keep (prior, class) pairs with score > ``score_thr``;
   at most ``pre_nms_topk`` of them, highest first;
4. clip to the input, class-aware greedy NMS at ``iou_thr`` (boxes of different classes never
   suppress each other), keep the ``max_det`` best;
5. optionally undo the letterbox: ``(box - pad) / scale`` clipped to the original image.

Ties in score are broken by the lower (prior, class) index in both implementations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PostprocessParams:
    """Everything needed to turn raw head outputs into detections (saved as postprocess.json)."""

    num_classes: int
    strides: tuple[int, ...]
    reg_max: int
    input_hw: tuple[int, int]
    score_thr: float = 0.05
    iou_thr: float = 0.6
    max_det: int = 100
    pre_nms_topk: int = 1000

    def to_dict(self) -> dict:
        return {"num_classes": self.num_classes, "strides": list(self.strides), "reg_max": self.reg_max,
                "input_hw": list(self.input_hw), "score_thr": self.score_thr, "iou_thr": self.iou_thr,
                "max_det": self.max_det, "pre_nms_topk": self.pre_nms_topk}

    @classmethod
    def from_dict(cls, d: dict) -> "PostprocessParams":
        return cls(int(d["num_classes"]), tuple(int(s) for s in d["strides"]), int(d["reg_max"]),
                   (int(d["input_hw"][0]), int(d["input_hw"][1])), float(d["score_thr"]), float(d["iou_thr"]),
                   int(d["max_det"]), int(d["pre_nms_topk"]))


def make_priors_np(image_hw: tuple[int, int], strides: tuple[int, ...]) -> np.ndarray:
    """Prior points [N, 3] = (cx, cy, stride), float32; same order as the torch version."""
    h, w = image_hw
    out = []
    for s in strides:
        fh, fw = -(-h // s), -(-w // s)
        ys, xs = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
        cx = (xs.reshape(-1).astype(np.float32) + 0.5) * s
        cy = (ys.reshape(-1).astype(np.float32) + 0.5) * s
        out.append(np.stack([cx, cy, np.full_like(cx, s)], axis=-1))
    return np.concatenate(out).astype(np.float32)


def flatten_outputs_np(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-level NCHW outputs ``[cls_l, reg_l, ...]`` -> cls [B, N, C], reg [B, N, 4*(R+1)]."""
    cls = [c.reshape(c.shape[0], c.shape[1], -1).transpose(0, 2, 1) for c in outputs[0::2]]
    reg = [r.reshape(r.shape[0], r.shape[1], -1).transpose(0, 2, 1) for r in outputs[1::2]]
    return np.concatenate(cls, axis=1), np.concatenate(reg, axis=1)


def decode_boxes_np(reg: np.ndarray, priors: np.ndarray, reg_max: int) -> np.ndarray:
    """Boxes [N, 4] from distribution logits [N, 4*(R+1)] and priors [N, 3]."""
    logits = reg.reshape(reg.shape[0], 4, reg_max + 1).astype(np.float32)
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    dist = (probs @ np.arange(reg_max + 1, dtype=np.float32)) * priors[:, 2:3]
    return np.concatenate([priors[:, :2] - dist[:, :2], priors[:, :2] + dist[:, 2:]], axis=1)


def nms_np(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> np.ndarray:
    """Greedy NMS: indices of kept boxes, highest score first (ties: lower index first)."""
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order].astype(np.float32)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        rest = slice(i + 1, None)
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.clip(rb - lt, 0, None).prod(axis=1)
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-7)
        suppressed[rest] |= iou > iou_thr
    return np.asarray(keep, dtype=np.int64)


def postprocess_np(outputs: list[np.ndarray], params: PostprocessParams) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image ``(boxes [K, 4] xyxy in input pixels, scores [K], labels [K])``, best first."""
    cls, reg = flatten_outputs_np(outputs)
    priors = make_priors_np(params.input_hw, params.strides)
    if cls.shape[1] != priors.shape[0] or cls.shape[2] != params.num_classes:
        raise ValueError(f"outputs hold {cls.shape[1]} priors x {cls.shape[2]} classes; a {params.input_hw} input "
                         f"with strides {params.strides} has {priors.shape[0]} priors and params say "
                         f"{params.num_classes} classes")
    h, w = params.input_hw
    results = []
    for i in range(cls.shape[0]):
        scores = 1.0 / (1.0 + np.exp(-cls[i].astype(np.float32)))
        flat = scores.reshape(-1)
        cand = np.nonzero(flat > params.score_thr)[0]
        if len(cand) > params.pre_nms_topk:
            cand = cand[np.argsort(-flat[cand], kind="stable")[: params.pre_nms_topk]]
            cand.sort()
        prior_idx, labels = cand // params.num_classes, cand % params.num_classes
        boxes = decode_boxes_np(reg[i][prior_idx], priors[prior_idx], params.reg_max)
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        cand_scores = flat[cand]
        # class-aware NMS in one pass: shift each class to its own region of the plane
        offset = (labels.astype(np.float32) * (max(h, w) + 1))[:, None]
        keep = nms_np(boxes + offset, cand_scores, params.iou_thr)[: params.max_det]
        results.append((boxes[keep], cand_scores[keep].astype(np.float32), labels[keep].astype(np.int64)))
    return results


def undo_letterbox_np(boxes: np.ndarray, scale: float, pad_x: float, pad_y: float,
                      orig_hw: tuple[int, int]) -> np.ndarray:
    """Boxes from letterboxed-input pixels back to original-image pixels, clipped to the image."""
    h, w = orig_hw
    out = (boxes - np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)) / scale
    return np.clip(out, 0, [w, h, w, h]).astype(np.float32)
