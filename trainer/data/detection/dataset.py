"""``open_detection_dataset``: detect the annotation format at a path, read it, carve val if needed.

Detection order: COCO (``instances_*.json``), YOLO (``data.yaml`` or
``classes.txt`` with ``images/`` + ``labels/``), Pascal VOC (XML files).
Opening parses every annotation and checks every image file exists; pixels
are decoded later, one image per :meth:`DetectionSplit.load`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgesmith.errors import DataError

from ..cache import ContentHasher
from ..split import check_val_fraction
from . import coco, voc, yolo
from .types import DetectionDataset, DetectionRecord, DetectionSplit, ReaderResult

SUPPORTED_LAYOUTS = """supported detection layouts:
  - Pascal VOC: Annotations/*.xml + JPEGImages/ (optional ImageSets/Main/train.txt + val.txt), or
    annotations/*.xml + images/, or a flat folder of images each with a same-named .xml
  - COCO: annotations/instances_<split>.json + images in images/<split>/, <split>/ or images/, or
    train/_annotations.coco.json (+ valid/) with the images beside it (Roboflow)
  - YOLO: data.yaml (names:) or classes.txt, images/[train|val/]*.jpg + labels/[train|val/]*.txt
    with one 'class cx cy w h' line (normalised) per object"""


def open_detection_dataset(path: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0) -> DetectionDataset:
    """Open the VOC, COCO or YOLO detection dataset at ``path`` (see :data:`SUPPORTED_LAYOUTS`).

    When the data has no val split of its own, ``val_fraction`` of the images
    (chosen by ``seed``) become val. DataError names the file and the
    line / object / annotation id of any bad annotation.
    """
    val_fraction = check_val_fraction(val_fraction)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise DataError(f"seed must be an integer, got {seed!r}")
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is a file, not a folder"
        raise DataError(f"detection dataset path {root} {what}; {SUPPORTED_LAYOUTS}")

    result = _read(root)
    if not result.classes:
        raise DataError(f"detection dataset {root} has no objects in any annotation, so there are no classes; "
                        "annotate some objects or add a class list")
    if not result.train:
        raise DataError(f"detection dataset {root} has an empty train split; add images to it")
    train, val = result.train, result.val
    carved = val is None
    if carved:
        train, val = carve_val(train, val_fraction, int(seed), root)
    options = {"val_fraction": val_fraction, "seed": int(seed)} if carved else {}
    key = _content_hash(result, root, options)
    return DetectionDataset(list(result.classes), DetectionSplit(tuple(train)), DetectionSplit(tuple(val)),
                            os.fspath(path), key, result.format, carved)


def _read(root: Path) -> ReaderResult:
    layout = coco.find_layout(root)
    if layout is not None:
        return coco.read(layout)
    layout = yolo.find_layout(root)
    if layout is not None:
        return yolo.read(layout)
    layout = voc.find_layout(root)
    if layout is not None:
        return voc.read(layout)
    entries = sorted(os.listdir(root))
    shown = ", ".join(e + ("/" if (root / e).is_dir() else "") for e in entries[:10])
    shown += ", ..." if len(entries) > 10 else ""
    raise DataError(f"no detection dataset found in {root} (it holds {shown or 'nothing'}); {SUPPORTED_LAYOUTS}")


def carve_val(records: list[DetectionRecord], val_fraction: float, seed: int,
              root: Path) -> tuple[list[DetectionRecord], list[DetectionRecord]]:
    """Split records into (train, val): ``round(n * val_fraction)`` images, at least 1 on each side,
    picked by ``seed``; both keep the original order."""
    n = len(records)
    if n < 2:
        raise DataError(f"cannot carve a validation split from {root}: it has {n} image(s); "
                        "add images or provide a val split")
    k = min(max(int(round(n * val_fraction)), 1), n - 1)
    val_idx = set(np.random.default_rng(seed).permutation(n)[:k].tolist())
    return ([r for i, r in enumerate(records) if i not in val_idx],
            [r for i, r in enumerate(records) if i in val_idx])


def _content_hash(result: ReaderResult, root: Path, options: dict) -> str:
    """sha256 over annotation bytes and each image's relative path and byte size.

    Sizes rather than image bytes: hashing every pixel of a COCO-size set would
    take minutes on each open; sizes rather than mtimes: a copied dataset keeps its hash.
    Stat-ing each image also finds missing image files before training starts.
    """
    hasher = ContentHasher(f"detection-{result.format}")
    for rel, data in sorted(result.annotation_files):
        hasher.add_bytes(rel, data)
    base = os.path.abspath(root)
    val = result.val or []
    entries = sorted({(os.path.relpath(r.path, base), r.path, r.where) for r in list(result.train) + list(val)})
    for rel, path, where in entries:
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise DataError(f"{where}: image file {path} cannot be read: {exc.strerror or exc}; "
                            "add the image or delete its annotation") from None
        hasher.add_bytes("image:" + Path(rel).as_posix(), str(size).encode())
    return hasher.hexdigest(options)
