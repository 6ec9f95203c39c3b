"""Detection transforms: boxes stay on the pixels they describe through letterbox, flip, scale,
translate and mosaic; undo_letterbox inverts letterbox; colour jitter and collation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesmith.errors import ConfigError
from trainer.data.detection import DetectionAugment, DetectionSample, collate, letterbox, undo_letterbox
from trainer.data.detection.transforms import clip_and_filter, hsv_jitter

COLOURS = {0: (255, 0, 0), 1: (0, 255, 0), 2: (255, 255, 0)}
BACKGROUND = (0, 0, 255)
MARGIN = 2  # bilinear resampling blurs edges; look this far inside/outside a box


def drawn_sample(h, w, boxes, labels, crowd=None, image_id="x") -> DetectionSample:
    """A blue image with each box filled in its label's colour."""
    image = np.empty((h, w, 3), np.uint8)
    image[:] = BACKGROUND
    for (x1, y1, x2, y2), label in zip(boxes, labels):
        image[y1:y2, x1:x2] = COLOURS[label]
    n = len(labels)
    return DetectionSample(image, np.asarray(boxes, np.float32).reshape(n, 4), np.asarray(labels, np.int64),
                           image_id, np.zeros(n, bool) if crowd is None else np.asarray(crowd, bool))


def assert_boxes_on_content(image, boxes, labels, min_side=2 * MARGIN + 2):
    """Inside each box (less MARGIN) every pixel has the label's colour; just outside, none does."""
    h, w = image.shape[:2]
    checked = 0
    for (x1, y1, x2, y2), label in zip(np.round(boxes).astype(int), labels):
        colour = np.array(COLOURS[int(label)])
        if x2 - x1 < min_side or y2 - y1 < min_side:
            continue
        inner = image[y1 + MARGIN:y2 - MARGIN, x1 + MARGIN:x2 - MARGIN].astype(int)
        assert np.abs(inner - colour).max() <= 8, f"box {x1, y1, x2, y2} does not cover its object"
        ring = []
        if y1 - MARGIN >= 0:
            ring.append(image[y1 - MARGIN, max(x1, 0):x2])
        if y2 + MARGIN < h:
            ring.append(image[y2 + MARGIN, max(x1, 0):x2])
        if x1 - MARGIN >= 0:
            ring.append(image[max(y1, 0):y2, x1 - MARGIN])
        if x2 + MARGIN < w:
            ring.append(image[max(y1, 0):y2, x2 + MARGIN])
        for edge in ring:
            assert not (np.abs(edge.astype(int) - colour).max(axis=-1) <= 8).any(), \
                f"object extends past box {x1, y1, x2, y2}"
        checked += 1
    return checked


# ---- letterbox ------------------------------------------------------------------------------


def test_letterbox_pads_centred_and_keeps_boxes_on_objects():
    sample = drawn_sample(100, 200, [(20, 10, 80, 60), (150, 50, 190, 95)], [0, 1])
    image, boxes, info = letterbox(sample.image, sample.boxes, (160, 160))
    assert image.shape == (160, 160, 3) and image.dtype == np.uint8
    assert info.scale == pytest.approx(0.8) and (info.pad_x, info.pad_y) == (0, 40) and info.orig_hw == (100, 200)
    assert (image[:40] == 114).all() and (image[120:] == 114).all()  # top and bottom padding
    np.testing.assert_allclose(boxes, [[16, 48, 64, 88], [120, 80, 152, 116]], atol=1e-4)
    assert assert_boxes_on_content(image, boxes, sample.labels) == 2


@settings(max_examples=40, deadline=None)
@given(h=st.integers(8, 300), w=st.integers(8, 300), th=st.integers(8, 320), tw=st.integers(8, 320),
       data=st.data())
def test_undo_letterbox_inverts_letterbox(h, w, th, tw, data):
    x1 = data.draw(st.floats(0, w - 1))
    y1 = data.draw(st.floats(0, h - 1))
    x2 = data.draw(st.floats(x1 + 0.5, w))
    y2 = data.draw(st.floats(y1 + 0.5, h))
    boxes = np.array([[x1, y1, x2, y2]], np.float32)
    image = np.zeros((h, w, 3), np.uint8)
    out, mapped, info = letterbox(image, boxes, (th, tw))
    assert out.shape == (th, tw, 3)
    assert (mapped >= -1e-3).all() and (mapped[:, [0, 2]] <= tw + 1e-3).all() and (mapped[:, [1, 3]] <= th + 1e-3).all()
    np.testing.assert_allclose(undo_letterbox(mapped, info), boxes, atol=1e-3 * max(h, w))


def test_undo_letterbox_clips_to_original_image():
    _, _, info = letterbox(np.zeros((50, 100, 3), np.uint8), None, (100, 100))
    back = undo_letterbox(np.array([[0, 0, 100, 100]], np.float32), info)
    np.testing.assert_allclose(back, [[0, 0, 100, 50]])


# ---- augmentation ---------------------------------------------------------------------------


def test_augment_keeps_boxes_on_objects_through_flip_scale_and_translate():
    sample = drawn_sample(120, 160, [(10, 10, 50, 40), (90, 60, 150, 110), (60, 20, 80, 50)], [0, 1, 2])
    aug = DetectionAugment((96, 128), flip=0.5, scale=(0.5, 1.5), translate=0.25, hsv=(0, 0, 0))
    rng = np.random.default_rng(0)
    flipped_seen, checked = set(), 0
    for _ in range(40):
        image, boxes, labels = aug(sample, rng)
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        assert boxes.dtype == np.float32 and labels.dtype == np.int64 and boxes.shape == (len(labels), 4)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()
        assert (boxes[:, 2] - boxes[:, 0] >= 2).all() and (boxes[:, 3] - boxes[:, 1] >= 2).all()
        checked += assert_boxes_on_content(image, boxes, labels)
        if {0, 1} <= set(labels.tolist()):
            b = {int(l): bb for l, bb in zip(labels, boxes)}
            flipped_seen.add(bool(b[0][0] > b[1][0]))  # red is left of green unless flipped
    assert checked >= 60 and flipped_seen == {True, False}


