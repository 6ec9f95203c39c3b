"""Pascal VOC XML: one ``<annotation>`` file per image.

Layouts found (folder names matched case-insensitively):

- ``Annotations/*.xml`` + ``JPEGImages/`` (the VOC devkit), with optional
  ``ImageSets/Main/{train,val}.txt`` (or ``trainval``/``test``) naming the splits;
- ``annotations/*.xml`` + ``images/`` (the shared Raccoon set);
- a flat folder of images with a same-named ``.xml`` beside each.

Classes are the sorted object names found, unless the root holds a
``classes.txt`` (one name per line), which then fixes the order and makes any
other name an error. Images without an XML file are not part of the dataset;
an XML without ``<object>`` elements is an image with no objects. ``difficult``
objects are kept as ordinary objects.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from edgesmith.errors import DataError

from .types import DetectionRecord, ReaderResult, check_box, make_record, probe_image_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_COORDS = ("xmin", "ymin", "xmax", "ymax")
_SPLIT_FILES = (("train.txt", "trainval.txt"), ("val.txt", "test.txt"))


@dataclass(frozen=True)
class VocLayout:
    """Where the XML files and images are; ``imagesets`` is ImageSets/Main when it names both splits."""

    root: Path
    ann_dir: Path
    image_dir: Path
    split_files: tuple[Path, Path] | None


def _child(folder: Path, *names: str) -> Path | None:
    """The subfolder of ``folder`` whose name matches one of ``names`` case-insensitively."""
    wanted = [n.lower() for n in names]
    try:
        entries = {e.name.lower(): Path(e.path) for e in os.scandir(folder) if e.is_dir()}
    except OSError:
        return None
    return next((entries[n] for n in wanted if n in entries), None)


def _has_xml(folder: Path) -> bool:
    return any(e.is_file() and e.name.lower().endswith(".xml") for e in os.scandir(folder))


def find_layout(root: Path) -> VocLayout | None:
    """The VOC layout at ``root``, or None when there are no VOC XML files."""
    ann = _child(root, "Annotations")
    if ann is not None and _has_xml(ann):
        images = _child(root, "JPEGImages", "images")
        if images is None:
            raise DataError(f"VOC dataset {root} has {ann.name}/ but no JPEGImages/ or images/ folder; "
                            "put the images there")
        split_files = None
        main = _child(root, "ImageSets")
        main = _child(main, "Main") if main is not None else None
        if main is not None:
            picks = [next((main / n for n in names if (main / n).is_file()), None) for names in _SPLIT_FILES]
            if all(picks):
                split_files = (picks[0], picks[1])
        return VocLayout(root, ann, images, split_files)
    if _has_xml(root) and any(e.name.lower().endswith(IMAGE_SUFFIXES) for e in os.scandir(root)):
        return VocLayout(root, root, root, None)
    return None


def read(layout: VocLayout) -> ReaderResult:
    """Parse every XML file of ``layout`` into records; DataError on any bad annotation."""
    xml_files = sorted(e.name for e in os.scandir(layout.ann_dir)
                       if e.is_file() and e.name.lower().endswith(".xml") and not e.name.startswith("."))
    if not xml_files:
        raise DataError(f"VOC annotation folder {layout.ann_dir} holds no .xml files")
    fixed_classes = _read_classes_file(layout.root)
    parsed, files = {}, []
    for name in xml_files:
        path = layout.ann_dir / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read annotation {path}: {exc.strerror or exc}") from None
        files.append((path.relative_to(layout.root).as_posix(), data))
        parsed[Path(name).stem] = _parse(data, path, layout.image_dir, fixed_classes)

    if fixed_classes is not None:
        classes = list(fixed_classes)
    else:
        classes = sorted({n for _, objects, _ in parsed.values() for n, _ in objects})
    index = {c: i for i, c in enumerate(classes)}

    def record(stem: str) -> DetectionRecord:
        (image, size), objects, where = parsed[stem]
        return make_record(image, stem, [b for _, b in objects], [index[n] for n, _ in objects], None, size, where)

    if layout.split_files is None:
        return ReaderResult("voc", classes, [record(s) for s in parsed], None, files)
    splits = []
    for list_file in layout.split_files:
        data = list_file.read_bytes()
        files.append((list_file.relative_to(layout.root).as_posix(), data))
        splits.append([record(s) for s in _read_split_list(data, list_file, parsed)])
    return ReaderResult("voc", classes, splits[0], splits[1], files)


def _read_classes_file(root: Path) -> list[str] | None:
    path = root / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path} must list each class name once, one per line; got {names}")
    return names


def _read_split_list(data: bytes, list_file: Path, parsed: dict) -> list[str]:
    stems = []
    for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if fields[0] not in parsed:
            raise DataError(f"{list_file} line {lineno}: image id {fields[0]!r} has no annotation "
                            f"{fields[0]}.xml; fix the list or add the annotation")
        stems.append(fields[0])
    return stems


def _text(elem: ET.Element, tag: str) -> str | None:
    found = elem.find(tag)
    return found.text.strip() if found is not None and found.text is not None else None


def _parse(data: bytes, path: Path, image_dir: Path, fixed_classes: list[str] | None):
    """((image path, declared (H, W) or None), [(name, xyxy)], where) of one XML file."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        line, col = exc.position
        raise DataError(f"annotation {path} is not valid XML (line {line}, column {col}): {exc}; "
                        "fix or delete the file") from None
    if root.tag != "annotation":
        raise DataError(f"annotation {path}: root element is <{root.tag}>, expected <annotation>")
    image = _image_path(root, path, image_dir)
    declared = _declared_size(root, path)
    # Read the real size from the image header (cheap at VOC scale): boxes drawn on a different
    # size would point at the wrong pixels, and this finds it before training starts.
    h, w = size = probe_image_size(image, f"annotation {path}")
    if declared is not None and declared != size:
        raise DataError(f"annotation {path} declares image size {declared[1]}x{declared[0]} (WxH) but {image} is "
                        f"{w}x{h}; fix <size> in the annotation or replace the image")
    objects = []
    all_objects = root.findall("object")
    for i, obj in enumerate(all_objects, 1):
        what = f"annotation {path}, <object> {i} of {len(all_objects)}"
        name = _text(obj, "name")
        if not name:
            raise DataError(f"{what} has no <name>; every object needs a class name")
        if fixed_classes is not None and name not in fixed_classes:
            raise DataError(f"{what}: class {name!r} is not in {path.parent.parent / 'classes.txt'} "
                            f"({', '.join(fixed_classes)}); add it there or fix the name")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{what} ({name!r}) has no <bndbox>; expected <bndbox> with {', '.join(_COORDS)}")
        coords = []
        for tag in _COORDS:
            text = _text(bnd, tag)
            try:
                coords.append(float(text))
            except (TypeError, ValueError):
                raise DataError(f"{what} ({name!r}): <bndbox>/<{tag}> is {text!r}, expected a number") from None
        objects.append((name, check_box(tuple(coords), w, h, f"{what} ({name!r})")))
    return (image, size), objects, f"annotation {path}"


