"""A tiny synthetic detection set written as Pascal VOC: coloured shapes on noise.

For smoke tests and demos (no download): class ``box`` is a filled red rectangle, class
``disc`` a filled green ellipse, on a uniform-noise background. ``write_synthetic_voc``
writes ``Annotations/*.xml`` + ``JPEGImages/*.png`` (+ ``ImageSets/Main`` when ``val`` > 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SYNTHETIC_CLASSES = ("box", "disc")
_COLOURS = {"box": (230, 40, 40), "disc": (40, 220, 60)}


def _objects(rng: np.random.Generator, size: int, max_objects: int) -> list[tuple[str, list[int]]]:
    objects: list[tuple[str, list[int]]] = []
    for _ in range(100):  # rejection-sample non-overlapping shapes
        if len(objects) >= rng.integers(1, max_objects + 1):
            break
        w, h = (int(v) for v in rng.integers(size // 5, size // 2, 2))
        x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        box = [x, y, x + w, y + h]
        if all(box[2] <= o[0] or o[2] <= box[0] or box[3] <= o[1] or o[3] <= box[1] for _, o in objects):
            objects.append((SYNTHETIC_CLASSES[int(rng.integers(0, 2))], box))
    return objects


def _xml(name: str, size: int, objects: list[tuple[str, list[int]]]) -> str:
    objs = "".join(
        f"<object><name>{cls}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for cls, b in objects)
    return (f"<annotation><filename>{name}.png</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def write_synthetic_voc(root: str | Path, n: int = 8, size: int = 128, seed: int = 0, max_objects: int = 2,
                        val: int = 0) -> Path:
    """Write ``n`` images (the last ``val`` of them as the val split) and return ``root``."""
    root = Path(root)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        name = f"img{i:04d}"
        image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        objects = _objects(rng, size, max_objects)
        for cls, box in objects:
            shape = draw.rectangle if cls == "box" else draw.ellipse
            shape([box[0], box[1], box[2] - 1, box[3] - 1], fill=_COLOURS[cls])
        image.save(root / "JPEGImages" / f"{name}.png")
        (root / "Annotations" / f"{name}.xml").write_text(_xml(name, size, objects))
        names.append(name)
    if val:
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        (main / "train.txt").write_text("\n".join(names[: n - val]) + "\n")
        (main / "val.txt").write_text("\n".join(names[n - val:]) + "\n")
    return root
