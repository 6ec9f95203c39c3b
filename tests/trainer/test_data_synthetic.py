"""The built-in synthetic dataset: deterministic, balanced, learnable but without shortcuts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.data import ArraySplit, open_dataset
from trainer.data.synthetic import SYNTHETIC_CLASSES, make_synthetic


@pytest.fixture(scope="module")
def small():
    return make_synthetic(seed=0, n_train=2000, n_val=500)


def test_default_synthetic_dataset_shape_balance_and_metadata():
    ds = open_dataset(None)
    assert ds.format == "synthetic" and ds.source == "synthetic" and not ds.val_is_carved
    assert ds.classes == SYNTHETIC_CLASSES and len(set(ds.classes)) == 10 and "circle" in ds.classes
    assert ds.image_size == (32, 32)
    assert isinstance(ds.train, ArraySplit) and ds.train.images.shape == (5000, 32, 32, 3)
    assert ds.val.images.shape == (1000, 32, 32, 3) and ds.train.images.flags.c_contiguous
    assert np.bincount(ds.train.labels).tolist() == [500] * 10
    assert np.bincount(ds.val.labels).tolist() == [100] * 10


def test_same_seed_same_bytes_other_seed_other_images():
    a, b = open_dataset("synthetic", seed=7), make_synthetic(seed=7)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.val.labels, b.val.labels)
    assert a.content_hash == b.content_hash
    c = make_synthetic(seed=8)
    assert c.content_hash != a.content_hash
    assert not np.array_equal(c.train.images, a.train.images)
    # val is a different stream from train, not a copy of its first images
    assert not np.array_equal(a.val.images, a.train.images[:1000])


def test_images_use_the_full_range_and_vary(small):
    imgs = small.train.images
    assert imgs.min() == 0 and imgs.max() == 255
    per_image_std = imgs.reshape(len(imgs), -1).std(1)
    assert (per_image_std > 5).all(), "every image has visible content"
    assert len({imgs[i].tobytes() for i in range(200)}) == 200


def _centroid_accuracy(train_features, train_labels, val_features, val_labels):
    mu = np.stack([train_features[train_labels == c].mean(0) for c in range(10)])
    sd = train_features.std(0) + 1e-6
    pred = np.argmin((((val_features[:, None] - mu[None]) / sd) ** 2).sum(-1), 1)
    return (pred == val_labels).mean()


def test_class_is_not_given_away_by_colour(small):
    colour = lambda s: s.images.reshape(len(s), -1, 3).mean(1)  # noqa: E731
    acc = _centroid_accuracy(colour(small.train), small.train.labels, colour(small.val), small.val.labels)
    assert acc < 0.2, f"mean colour predicts the class ({acc:.0%}); colours must be random per image"


def test_class_is_learnable_from_shape(small):
    """A linear model on translation-invariant spectra is far above chance (a CNN reaches ~85-95%)."""

    def spectra(split):
        grey = split.images.astype(np.float32).mean(-1)
        grey -= grey.mean((1, 2), keepdims=True)
        return np.log1p(np.abs(np.fft.rfft2(grey))).reshape(len(split), -1)

    x_tr, x_va = spectra(small.train), spectra(small.val)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    a, b = (x_tr - mu) / sd, (x_va - mu) / sd
    w = np.linalg.solve(a.T @ a + 10 * np.eye(a.shape[1]), a.T @ np.eye(10)[small.train.labels])
    acc = ((b @ w).argmax(1) == small.val.labels).mean()
    assert acc > 0.4, f"shape features reach only {acc:.0%}"


def test_image_size_option_draws_the_same_scene_larger():
    ds = open_dataset(None, image_size=(48, 40))
    assert ds.image_size == (48, 40) and ds.train.images.shape == (5000, 48, 40, 3)
    assert ds.content_hash != open_dataset(None).content_hash


def test_reading_data_does_not_import_torch():
    code = "import sys, trainer.data; trainer.data.open_dataset(None); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
