"""YOLO txt: ``images/`` + ``labels/``, one ``class cx cy w h`` line per object, normalised to [0, 1].

Class names come from ``data.yaml`` (``names:`` as a list or an index->name
mapping) or ``classes.txt`` (one per line). Splits, in order of preference:
the ``train:``/``val:`` image folders of data.yaml (relative to its ``path:``
or to the yaml's folder; labels are found by replacing the last ``images``
folder in the path with ``labels``, as Ultralytics does), then
``images/{train,val}/``, then one flat ``images/`` (val carved). An image
without a label file is an image with no objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from edgesmith.errors import DataError

from .types import DetectionRecord, ReaderResult, check_box, make_record

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
YAML_NAMES = ("data.yaml", "data.yml")
VAL_DIR_NAMES = ("val", "valid", "test")


@dataclass(frozen=True)
class YoloLayout:
    """Class source and (images folder, labels folder) of train and, when present, val."""

    root: Path
    class_file: Path
    train: tuple[Path, Path]
    val: tuple[Path, Path] | None


def find_layout(root: Path) -> YoloLayout | None:
    """The YOLO layout at ``root``, or None when there is no data.yaml/classes.txt with labels."""
    class_file = next((root / n for n in YAML_NAMES + ("classes.txt",) if (root / n).is_file()), None)
    if class_file is None:
        return None
    if class_file.suffix in (".yaml", ".yml"):
        doc = _load_yaml(class_file)
        if doc.get("train") is not None:
            base = root / str(doc.get("path") or ".")
            train = _split_dirs(base, doc["train"], class_file, "train")
            val = _split_dirs(base, doc["val"], class_file, "val") if doc.get("val") is not None else None
            return YoloLayout(root, class_file, train, val)
    if (root / "images" / "train").is_dir():
        train = (root / "images" / "train", root / "labels" / "train")
        val_name = next((n for n in VAL_DIR_NAMES if (root / "images" / n).is_dir()), None)
        val = (root / "images" / val_name, root / "labels" / val_name) if val_name else None
        return YoloLayout(root, class_file, train, val)
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return YoloLayout(root, class_file, (root / "images", root / "labels"), None)
    if class_file.name == "classes.txt":
        return None  # a classes.txt alone may belong to a VOC folder
    raise DataError(f"YOLO dataset {root} has {class_file.name} but no images/ and labels/ folders "
                    "(nor train:/val: entries in it); expected images/*.jpg with labels/*.txt")


def _load_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise DataError(f"{path} is not valid YAML{where}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping with 'names:' (and optionally 'train:'/'val:'), got {doc!r}")
    return doc


def _split_dirs(base: Path, entry, yaml_path: Path, key: str) -> tuple[Path, Path]:
    if not isinstance(entry, str):
        raise DataError(f"{yaml_path}: '{key}:' is {entry!r}; only a single image folder is supported")
    images = (base / entry).resolve() if not Path(entry).is_absolute() else Path(entry)
    if not images.is_dir():
        raise DataError(f"{yaml_path}: '{key}:' image folder {images} does not exist")
    parts = list(images.parts)
    if "images" not in parts:
        raise DataError(f"{yaml_path}: '{key}:' folder {images} has no 'images' component, so its labels folder "
                        "cannot be found; use .../images/... with a matching .../labels/...")
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return images, Path(*parts)


def read_classes(class_file: Path) -> list[str]:
    """Class names from data.yaml's ``names:`` or classes.txt."""
    if class_file.name == "classes.txt":
        names = [line.strip() for line in class_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raw = _load_yaml(class_file).get("names")
        if isinstance(raw, dict):
            keys = sorted(raw)
            if keys != list(range(len(keys))):
                raise DataError(f"{class_file}: 'names:' keys are {keys}; expected 0..{len(keys) - 1}")
            names = [str(raw[k]) for k in keys]
        elif isinstance(raw, list):
            names = [str(n) for n in raw]
        else:
            raise DataError(f"{class_file}: 'names:' is {raw!r}; expected a list of class names or {{0: name, ...}}")
    if not names:
        raise DataError(f"{class_file} lists no class names")
    return names


def read(layout: YoloLayout) -> ReaderResult:
    """Parse every label file of the layout; DataError naming the file and line on any bad row."""
    classes = read_classes(layout.class_file)
    files = [(_rel(layout.class_file, layout.root), layout.class_file.read_bytes())]
    splits = []
    for dirs in (layout.train, layout.val):
        splits.append(None if dirs is None else _read_split(dirs, classes, layout.root, files))
    return ReaderResult("yolo", classes, splits[0], splits[1], files)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _read_split(dirs: tuple[Path, Path], classes: list[str], root: Path, files: list) -> list[DetectionRecord]:
    image_dir, label_dir = dirs
    images = []
    for dirpath, dirnames, filenames in os.walk(image_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        images += [Path(dirpath) / f for f in filenames if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    if not images:
        raise DataError(f"YOLO image folder {image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    records = []
    for image in sorted(images):
        rel = image.relative_to(image_dir)
        label = label_dir / rel.with_suffix(".txt")
        boxes, labels = [], []
        if label.is_file():
            data = label.read_bytes()
            files.append((_rel(label, root), data))
            boxes, labels = _parse_label(data, label, len(classes))
        records.append(make_record(os.path.abspath(image), rel.with_suffix("").as_posix(), boxes, labels, None,
                                   None, f"label file {label}", normalized=True))
    return records


def _parse_label(data: bytes, path: Path, num_classes: int) -> tuple[list, list]:
    boxes, labels = [], []
    for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        what = f"label file {path} line {lineno}"
        if len(fields) != 5:
            raise DataError(f"{what}: {len(fields)} fields ({line.strip()!r}); expected 5: class cx cy w h "
                            "(polygon/segment labels are not supported)")
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise DataError(f"{what}: {line.strip()!r} is not 'class cx cy w h' with an integer class and "
                            "four numbers") from None
        if not 0 <= cls < num_classes:
            raise DataError(f"{what}: class {cls} is out of range; the dataset has {num_classes} classes "
                            f"(0..{num_classes - 1})")
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        boxes.append(check_box(box, 1.0, 1.0, f"{what} (normalised cx cy w h)"))
        labels.append(cls)
    return boxes, labels