def _declared_size(root: ET.Element, path: Path) -> tuple[int, int] | None:
    """(H, W) from <size>, or None when absent or zero (many tools write 0; the image is probed then)."""
    size = root.find("size")
    if size is None:
        return None
    values = []
    for tag in ("height", "width"):
        text = _text(size, tag)
        try:
            values.append(int(float(text)))
        except (TypeError, ValueError):
            raise DataError(f"annotation {path}: <size>/<{tag}> is {text!r}, expected a whole number") from None
    return (values[0], values[1]) if values[0] > 0 and values[1] > 0 else None


def _image_path(root: ET.Element, path: Path, image_dir: Path) -> str:
    """The image an XML file describes: its <filename> in the image folder, else the XML's own stem."""
    candidates = []
    filename = _text(root, "filename")
    if filename:
        name = Path(filename).name
        candidates.append(name)
        if not name.lower().endswith(IMAGE_SUFFIXES):
            candidates += [name + s for s in IMAGE_SUFFIXES]
    candidates += [path.stem + s for s in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)]
    for name in candidates:
        if (image_dir / name).is_file():
            return os.path.abspath(image_dir / name)
    raise DataError(f"annotation {path}: image file {filename or path.stem + '.jpg'!r} not found in {image_dir}; "
                    "add the image or delete the annotation")
