"""Detection dataset readers (VOC XML, COCO JSON, YOLO txt) on tiny generated fixtures, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgesmith.errors import DataError
from trainer.data.detection import open_detection_dataset


def _png(path: Path, w: int, h: int, color=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color).save(path)


def _voc_xml(filename: str, w: int, h: int, objects: list[tuple[str, tuple]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return (f"<annotation><folder>x</folder><filename>{filename}</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- Pascal VOC -----------------------------------------------------------------------------


def make_voc_devkit(root: Path) -> Path:
    """Four images: two classes, one image without objects, ImageSets naming the splits."""
    specs = {
        "000001": (64, 48, [("dog", (5, 6, 30, 40)), ("cat", (32, 2, 60, 20))]),
        "000002": (50, 40, [("cat", (1, 1, 49, 39))]),
        "000003": (40, 40, []),
        "000004": (30, 60, [("dog", (10, 10, 20, 50))]),
    }
    for stem, (w, h, objects) in specs.items():
        _png(root / "JPEGImages" / f"{stem}.png", w, h)
        _write(root / "Annotations" / f"{stem}.xml", _voc_xml(f"{stem}.png", w, h, objects))
    _write(root / "ImageSets" / "Main" / "train.txt", "000001\n000003\n000004\n")
    _write(root / "ImageSets" / "Main" / "val.txt", "000002\n")
    return root


def test_voc_devkit_with_imagesets(tmp_path):
    ds = open_detection_dataset(make_voc_devkit(tmp_path))
    assert ds.format == "voc" and not ds.val_is_carved
    assert ds.classes == ["cat", "dog"]  # sorted names found
    assert [r.image_id for r in ds.train.records] == ["000001", "000003", "000004"]
    assert len(ds.val) == 1 and ds.val.records[0].image_id == "000002"
    s = ds.train.load(0)
    assert s.image.shape == (48, 64, 3) and s.image.dtype == np.uint8
    assert tuple(s.image[0, 0]) == (200, 30, 30)
    np.testing.assert_array_equal(s.boxes, np.array([[5, 6, 30, 40], [32, 2, 60, 20]], np.float32))
    assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64 and s.iscrowd.dtype == bool
    assert s.labels.tolist() == [1, 0] and s.iscrowd.tolist() == [False, False]
    empty = ds.train.load(1)  # an image without objects is allowed
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)
    assert ds.train.num_boxes + ds.val.num_boxes == 4


def make_raccoon_like(root: Path, n: int = 10) -> Path:
    """The shared Raccoon layout: annotations/*.xml + images/*.jpg."""
    for i in range(n):
        _png(root / "images" / f"raccoon-{i}.png", 40, 30)
        _write(root / "annotations" / f"raccoon-{i}.xml", _voc_xml(f"raccoon-{i}.png", 40, 30,
                                                                     [("raccoon", (2, 3, 20 + i, 25))]))
    return root


def test_voc_raccoon_layout_carves_a_seeded_val_split(tmp_path):
    root = make_raccoon_like(tmp_path)
    a = open_detection_dataset(root, val_fraction=0.2, seed=1)
    b = open_detection_dataset(root, val_fraction=0.2, seed=1)
    c = open_detection_dataset(root, val_fraction=0.2, seed=2)
    assert a.classes == ["raccoon"] and a.val_is_carved
    assert len(a.train) == 8 and len(a.val) == 2
    ids = lambda d: [r.image_id for r in d.val.records]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert set(ids(a)).isdisjoint(r.image_id for r in a.train.records)
    assert a.content_hash == b.content_hash != c.content_hash
    s = a.val.load(0)
    assert s.boxes[0, 2] == 20 + int(s.image_id.split("-")[1])


def test_voc_flat_folder_and_classes_txt(tmp_path):
    for i, name in enumerate(["b", "a", "b"]):
        _png(tmp_path / f"img{i}.png", 20, 20)
        _write(tmp_path / f"img{i}.xml", _voc_xml(f"img{i}.png", 20, 20, [(name, (1, 1, 10, 10))]))
    assert open_detection_dataset(tmp_path).classes == ["a", "b"]
    _write(tmp_path / "classes.txt", "b\na\n")  # fixes the order
    ds = open_detection_dataset(tmp_path)
    assert ds.classes == ["b", "a"]
    labels = {r.image_id: int(r.labels[0]) for r in ds.train.records + ds.val.records}
    assert labels == {"img0": 0, "img1": 1, "img2": 0}


def test_content_hash_follows_annotations(tmp_path):
    root = make_raccoon_like(tmp_path, 4)
    before = open_detection_dataset(root).content_hash
    _write(root / "annotations" / "raccoon-0.xml", _voc_xml("raccoon-0.png", 40, 30, [("raccoon", (2, 3, 21, 25))]))
    assert open_detection_dataset(root).content_hash != before


@pytest.mark.parametrize("xml, match", [
    ("<annotation><object>", r"raccoon-0\.xml is not valid XML \(line 1"),
    (_voc_xml("raccoon-0.png", 40, 30, [("raccoon", (2, 3, 20, 25)), ("raccoon", (2, 3, 45, 25))]),
     r"raccoon-0\.xml, <object> 2 of 2 \('raccoon'\): box .* outside the image \(width 40, height 30\)"),
    (_voc_xml("raccoon-0.png", 40, 30, [("raccoon", (20, 3, 20, 25))]),
     r"raccoon-0\.xml, <object> 1 of 1 \('raccoon'\): box .* empty or inverted"),
    (_voc_xml("raccoon-0.png", 40, 30, [("raccoon", ("a", 3, 20, 25))]),
     r"<object> 1 of 1 \('raccoon'\): <bndbox>/<xmin> is 'a', expected a number"),
    ("<annotation><filename>raccoon-0.png</filename><object><name>x</name></object></annotation>",
     r"<object> 1 of 1 \('x'\) has no <bndbox>"),
    ("<annotation><filename>raccoon-0.png</filename><object><bndbox/></object></annotation>",
     r"<object> 1 of 1 has no <name>"),
    ("<notes/>", r"root element is <notes>, expected <annotation>"),
    (_voc_xml("nothere.png", 40, 30, []).replace("raccoon-0", "zzz"), None),
])
def test_voc_bad_annotations_name_file_and_object(tmp_path, xml, match):
    root = make_raccoon_like(tmp_path, 3)
    _write(root / "annotations" / "raccoon-0.xml", xml)
    if match is None:  # <filename> wrong but the XML's own stem finds the image: still opens
        assert len(open_detection_dataset(root).train) == 2
        return
    with pytest.raises(DataError, match=match):
        open_detection_dataset(root)


def test_voc_missing_image_unknown_class_and_bad_split_list(tmp_path):
    root = make_raccoon_like(tmp_path / "a", 3)
    (root / "images" / "raccoon-1.png").unlink()
    with pytest.raises(DataError, match=r"raccoon-1\.xml: image file 'raccoon-1\.png' not found in .*images"):
        open_detection_dataset(root)

    root = make_raccoon_like(tmp_path / "b", 3)
    _write(root / "classes.txt", "raccoon\n")
    _write(root / "annotations" / "raccoon-2.xml", _voc_xml("raccoon-2.png", 40, 30, [("dog", (1, 1, 5, 5))]))
    with pytest.raises(DataError, match=r"raccoon-2\.xml, <object> 1 of 1: class 'dog' is not in .*classes\.txt"):
        open_detection_dataset(root)

    root = make_voc_devkit(tmp_path / "c")
    _write(root / "ImageSets" / "Main" / "val.txt", "000002\n\n000009\n")
    with pytest.raises(DataError, match=r"val\.txt line 3: image id '000009' has no annotation"):
        open_detection_dataset(root)


def test_voc_image_size_differing_from_xml_fails_on_open(tmp_path):
    root = make_raccoon_like(tmp_path, 3)
    _png(root / "images" / "raccoon-0.png", 41, 30)  # the XML still says 40x30
    with pytest.raises(DataError, match=r"raccoon-0\.xml declares image size 40x30 .* is 41x30"):
        open_detection_dataset(root)


def test_coco_image_size_differing_from_json_fails_on_load(tmp_path):
    root = make_coco(tmp_path)
    _png(root / "images" / "val2017" / "000010.png", 61, 40)  # the JSON says 60x40
    ds = open_detection_dataset(root)
    match = r"instances_val2017\.json, image id 10: the annotation gives image size 60x40 \(WxH\) but .* is 61x40"
    with pytest.raises(DataError, match=match):
        ds.val.load(0)


# ---- COCO -----------------------------------------------------------------------------------


def coco_doc(images, anns, cats=((3, "person"), (7, "car"))):
    return {"images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images],
            "annotations": [{"id": a, "image_id": im, "category_id": c, "bbox": list(b), "iscrowd": cr}
                            for a, im, c, b, cr in anns],
            "categories": [{"id": i, "name": n} for i, n in cats]}


def make_coco(root: Path) -> Path:
    for split, ids in (("train2017", (1, 2, 3)), ("val2017", (10,))):
        for i in ids:
            _png(root / "images" / split / f"{i:06d}.png", 60, 40)
    train = coco_doc([(1, "000001.png", 60, 40), (2, "000002.png", 60, 40), (3, "000003.png", 60, 40)],
                     [(101, 1, 7, (10, 5, 20, 15), 0), (102, 1, 3, (0, 0, 60, 40), 1), (103, 2, 3, (30, 20, 5, 5), 0)])
    val = coco_doc([(10, "000010.png", 60, 40)], [(201, 10, 7, (1, 2, 3, 4), 0)])
    _write(root / "annotations" / "instances_train2017.json", json.dumps(train))
    _write(root / "annotations" / "instances_val2017.json", json.dumps(val))
    return root


def test_coco_splits_categories_and_crowd(tmp_path):
    ds = open_detection_dataset(make_coco(tmp_path))
    assert ds.format == "coco" and not ds.val_is_carved
    assert ds.classes == ["person", "car"]  # category id order 3, 7 -> indices 0, 1
    assert [r.image_id for r in ds.train.records] == ["1", "2", "3"] and len(ds.val) == 1
    s = ds.train.load(0)
    assert s.image.shape == (40, 60, 3)
    np.testing.assert_array_equal(s.boxes, np.array([[10, 5, 30, 20], [0, 0, 60, 40]], np.float32))
    assert s.labels.tolist() == [1, 0] and s.iscrowd.tolist() == [False, True]
    assert ds.train.load(2).boxes.shape == (0, 4)  # an image without annotations
    assert ds.val.load(0).boxes.tolist() == [[1, 2, 4, 6]]


def test_coco_single_file_carves_val(tmp_path):
    root = make_coco(tmp_path)
    (root / "annotations" / "instances_val2017.json").unlink()
    ds = open_detection_dataset(root, val_fraction=0.3)
    assert ds.val_is_carved and len(ds.train) == 2 and len(ds.val) == 1


def test_coco_roboflow_export(tmp_path):
    for split, image_id in (("train", 1), ("valid", 2)):
        _png(tmp_path / split / f"{split}.png", 30, 20)
        doc = coco_doc([(image_id, f"{split}.png", 30, 20)], [(image_id, image_id, 7, (2, 2, 10, 10), 0)])
        _write(tmp_path / split / "_annotations.coco.json", json.dumps(doc))
    ds = open_detection_dataset(tmp_path)
    assert ds.format == "coco" and (len(ds.train), len(ds.val)) == (1, 1) and not ds.val_is_carved
    assert ds.val.load(0).boxes.tolist() == [[2, 2, 12, 12]] and ds.val.load(0).labels.tolist() == [1]


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["annotations"].append({"id": 104, "image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 2]}),
     r"annotation id 104 \(annotations\[3\]\): category_id 5 is not in 'categories'"),
    (lambda d: d["annotations"].append({"id": 105, "image_id": 1, "category_id": 3, "bbox": [50, 1, 20, 2]}),
     r"annotation id 105 \(annotations\[3\]\) \(image 000001\.png\): box .* outside the image \(width 60, height 40\)"),
    (lambda d: d["annotations"].append({"id": 106, "image_id": 1, "category_id": 3, "bbox": [5, 1, 0, 2]}),
     r"annotation id 106 .* empty or inverted"),
    (lambda d: d["annotations"].append({"id": 107, "image_id": 1, "category_id": 3, "bbox": [5, 1, 2]}),
     r"annotation id 107 .* bbox is \[5, 1, 2\]; expected \[x, y, width, height\] with 4 numbers"),
    (lambda d: d["annotations"].append({"id": 108, "image_id": 99, "category_id": 3, "bbox": [1, 1, 2, 2]}),
     r"annotation id 108 .* image_id 99 is not in 'images'"),
    (lambda d: d["images"].append({"id": 4, "file_name": "gone.png", "width": 60, "height": 40}),
     r"instances_train2017\.json, image id 4: image file 'gone\.png' not found"),
    (lambda d: d.pop("categories"), r"'categories' is missing or not a list"),
    (lambda d: d["images"][0].pop("width"), r"images\[0\] is .*expected id \(int\), file_name"),
])
def test_coco_bad_annotations_name_file_and_id(tmp_path, mutate, match):
    root = make_coco(tmp_path)
    path = root / "annotations" / "instances_train2017.json"
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=match):
        open_detection_dataset(root)


def test_coco_malformed_json_and_category_mismatch(tmp_path):
    root = make_coco(tmp_path)
    path = root / "annotations" / "instances_val2017.json"
    path.write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(DataError, match=r"instances_val2017\.json is not valid JSON \(line 2, column"):
        open_detection_dataset(root)
    path.write_text(json.dumps(coco_doc([], [], cats=((3, "person"),))))
    with pytest.raises(DataError, match="list different categories"):
        open_detection_dataset(root)


# ---- YOLO -----------------------------------------------------------------------------------


def make_yolo(root: Path) -> Path:
    _write(root / "data.yaml", "names:\n  0: cat\n  1: dog\n")
    _png(root / "images" / "train" / "a.png", 100, 50)
    _png(root / "images" / "train" / "b.png", 20, 20)  # no label file: background image
    _png(root / "images" / "val" / "c.png", 40, 40)
    _write(root / "labels" / "train" / "a.txt", "1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.2 0.2\n\n")
    _write(root / "labels" / "val" / "c.txt", "0 0.5 0.5 1.0 1.0\n")
    return root


def test_yolo_train_val_folders(tmp_path):
    ds = open_detection_dataset(make_yolo(tmp_path))
    assert ds.format == "yolo" and ds.classes == ["cat", "dog"] and not ds.val_is_carved
    assert [r.image_id for r in ds.train.records] == ["a", "b"]
    s = ds.train.load(0)
    np.testing.assert_allclose(s.boxes, [[40, 15, 60, 35], [0, 0, 20, 10]], atol=1e-4)
    assert s.labels.tolist() == [1, 0]
    assert ds.train.load(1).boxes.shape == (0, 4)
    np.testing.assert_allclose(ds.val.load(0).boxes, [[0, 0, 40, 40]])


def test_yolo_classes_txt_flat_and_yaml_paths(tmp_path):
    flat = tmp_path / "flat"
    _write(flat / "classes.txt", "only\n")
    for i in range(5):
        _png(flat / "images" / f"{i}.png", 10, 10)
        _write(flat / "labels" / f"{i}.txt", "0 0.5 0.5 0.5 0.5\n")
    ds = open_detection_dataset(flat, val_fraction=0.4)
    assert ds.classes == ["only"] and ds.val_is_carved and (len(ds.train), len(ds.val)) == (3, 2)

    rf = tmp_path / "roboflow"  # train/images + valid/images, located by data.yaml
    _write(rf / "data.yaml", "train: train/images\nval: valid/images\nnc: 1\nnames: ['fish']\n")
    _png(rf / "train" / "images" / "x.png", 10, 10)
    _write(rf / "train" / "labels" / "x.txt", "0 0.5 0.5 0.2 0.2\n")
    _png(rf / "valid" / "images" / "y.png", 10, 10)
    ds = open_detection_dataset(rf)
    assert ds.classes == ["fish"] and len(ds.train) == 1 and len(ds.val) == 1
    np.testing.assert_allclose(ds.train.load(0).boxes, [[4, 4, 6, 6]], atol=1e-5)


@pytest.mark.parametrize("line, match", [
    ("0 0.5 0.5 0.2", r"a\.txt line 2: 4 fields .*expected 5: class cx cy w h"),
    ("0 0.1 0.1 0.2 0.2 0.3 0.3", r"a\.txt line 2: 7 fields"),
    ("2 0.5 0.5 0.2 0.2", r"a\.txt line 2: class 2 is out of range; the dataset has 2 classes"),
    ("0 0.95 0.5 0.2 0.2", r"a\.txt line 2 \(normalised cx cy w h\): box .* outside the image"),
    ("0 0.5 0.5 0 0.2", r"a\.txt line 2 .*empty or inverted"),
    ("x 0.5 0.5 0.2 0.2", r"a\.txt line 2: 'x 0.5 0.5 0.2 0.2' is not 'class cx cy w h'"),
])
def test_yolo_bad_labels_name_file_and_line(tmp_path, line, match):
    root = make_yolo(tmp_path)
    _write(root / "labels" / "train" / "a.txt", "1 0.5 0.5 0.2 0.4\n" + line + "\n")
    with pytest.raises(DataError, match=match):
        open_detection_dataset(root)


def test_yolo_bad_yaml(tmp_path):
    root = make_yolo(tmp_path)
    _write(root / "data.yaml", "names: [cat, dog\n")
    with pytest.raises(DataError, match=r"data\.yaml is not valid YAML \(line"):
        open_detection_dataset(root)
    _write(root / "data.yaml", "names: 3\n")
    with pytest.raises(DataError, match=r"'names:' is 3; expected a list"):
        open_detection_dataset(root)


# ---- general --------------------------------------------------------------------------------


def test_unknown_layout_and_bad_options(tmp_path):
    _png(tmp_path / "x.png", 5, 5)
    with pytest.raises(DataError, match=r"no detection dataset found in .* \(it holds x\.png\); supported"):
        open_detection_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        open_detection_dataset(tmp_path / "nope")
    root = make_raccoon_like(tmp_path / "r", 2)
    with pytest.raises(DataError, match="val_fraction must be between 0 and 1"):
        open_detection_dataset(root, val_fraction=1.5)
    single = make_raccoon_like(tmp_path / "s", 1)
    with pytest.raises(DataError, match=r"cannot carve a validation split .* 1 image"):
        open_detection_dataset(single)


def test_detection_data_and_metric_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, trainer.data.detection, trainer.detection.metrics; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0