def test_augment_drops_boxes_pushed_out_and_crowd_regions():
    sample = drawn_sample(100, 100, [(0, 0, 10, 10), (40, 40, 60, 60)], [0, 1], crowd=[False, True])
    aug = DetectionAugment((100, 100), flip=0.0, scale=(1.0, 1.0), translate=0.0, hsv=(0, 0, 0))
    _, boxes, labels = aug(sample, np.random.default_rng(0))
    assert labels.tolist() == [0]  # the crowd region is not a training target
    far = DetectionAugment((100, 100), flip=0.0, scale=(1.0, 1.0), translate=0.9, hsv=(0, 0, 0))
    counts = {len(far(sample, np.random.default_rng(s))[2]) for s in range(30)}
    assert 0 in counts  # the small box at the corner gets pushed out of the canvas and is dropped


def test_clip_and_filter_drops_slivers():
    boxes = np.array([[-90, 0, 10, 50], [-40, 0, 60, 50], [5, 5, 6, 40]], np.float64)
    kept, labels = clip_and_filter(boxes, np.array([0, 1, 2]), 100, 100, min_size=2.0, min_visible=0.2)
    assert labels.tolist() == [1]  # 10% visible, 60% visible, 1 px wide
    np.testing.assert_allclose(kept, [[0, 0, 60, 50]])


def test_augment_is_reproducible_from_the_generator():
    sample = drawn_sample(80, 90, [(10, 10, 50, 40)], [0])
    aug = DetectionAugment((64, 64))
    a = aug(sample, np.random.default_rng(7))
    b = aug(sample, np.random.default_rng(7))
    c = aug(sample, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    seeded = DetectionAugment((64, 64), seed=3)
    assert np.array_equal(seeded(sample)[0], DetectionAugment((64, 64), seed=3)(sample)[0])


class _Pool:
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def load(self, i):
        return self.samples[i]


def test_mosaic_boxes_stay_on_their_objects():
    rng = np.random.default_rng(1)
    pool = []
    for i in range(6):
        h, w = rng.integers(60, 140, 2)
        x1, y1 = rng.integers(0, w // 2), rng.integers(0, h // 2)
        pool.append(drawn_sample(h, w, [(x1, y1, x1 + w // 3, y1 + h // 3)], [i % 3], image_id=str(i)))
    aug = DetectionAugment((128, 128), mosaic=1.0, flip=0.5, hsv=(0, 0, 0), scale=(0.8, 1.2), translate=0.1)
    checked, many = 0, 0
    for _ in range(20):
        image, boxes, labels = aug(pool[0], rng, pool=_Pool(pool))
        assert image.shape == (128, 128, 3)
        checked += assert_boxes_on_content(image, boxes, labels)
        many += len(labels) >= 2
    assert checked >= 20 and many >= 10  # mosaics bring in objects of the other images
    with pytest.raises(ConfigError, match="needs pool="):
        aug(pool[0], rng)


def test_hsv_jitter_changes_colour_and_keeps_padding():
    sample = drawn_sample(50, 100, [(10, 10, 40, 40)], [0])
    unchanged = hsv_jitter(sample.image, (0, 0, 0), np.random.default_rng(0))
    assert np.array_equal(unchanged, sample.image)
    aug = DetectionAugment((100, 100), flip=0, scale=(1, 1), translate=0, hsv=(0.5, 0.7, 0.4))
    image, boxes, _ = aug(sample, np.random.default_rng(2))
    assert (image[:25] == 114).all()  # letterbox padding is added after colour jitter
    x1, y1, x2, y2 = np.round(boxes[0]).astype(int)
    assert not np.array_equal(image[y1 + 2, x1 + 2], np.array(COLOURS[0], np.uint8))


def test_collate_pads_with_minus_one():
    items = [(np.zeros((8, 8, 3), np.uint8), np.array([[1, 1, 3, 3]], np.float32), np.array([2])),
             (np.ones((8, 8, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64)),
             (np.ones((8, 8, 3), np.uint8), np.array([[0, 0, 1, 1], [2, 2, 5, 5]], np.float32), np.array([0, 1]))]
    images, boxes, labels = collate(items)
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    assert boxes.shape == (3, 2, 4) and labels.shape == (3, 2) and labels.dtype == np.int64
    assert labels.tolist() == [[2, -1], [-1, -1], [0, 1]]
    assert (boxes[0, 1] == -1).all() and (boxes[1] == -1).all() and boxes[2, 1].tolist() == [2, 2, 5, 5]
    with pytest.raises(ValueError, match="one size"):
        collate([items[0], (np.zeros((4, 8, 3), np.uint8), items[0][1], items[0][2])])


@pytest.mark.parametrize("kwargs, match", [
    ({"size": (0, 10)}, "size must be"), ({"flip": 1.5}, r"flip must be in \[0, 1\]"), ({"min_visible": -0.1}, "min_visible must"), ({"scale": (1.5, 0.5)}, "scale must"),
    ({"translate": 1.0}, "translate must"), ({"hsv": (0.1, 2.0, 0.1)}, "hsv must"),
])
def test_augment_rejects_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DetectionAugment(**kwargs)
