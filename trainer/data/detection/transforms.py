"""Detection transforms in numpy + PIL: letterbox, training augmentation, batch collation.

Geometry is resize-then-paste (PIL's antialiased resize, then an integer
offset), never a free affine warp: boxes follow the pixels exactly and
shrunken images do not alias. Every random choice comes from the
``numpy.random.Generator`` the caller passes, so a seeded run augments the
same way each time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from edgesmith.errors import ConfigError

from .types import DetectionSample


@dataclass(frozen=True)
class LetterboxInfo:
    """How :func:`letterbox` mapped an image: ``x' = x * scale + pad_x`` (same for y); ``orig_hw`` (H, W)."""

    scale: float
    pad_x: int
    pad_y: int
    orig_hw: tuple[int, int]


def _check_size(size) -> tuple[int, int]:
    ok = (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size))
    if not ok:
        raise ConfigError(f"size must be (height, width) with two positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _resize(image: np.ndarray, nh: int, nw: int) -> np.ndarray:
    if image.shape[:2] == (nh, nw):
        return image
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))


def _paste(canvas: np.ndarray, image: np.ndarray, ox: int, oy: int) -> None:
    """Copy ``image`` into ``canvas`` with its top-left corner at (ox, oy), cropping whatever falls outside."""
    ch, cw = canvas.shape[:2]
    ih, iw = image.shape[:2]
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + iw, cw), min(oy + ih, ch)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = image[y0 - oy:y1 - oy, x0 - ox:x1 - ox]


def letterbox(image: np.ndarray, boxes: np.ndarray | None, size: tuple[int, int],
              pad_value: int = 114) -> tuple[np.ndarray, np.ndarray, LetterboxInfo]:
    """Resize ``image`` (uint8 [H, W, 3]) to fit ``size`` (h, w) keeping its aspect, centred on a
    ``pad_value`` canvas; ``boxes`` (xyxy pixels, or None) are mapped the same way.

    Returns (image uint8 [h, w, 3], boxes float32 [N, 4], info for :func:`undo_letterbox`).
    """
    h, w = _check_size(size)
    H, W = image.shape[:2]
    scale = min(h / H, w / W)
    nh, nw = max(1, min(h, round(H * scale))), max(1, min(w, round(W * scale)))
    pad_x, pad_y = (w - nw) // 2, (h - nh) // 2
    out = np.full((h, w, 3), pad_value, dtype=np.uint8)
    _paste(out, _resize(image, nh, nw), pad_x, pad_y)
    info = LetterboxInfo(float(scale), int(pad_x), int(pad_y), (int(H), int(W)))
    if boxes is None:
        return out, np.zeros((0, 4), dtype=np.float32), info
    mapped = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale + [pad_x, pad_y, pad_x, pad_y]
    return out, mapped.astype(np.float32), info


def undo_letterbox(boxes: np.ndarray, info: LetterboxInfo, clip: bool = True) -> np.ndarray:
    """Map xyxy boxes from the letterboxed image back to the original image (clipped to it by default)."""
    pad = np.array([info.pad_x, info.pad_y, info.pad_x, info.pad_y], dtype=np.float64)
    out = (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) - pad) / info.scale
    if clip:
        H, W = info.orig_hw
        out = np.clip(out, 0.0, [W, H, W, H])
    return out.astype(np.float32)


