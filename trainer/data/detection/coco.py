"""COCO JSON: ``annotations/instances_<split>.json`` plus an image folder.

Each JSON file is one split; a name containing ``train`` is the train split
and one containing ``val`` (or ``test``) the val split; a lone file is train
and val is carved. Images are looked up, per file, in ``images/<split>/``,
``<split>/``, ``images/`` and the root, in that order (``file_name`` may hold
subfolders). Roboflow's COCO export (``train/_annotations.coco.json`` with the
images beside it, val in ``valid/``) is read too. Classes are the categories in id order (COCO's ids 1..90 with
gaps become indices 0..79). Crowd annotations (``iscrowd: 1``) are kept with
``iscrowd`` set: the metric ignores detections matched to them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from edgesmith.errors import DataError

from .types import DetectionRecord, ReaderResult, check_box, make_record


@dataclass(frozen=True)
class CocoLayout:
    """The COCO JSON files at a root: the train file and, when there is one, the val file."""

    root: Path
    train: Path
    val: Path | None


def find_layout(root: Path) -> CocoLayout | None:
    """The COCO layout at ``root``, or None when no ``instances_*.json`` is there."""
    found = []
    for folder in (root / "annotations", root):
        if folder.is_dir():
            found += sorted(p for p in folder.glob("instances_*.json") if p.is_file())
    if not found:
        return _find_roboflow(root)
    if len(found) == 1:
        return CocoLayout(root, found[0], None)
    train = [p for p in found if "train" in p.stem.lower()]
    val = [p for p in found if "val" in p.stem.lower()] or [p for p in found if "test" in p.stem.lower()]
    if len(train) != 1 or len(val) != 1:
        names = ", ".join(p.relative_to(root).as_posix() for p in found)
        raise DataError(f"COCO dataset {root} has several annotation files ({names}); expected one whose name "
                        "contains 'train' and one containing 'val' (e.g. instances_train2017.json, "
                        "instances_val2017.json)")
    return CocoLayout(root, train[0], val[0])


ROBOFLOW_NAME = "_annotations.coco.json"


def _find_roboflow(root: Path) -> CocoLayout | None:
    train = root / "train" / ROBOFLOW_NAME
    if not train.is_file():
        return None
    val = next((root / d / ROBOFLOW_NAME for d in ("valid", "val") if (root / d / ROBOFLOW_NAME).is_file()), None)
    return CocoLayout(root, train, val)


def read(layout: CocoLayout) -> ReaderResult:
    """Parse the layout's JSON files; DataError naming the file and annotation id on any bad entry."""
    files, splits, classes = [], [], None
    for json_path in (layout.train, layout.val):
        if json_path is None:
            splits.append(None)
            continue
        data = _read_bytes(json_path)
        files.append((json_path.relative_to(layout.root).as_posix(), data))
        doc = _load_json(data, json_path)
        names, records = _parse(doc, json_path, layout.root)
        if classes is not None and names != classes:
            raise DataError(f"COCO files {layout.train} and {json_path} list different categories "
                            f"({classes} vs {names}); both splits must use the same categories")
        classes = names
        splits.append(records)
    return ReaderResult("coco", classes, splits[0], splits[1], files)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read annotation file {path}: {exc.strerror or exc}") from None


