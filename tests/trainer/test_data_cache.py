"""The uint8 cache: a second open never decodes, keys follow content and options, damage is rebuilt."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data import cache, cifar, imagefolder, open_dataset


def write_cifar(folder: Path, seed: int = 0) -> Path:
    """One 20-record train batch (no test batch, so val is carved) in the binary format."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = (np.arange(20) % 10).astype(np.uint8)
    pixels = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
    (folder / "data_batch_1.bin").write_bytes(np.concatenate([labels[:, None], pixels], axis=1).tobytes())
    return folder


class Counter:
    """Wraps a decoder and counts calls; ``fail=True`` makes any call an error."""

    def __init__(self, fn, fail: bool = False) -> None:
        self.fn, self.fail, self.calls = fn, fail, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail:
            raise AssertionError("decoded although the cache should have been used")
        return self.fn(*args, **kwargs)


def entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir())


def assert_same(a, b) -> None:
    assert a.content_hash == b.content_hash and a.classes == b.classes and a.format == b.format
    assert a.val_is_carved == b.val_is_carved and a.image_size == b.image_size
    for split in ("train", "val"):
        np.testing.assert_array_equal(getattr(a, split).images, getattr(b, split).images)
        np.testing.assert_array_equal(getattr(a, split).labels, getattr(b, split).labels)


def test_second_open_of_cifar_uses_the_cache_without_decoding(tmp_path, monkeypatch):
    src, store = write_cifar(tmp_path / "c"), tmp_path / "cache"
    first = open_dataset(src, cache_dir=store)
    [entry] = entries(store)
    assert entry.name == first.content_hash
    assert sorted(p.name for p in entry.iterdir()) == [
        "meta.json", "train_images.npy", "train_labels.npy", "val_images.npy", "val_labels.npy"]
    for npy in entry.glob("*.npy"):
        np.load(npy, allow_pickle=False)  # plain arrays, no pickled objects
    assert json.loads((entry / "meta.json").read_text())["format"] == "cifar10-binary"

    monkeypatch.setattr(cifar, "decode_binary_batch", Counter(cifar.decode_binary_batch, fail=True))
    second = open_dataset(src, cache_dir=store)
    assert_same(first, second)
    assert second.train.images.flags.writeable and second.train.images.flags.c_contiguous