def hsv_jitter(image: np.ndarray, gains: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Random colour jitter: hue shifted by up to ``gains[0]`` of the colour circle, saturation and
    value multiplied by a factor in [1 - gain, 1 + gain] (YOLO's hsv_h/hsv_s/hsv_v)."""
    dh, ds, dv = rng.uniform(-1.0, 1.0, 3) * np.asarray(gains, dtype=np.float64)
    if dh == 0 and ds == 0 and dv == 0:
        return image
    x = np.arange(256, dtype=np.float64)
    lut_h = np.round(x + dh * 256) % 256
    lut_s = np.clip(np.round(x * (1 + ds)), 0, 255)
    lut_v = np.clip(np.round(x * (1 + dv)), 0, 255)
    hsv = np.asarray(Image.fromarray(image).convert("HSV")).copy()
    for c, lut in enumerate((lut_h, lut_s, lut_v)):
        hsv[..., c] = lut.astype(np.uint8)[hsv[..., c]]
    return np.asarray(Image.fromarray(hsv, mode="HSV").convert("RGB"))


def clip_and_filter(boxes: np.ndarray, labels: np.ndarray, h: int, w: int,
                    min_size: float, min_visible: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the image; drop those narrower or shorter than ``min_size`` pixels, or keeping
    less than ``min_visible`` of their area (a sliver of an object is a misleading target)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    before = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    boxes = np.clip(boxes, 0.0, [w, h, w, h])
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (bw >= min_size) & (bh >= min_size) & (bw * bh >= min_visible * before)
    return boxes[keep].astype(np.float32), np.asarray(labels, dtype=np.int64)[keep]


class SamplePool(Protocol):
    """Where mosaic draws its extra images from: a DetectionSplit fits."""

    def __len__(self) -> int: ...

    def load(self, i: int) -> DetectionSample: ...


class DetectionAugment:
    """Training augmentation to a fixed ``size`` (h, w): optional 4-image mosaic, HSV colour jitter,
    random scale around the letterbox fit, random translation and horizontal flip.

    ``scale`` bounds the zoom relative to the letterbox fit, ``translate`` the
    shift as a fraction of the output size, ``hsv`` the colour gains (see
    :func:`hsv_jitter`), ``flip`` and ``mosaic`` probabilities. Crowd regions
    are dropped (a detector cannot learn one box per crowd); boxes are clipped
    and those under ``min_size`` px on a side or with less than ``min_visible``
    of their area left in the output dropped. ``seed`` only seeds
    the generator used when a call passes no ``rng``.
    """

    def __init__(self, size: tuple[int, int] = (320, 320), *, flip: float = 0.5,
                 scale: tuple[float, float] = (0.6, 1.4), translate: float = 0.2,
                 hsv: tuple[float, float, float] = (0.015, 0.7, 0.4), mosaic: float = 0.0,
                 pad_value: int = 114, min_size: float = 2.0, min_visible: float = 0.1,
                 seed: int | None = None) -> None:
        self.size = _check_size(size)
        for name, p in (("flip", flip), ("mosaic", mosaic), ("min_visible", min_visible)):
            if not 0.0 <= float(p) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {p}")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ConfigError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
        if not 0.0 <= float(translate) < 1.0:
            raise ConfigError(f"translate must be in [0, 1), got {translate}")
        if len(hsv) != 3 or any(not 0.0 <= float(g) <= 1.0 for g in hsv):
            raise ConfigError(f"hsv must be three gains in [0, 1] (hue, saturation, value), got {hsv!r}")
        self.flip, self.scale, self.translate = float(flip), (float(scale[0]), float(scale[1])), float(translate)
        self.hsv, self.mosaic = tuple(float(g) for g in hsv), float(mosaic)
        self.pad_value, self.min_size, self.min_visible = int(pad_value), float(min_size), float(min_visible)
        self._rng = np.random.default_rng(seed)

    def __call__(self, sample: DetectionSample, rng: np.random.Generator | None = None,
                 pool: SamplePool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Augment one sample: (image uint8 [h, w, 3], boxes float32 [N, 4] xyxy, labels int64 [N]).

        ``pool`` (e.g. the training split) supplies the 3 extra images of a
        mosaic; it is required when ``mosaic > 0``.
        """
        rng = self._rng if rng is None else rng
        if self.mosaic > 0 and pool is None:
            raise ConfigError("DetectionAugment(mosaic > 0) needs pool= (the training split) to draw "
                              "mosaic images from")
        if self.mosaic > 0 and rng.random() < self.mosaic:
            others = [pool.load(int(i)) for i in rng.integers(0, len(pool), 3)]
            image, boxes, labels = self._mosaic([sample] + others, rng)
            return self._place(image, boxes, labels, rng, jitter=False)  # tiles were jittered one by one
        return self._place(*_targets(sample), rng, jitter=True)

    def _mosaic(self, samples: list[DetectionSample], rng: np.random.Generator):
        """Four images fitted to (h, w) each, around a random centre of a (2h, 2w) canvas."""
        h, w = self.size
        canvas = np.full((2 * h, 2 * w, 3), self.pad_value, dtype=np.uint8)
        xc, yc = int(rng.uniform(0.5 * w, 1.5 * w)), int(rng.uniform(0.5 * h, 1.5 * h))
        all_boxes, all_labels = [], []
        for k, sample in enumerate(samples):
            image, boxes, labels = _targets(sample)
            H, W = image.shape[:2]
            r = min(h / H, w / W)
            nh, nw = max(1, round(H * r)), max(1, round(W * r))
            ox = xc - nw if k in (0, 2) else xc  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
            oy = yc - nh if k in (0, 1) else yc
            _paste(canvas, hsv_jitter(_resize(image, nh, nw), self.hsv, rng), ox, oy)
            boxes = boxes * [nw / W, nh / H, nw / W, nh / H] + [ox, oy, ox, oy]
            # Clip to the visible part of this tile, so no box reaches into a neighbour.
            lo = [max(ox, 0), max(oy, 0)] * 2
            hi = [min(ox + nw, 2 * w), min(oy + nh, 2 * h)] * 2
            all_boxes.append(np.clip(boxes, lo, hi))
            all_labels.append(labels)
        return canvas, np.concatenate(all_boxes).reshape(-1, 4), np.concatenate(all_labels).astype(np.int64)

    def _place(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
               jitter: bool):
        """Flip, scale and shift ``image`` onto the output canvas, carrying the boxes along.

        Colour jitter (when ``jitter``) runs on the resized image: cheaper than on a
        full-size photo, and the padding keeps ``pad_value``."""
        h, w = self.size
        H, W = image.shape[:2]
        flip = rng.random() < self.flip
        s = min(h / H, w / W) * rng.uniform(*self.scale)
        nh, nw = max(1, round(H * s)), max(1, round(W * s))
        ox = round((w - nw) / 2 + rng.uniform(-self.translate, self.translate) * w)
        oy = round((h - nh) / 2 + rng.uniform(-self.translate, self.translate) * h)
        resized = _resize(image, nh, nw)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * [nw / W, nh / H, nw / W, nh / H]
        if flip:  # after the resize: flipping the small image is cheaper
            resized = resized[:, ::-1]
            boxes = np.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], axis=1)
        out = np.full((h, w, 3), self.pad_value, dtype=np.uint8)
        _paste(out, hsv_jitter(np.ascontiguousarray(resized), self.hsv, rng) if jitter else resized, ox, oy)
        boxes = boxes + [ox, oy, ox, oy]
        boxes, labels = clip_and_filter(boxes, labels, h, w, self.min_size, self.min_visible)
        return out, boxes, labels


def _targets(sample: DetectionSample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image and its non-crowd boxes and labels (a crowd region is not one object to learn)."""
    keep = ~np.asarray(sample.iscrowd, dtype=bool)
    return sample.image, np.asarray(sample.boxes, dtype=np.float64)[keep], np.asarray(sample.labels)[keep]


def collate(items: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack (image, boxes, labels) items of one size into images uint8 [B, H, W, 3], boxes float32
    [B, M, 4] and labels int64 [B, M], where M is the most boxes in any item; padding is -1."""
    if not items:
        raise ValueError("collate needs at least one item")
    shapes = {np.shape(img) for img, _, _ in items}
    if len(shapes) != 1:
        raise ValueError(f"collate needs images of one size, got {sorted(shapes)}")
    m = max(len(labels) for _, _, labels in items)
    images = np.stack([np.asarray(img, dtype=np.uint8) for img, _, _ in items])
    boxes = np.full((len(items), m, 4), -1.0, dtype=np.float32)
    labels = np.full((len(items), m), -1, dtype=np.int64)
    for i, (_, b, l) in enumerate(items):
        boxes[i, :len(l)] = np.asarray(b, dtype=np.float32).reshape(-1, 4)
        labels[i, :len(l)] = l
    return images, boxes, labels