def _load_json(data: bytes, path: Path) -> dict:
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise DataError(f"COCO file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}; "
                        "fix or replace the file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"COCO file {path} is not UTF-8 text: {exc}") from None
    if not isinstance(doc, dict):
        raise DataError(f"COCO file {path}: top level is a {type(doc).__name__}, expected an object with "
                        "'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"COCO file {path}: '{key}' is missing or not a list; a COCO detection file needs "
                            "'images', 'annotations' and 'categories' lists")
    return doc


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse(doc: dict, path: Path, root: Path) -> tuple[list[str], list[DetectionRecord]]:
    categories = {}
    for i, cat in enumerate(doc["categories"]):
        if not (isinstance(cat, dict) and _is_int(cat.get("id")) and isinstance(cat.get("name"), str)):
            raise DataError(f"COCO file {path}: categories[{i}] is {cat!r}; expected {{'id': int, 'name': str}}")
        if cat["id"] in categories:
            raise DataError(f"COCO file {path}: category id {cat['id']} appears twice (categories[{i}])")
        categories[cat["id"]] = cat["name"]
    if not categories:
        raise DataError(f"COCO file {path} has no categories; add the class list to 'categories'")
    cat_ids = sorted(categories)
    cat_index = {cid: i for i, cid in enumerate(cat_ids)}

    image_dirs = _image_dirs(root, path)
    images, order = {}, []
    for i, img in enumerate(doc["images"]):
        ok = (isinstance(img, dict) and _is_int(img.get("id")) and isinstance(img.get("file_name"), str)
              and _is_int(img.get("width")) and _is_int(img.get("height")) and img["width"] > 0 and img["height"] > 0)
        if not ok:
            raise DataError(f"COCO file {path}: images[{i}] is {img!r}; expected id (int), file_name (str) and "
                            "positive width/height (int)")
        if img["id"] in images:
            raise DataError(f"COCO file {path}: image id {img['id']} appears twice (images[{i}])")
        images[img["id"]] = (img, [], [], [])
        order.append(img["id"])

    for i, ann in enumerate(doc["annotations"]):
        what = _ann_name(path, ann, i)
        if not isinstance(ann, dict):
            raise DataError(f"{what} is {ann!r}; expected an object")
        if ann.get("image_id") not in images:
            raise DataError(f"{what}: image_id {ann.get('image_id')!r} is not in 'images'; fix the id or add the image")
        if ann.get("category_id") not in cat_index:
            raise DataError(f"{what}: category_id {ann.get('category_id')!r} is not in 'categories' "
                            f"(ids {cat_ids[:10]}{'...' if len(cat_ids) > 10 else ''}); fix the id or add the category")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise DataError(f"{what}: bbox is {bbox!r}; expected [x, y, width, height] with 4 numbers")
        img, boxes, labels, crowd = images[ann["image_id"]]
        x, y, w, h = (float(v) for v in bbox)
        boxes.append(check_box((x, y, x + w, y + h), img["width"], img["height"],
                               f"{what} (image {img['file_name']})"))
        labels.append(cat_index[ann["category_id"]])
        crowd.append(bool(ann.get("iscrowd", 0)))

    records = []
    for image_id in order:
        img, boxes, labels, crowd = images[image_id]
        file = _find_image(image_dirs, img["file_name"], path, image_id)
        records.append(make_record(file, str(image_id), boxes, labels, crowd, (img["height"], img["width"]),
                                   f"COCO file {path}, image id {image_id}"))
    return [categories[c] for c in cat_ids], records


def _ann_name(path: Path, ann, i: int) -> str:
    ann_id = ann.get("id") if isinstance(ann, dict) else None
    return f"COCO file {path}, annotation id {ann_id} (annotations[{i}])"


def _image_dirs(root: Path, json_path: Path) -> list[Path]:
    """Folders to look for a JSON file's images in: the split's own folder first."""
    if json_path.name == ROBOFLOW_NAME:
        return [json_path.parent]
    split = json_path.stem[len("instances_"):]
    dirs = [root / "images" / split, root / split, root / "images", root]
    return [d for d in dirs if d.is_dir()]


def _find_image(dirs: list[Path], file_name: str, path: Path, image_id: int) -> str:
    for d in dirs:
        candidate = d / file_name
        if candidate.is_file():
            return os.path.abspath(candidate)
    searched = ", ".join(str(d) for d in dirs)
    raise DataError(f"COCO file {path}, image id {image_id}: image file {file_name!r} not found in {searched}; "
                    "add the image or delete it from 'images'")