def test_second_open_of_imagefolder_uses_the_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "f" / cls / f"{i}.png")
    first = open_dataset(tmp_path / "f", val_fraction=0.34, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(imagefolder, "decode_image", Counter(imagefolder.decode_image, fail=True))
    assert_same(first, open_dataset(tmp_path / "f", val_fraction=0.34, cache_dir=tmp_path / "cache"))


def test_default_cache_dir_is_edgesmith_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESMITH_CACHE", str(tmp_path / "env-cache"))
    ds = open_dataset(write_cifar(tmp_path / "c"))
    assert (tmp_path / "env-cache" / ds.content_hash / "meta.json").is_file()


def test_key_follows_content_and_options_not_location(tmp_path, monkeypatch):
    store = tmp_path / "cache"
    counter = Counter(cifar.decode_binary_batch)
    monkeypatch.setattr(cifar, "decode_binary_batch", counter)
    base = open_dataset(write_cifar(tmp_path / "c"), cache_dir=store)
    # The same bytes in an official subfolder elsewhere: same key, no decode.
    moved = open_dataset(write_cifar(tmp_path / "d" / "cifar-10-batches-bin").parent, cache_dir=store)
    assert moved.content_hash == base.content_hash and counter.calls == 1
    # One changed pixel byte: new key, decoded again.
    f = tmp_path / "c" / "data_batch_1.bin"
    data = bytearray(f.read_bytes())
    data[5] ^= 1
    f.write_bytes(bytes(data))
    changed = open_dataset(tmp_path / "c", cache_dir=store)
    assert changed.content_hash != base.content_hash and counter.calls == 2
    # Options that change the result change the key.
    hashes = {open_dataset(tmp_path / "d", cache_dir=store, **kw).content_hash
              for kw in ({}, {"val_fraction": 0.2}, {"seed": 1}, {"image_size": (16, 16)})}
    assert len(hashes) == 4 and counter.calls == 5
    assert len(entries(store)) == 5


def _drop_file(entry: Path) -> None:
    (entry / "train_labels.npy").unlink()


def _garble_meta(entry: Path) -> None:
    (entry / "meta.json").write_text("{not json")


def _wrong_shape(entry: Path) -> None:
    np.save(entry / "val_images.npy", np.zeros((3, 8, 8, 3), np.uint8))


def _pickled_array(entry: Path) -> None:
    np.save(entry / "train_labels.npy", np.array([{"x": 1}] * 18, dtype=object), allow_pickle=True)


def _bad_label(entry: Path) -> None:
    labels = np.load(entry / "val_labels.npy")
    labels[0] = 99
    np.save(entry / "val_labels.npy", labels)


def _flipped_pixel(entry: Path) -> None:
    """Same header, same shape, one changed byte: only the stored digest can tell."""
    f = entry / "train_images.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))


def _other_key(entry: Path) -> None:
    meta = json.loads((entry / "meta.json").read_text())
    meta["content_hash"] = "0" * 64
    (entry / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [_drop_file, _garble_meta, _wrong_shape, _pickled_array, _bad_label, _flipped_pixel,
                                    _other_key])
def test_damaged_cache_entry_is_discarded_and_rebuilt(tmp_path, monkeypatch, damage):
    src, store = write_cifar(tmp_path / "c"), tmp_path / "cache"
    first = open_dataset(src, cache_dir=store)
    damage(store / first.content_hash)
    counter = Counter(cifar.decode_binary_batch)
    monkeypatch.setattr(cifar, "decode_binary_batch", counter)
    with pytest.warns(UserWarning, match="discarding damaged dataset cache entry"):
        rebuilt = open_dataset(src, cache_dir=store)
    assert counter.calls == 1
    assert_same(first, rebuilt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt entry is whole again
        assert_same(first, cache.load(store, first.content_hash, str(src)))


def test_failed_cache_write_leaves_no_entry_and_still_returns_data(tmp_path, monkeypatch):
    src, store = write_cifar(tmp_path / "c"), tmp_path / "cache"
    real_save = np.save

    def save_then_fail(path, arr, **kw):
        real_save(path, arr, **kw)
        if str(path).endswith("val_images.npy"):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.np, "save", save_then_fail)
    with pytest.warns(UserWarning, match="could not write dataset cache.*No space left"):
        ds = open_dataset(src, cache_dir=store)
    assert len(ds.train) + len(ds.val) == 20
    assert entries(store) == []  # neither a half-written entry nor its temp folder


def test_entry_with_missing_meta_is_not_trusted(tmp_path, monkeypatch):
    """A folder without meta.json (e.g. copied in by hand) is rebuilt."""
    src, store = write_cifar(tmp_path / "c"), tmp_path / "cache"
    first = open_dataset(src, cache_dir=store)
    entry = store / first.content_hash
    (entry / "meta.json").unlink()
    counter = Counter(cifar.decode_binary_batch)
    monkeypatch.setattr(cifar, "decode_binary_batch", counter)
    with pytest.warns(UserWarning):
        assert_same(first, open_dataset(src, cache_dir=store))
    assert counter.calls == 1 and (entry / "meta.json").is_file()
    shutil.rmtree(entry)
    assert_same(first, open_dataset(src, cache_dir=store))
    assert counter.calls == 2


def test_carve_options_do_not_matter_when_the_dataset_has_its_own_val(tmp_path, monkeypatch):
    src = write_cifar(tmp_path / "c")
    (src / "test_batch.bin").write_bytes((src / "data_batch_1.bin").read_bytes())
    first = open_dataset(src, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(cifar, "decode_binary_batch", Counter(cifar.decode_binary_batch, fail=True))
    again = open_dataset(src, val_fraction=0.3, seed=9, cache_dir=tmp_path / "cache")
    assert again.content_hash == first.content_hash and not again.val_is_carved
