"""The value types every detection reader returns.

A reader turns annotation files into :class:`DetectionRecord` values (paths and
boxes, no pixels); a :class:`DetectionSplit` decodes one image on ``load(i)``,
so opening COCO-size data costs only the annotation parse. Boxes are float32
``[N, 4]`` xyxy in pixels of the stored image (no EXIF rotation is applied:
VOC, COCO and YOLO tools annotate the stored pixel grid). Like the
classification types, the dataclasses compare by identity (``eq=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from edgesmith.errors import DataError

DETECTION_FORMATS = ("voc", "coco", "yolo")
# Annotation tools disagree about pixel edges (VOC is 1-based, so xmax == width + 1 is common);
# a box this far outside the image is clipped, anything further is a DataError.
EDGE_TOLERANCE_PX = 1.0
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True, eq=False)
class DetectionSample:
    """One decoded image and its objects.

    ``image`` uint8 [H, W, 3] RGB; ``boxes`` float32 [N, 4] xyxy pixels;
    ``labels`` int64 [N] class indices; ``iscrowd`` bool [N] (COCO crowd
    regions: matched but neither rewarded nor penalised by the metric);
    ``image_id`` the image's name in its dataset (file stem or COCO id).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    image_id: str
    iscrowd: np.ndarray


@dataclass(frozen=True, eq=False)
class DetectionRecord:
    """One image's annotation before decoding: where it is and what is in it.

    ``boxes`` are xyxy pixels, or normalised to [0, 1] when ``normalized``
    (YOLO labels: the image size is only known once it is read). ``size`` is
    the (H, W) the annotation declares, checked against the decoded image;
    ``where`` names the annotation file for error messages.
    """

    path: str
    image_id: str
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    size: tuple[int, int] | None
    where: str
    normalized: bool = False

    def __post_init__(self) -> None:
        n = self.labels.shape[0] if self.labels.ndim == 1 else -1
        if (self.boxes.dtype != np.float32 or self.boxes.shape != (n, 4) or self.labels.dtype != np.int64
                or self.iscrowd.dtype != np.bool_ or self.iscrowd.shape != (n,)):
            # Readers build records; a mismatch is a reader bug, not bad user input.
            raise ValueError(f"bad DetectionRecord arrays for {self.where}: boxes {self.boxes.dtype} "
                             f"{self.boxes.shape}, labels {self.labels.dtype} {self.labels.shape}, "
                             f"iscrowd {self.iscrowd.dtype} {self.iscrowd.shape}")


@dataclass(frozen=True, eq=False)
class DetectionSplit:
    """A split of annotated images, decoded one at a time by :meth:`load`."""

    records: tuple[DetectionRecord, ...]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_boxes(self) -> int:
        """Objects in the split, crowd regions included."""
        return int(sum(r.labels.shape[0] for r in self.records))

    def load(self, i: int) -> DetectionSample:
        """Decode image ``i`` to RGB uint8 and return it with its boxes in pixels.

        DataError when the file cannot be decoded or its size differs from the
        size its annotation declares (the boxes would then point elsewhere).
        """
        rec = self.records[i]
        image = _decode_rgb(rec.path)
        h, w = image.shape[:2]
        if rec.size is not None and rec.size != (h, w):
            raise DataError(
                f"{rec.where}: the annotation gives image size {rec.size[1]}x{rec.size[0]} (WxH) but {rec.path} is "
                f"{w}x{h}; fix the size in the annotation or replace the image"
            )
        boxes = rec.boxes * np.array([w, h, w, h], dtype=np.float32) if rec.normalized else rec.boxes.copy()
        return DetectionSample(image, boxes.astype(np.float32), rec.labels.copy(), rec.image_id, rec.iscrowd.copy())


@dataclass(frozen=True, eq=False)
class DetectionDataset:
    """An opened detection dataset: class names, train and val splits, where they came from.

    ``val`` is the dataset's own val split or, when ``val_is_carved``, a seeded
    carve-out of train. ``content_hash`` is sha256 over the annotation bytes,
    the image files' paths and sizes, and the carve options.
    """

    classes: list[str]
    train: DetectionSplit
    val: DetectionSplit
    source: str
    content_hash: str
    format: str = "voc"
    val_is_carved: bool = False

    def __post_init__(self) -> None:
        if self.format not in DETECTION_FORMATS:
            raise ValueError(f"unknown detection format {self.format!r}; expected one of {DETECTION_FORMATS}")


def _decode_rgb(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist (it was there when the dataset was opened); "
                        "restore it or open the dataset again") from None
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot decode image {path}: {exc}; delete or replace the file") from None


def check_box(box: tuple[float, float, float, float], width: float, height: float,
              what: str) -> tuple[float, float, float, float]:
    """Validate one xyxy box against an image of ``width`` x ``height`` and return it clipped.

    ``what`` names the file and the line/object for the error message. Boxes
    may stray :data:`EDGE_TOLERANCE_PX` outside the image (pixel-edge
    conventions differ between tools); ``width``/``height`` of 1.0 check
    normalised boxes, with the tolerance scaled to a 1000-px image.
    """
    x1, y1, x2, y2 = box
    if not all(np.isfinite(v) for v in box):
        raise DataError(f"{what}: box {list(box)} has a non-finite coordinate; fix or delete this object")
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{what}: box (x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g}) is empty or inverted; "
                        "expected x2 > x1 and y2 > y1; fix or delete this object")
    tol = EDGE_TOLERANCE_PX if width > 1.0 else EDGE_TOLERANCE_PX / 1000.0
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        raise DataError(f"{what}: box (x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g}) lies outside the image "
                        f"(width {width:g}, height {height:g}); fix the coordinates or delete this object")
    x1, y1 = max(x1, 0.0), max(y1, 0.0)
    x2, y2 = min(x2, float(width)), min(y2, float(height))
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{what}: box lies on the image border with no area inside the image; delete this object")
    return x1, y1, x2, y2


def make_record(path: str, image_id: str, boxes: list, labels: list, iscrowd: list | None,
                size: tuple[int, int] | None, where: str, normalized: bool = False) -> DetectionRecord:
    """Build a record from Python lists (a reader's parse result)."""
    n = len(labels)
    return DetectionRecord(
        path=path, image_id=image_id,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(n, 4),
        labels=np.asarray(labels, dtype=np.int64).reshape(n),
        iscrowd=np.asarray(iscrowd if iscrowd is not None else [False] * n, dtype=bool).reshape(n),
        size=size, where=where, normalized=normalized,
    )


@dataclass(frozen=True, eq=False)
class ReaderResult:
    """What a format reader found: classes, records per split (``val`` None: carve it) and the
    annotation files it read, as (path relative to the dataset root, bytes) for the content hash."""

    format: str
    classes: list[str]
    train: list[DetectionRecord]
    val: list[DetectionRecord] | None
    annotation_files: list[tuple[str, bytes]]


def probe_image_size(path: str, what: str) -> tuple[int, int]:
    """(H, W) of an image file from its header (PIL opens lazily); DataError naming ``what`` if unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"{what}: image file {path} does not exist; add the image or delete its annotation") from None
    except _DECODE_ERRORS as exc:
        raise DataError(f"{what}: cannot read image {path}: {exc}; delete or replace the file") from None
    return h, w
