"""Format detection and readers: CIFAR-10 binary/python (folders and archives), ImageFolder, inference images.

Every dataset is written by the test as tiny real files, then read back and
compared pixel for pixel against the arrays it was written from.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgesmith.errors import DataError
from trainer.data import CIFAR10_CLASSES, ArraySplit, FileSplit, load_images_for_inference, open_dataset

NAMES = ("a0", "b1", "c2", "d3", "e4", "f5", "g6", "h7", "i8", "j9")  # not CIFAR's, so we see they were read


def cifar_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random CHW uint8 images [n, 3, 32, 32] and labels covering all 10 classes."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def binary_records(chw: np.ndarray, labels: np.ndarray) -> bytes:
    return np.concatenate([labels[:, None], chw.reshape(len(labels), -1)], axis=1).tobytes()


def write_binary(folder: Path, test: bool = True, meta: bool = True) -> dict:
    """Two 20-record train batches and a 10-record test batch; returns the CHW arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = [cifar_arrays(20, 1), cifar_arrays(20, 2)]
    for i, (x, y) in enumerate(parts, start=1):
        (folder / f"data_batch_{i}.bin").write_bytes(binary_records(x, y))
    if test:
        (folder / "test_batch.bin").write_bytes(binary_records(*cifar_arrays(10, 3)))
    if meta:
        (folder / "batches.meta.txt").write_text("\n".join(NAMES) + "\n\n")
    return {"train": (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])),
            "test": cifar_arrays(10, 3)}


def write_python(folder: Path, protocol: int = 2) -> dict:
    """The python version: pickled dicts with bytes keys, as in the official files."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = [cifar_arrays(20, 1), cifar_arrays(20, 2)]
    batches = {"data_batch_1": parts[0], "data_batch_2": parts[1], "test_batch": cifar_arrays(10, 3)}
    for name, (x, y) in batches.items():
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in y],
                 b"data": x.reshape(len(y), -1), b"filenames": [f"{i}.png".encode() for i in range(len(y))]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}, f, protocol=protocol)
    return {"train": (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])),
            "test": batches["test_batch"]}


def make_tar(folder: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return archive


def assert_matches(split: ArraySplit, chw: np.ndarray, labels: np.ndarray) -> None:
    assert split.images.dtype == np.uint8 and split.images.flags.c_contiguous
    np.testing.assert_array_equal(split.images, chw.transpose(0, 2, 3, 1))
    assert split.labels.dtype == np.int64
    np.testing.assert_array_equal(split.labels, labels)


# ---- CIFAR-10 binary ------------------------------------------------------------------------


def test_binary_folder_round_trips_pixels_labels_and_class_names(tmp_path):
    written = write_binary(tmp_path / "cifar")
    ds = open_dataset(tmp_path / "cifar", cache_dir=tmp_path / "cache")
    assert ds.format == "cifar10-binary" and ds.classes == NAMES and ds.image_size == (32, 32)
    assert not ds.val_is_carved and ds.source == str(tmp_path / "cifar") and len(ds.content_hash) == 64
    assert_matches(ds.train, *written["train"])
    assert_matches(ds.val, *written["test"])
    # The transposition spelled out: byte 1 is R of pixel (0,0), byte 2 is R of (0,1), byte 1025 is G of (0,0).
    raw = (tmp_path / "cifar" / "data_batch_1.bin").read_bytes()
    assert ds.train.images[0, 0, 0, 0] == raw[1]
    assert ds.train.images[0, 0, 1, 0] == raw[2]
    assert ds.train.images[0, 0, 0, 1] == raw[1 + 1024]
    assert ds.train.images[0, 1, 0, 2] == raw[1 + 2048 + 32]


def test_binary_in_subfolder_without_meta_or_test_batch_carves_val(tmp_path):
    written = write_binary(tmp_path / "root" / "cifar-10-batches-bin", test=False, meta=False)
    ds = open_dataset(tmp_path / "root", val_fraction=0.25, seed=3, cache_dir=tmp_path / "cache")
    assert ds.classes == CIFAR10_CLASSES and ds.val_is_carved
    assert len(ds.val) == 10 and len(ds.train) == 30  # 4 per class, a quarter of each goes to val
    assert np.bincount(ds.val.labels, minlength=10).tolist() == [1] * 10
    # train and val partition the 40 written images
    both = np.concatenate([ds.train.images, ds.val.images]).reshape(40, -1)
    expected = written["train"][0].transpose(0, 2, 3, 1).reshape(40, -1)
    assert sorted(map(bytes, both)) == sorted(map(bytes, expected))


def test_truncated_binary_file_names_file_size_and_incomplete_record(tmp_path):
    write_binary(tmp_path / "c")
    bad = tmp_path / "c" / "data_batch_2.bin"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path / "c", cache_dir=tmp_path / "cache")
    msg = str(err.value)
    size = 20 * 3073 - 100
    assert str(bad) in msg and f"{size} bytes" in msg and "3073" in msg
    assert "record 19" in msg and f"offset {19 * 3073}" in msg


def test_label_byte_out_of_range_names_file_and_record(tmp_path):
    write_binary(tmp_path / "c")
    f = tmp_path / "c" / "test_batch.bin"
    data = bytearray(f.read_bytes())
    data[7 * 3073] = 10
    f.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"test_batch\.bin: record 7 has label 10"):
        open_dataset(tmp_path / "c", cache_dir=tmp_path / "cache")


# ---- CIFAR-10 python ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python_folder_round_trips(tmp_path, protocol):
    written = write_python(tmp_path / "r" / "cifar-10-batches-py", protocol=protocol)
    ds = open_dataset(tmp_path / "r", cache_dir=tmp_path / "cache")
    assert ds.format == "cifar10-python" and ds.classes == NAMES and not ds.val_is_carved
    assert_matches(ds.train, *written["train"])
    assert_matches(ds.val, *written["test"])


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    folder = tmp_path / "py"
    write_python(folder)
    sentinel = tmp_path / "SENTINEL"
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": _Exploit(sentinel), b"labels": []}, f)
    with pytest.raises(DataError) as err:
        open_dataset(folder, cache_dir=tmp_path / "cache")
    assert not sentinel.exists(), "the pickle's payload ran"
    msg = str(err.value)
    assert "data_batch_2" in msg and f"{os.system.__module__}.system" in msg and "refusing" in msg


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("subprocess", "Popen")])
def test_restricted_unpickler_refuses_other_globals(tmp_path, module, name):
    folder = tmp_path / "py"
    write_python(folder)
    # protocol-0 pickle of the call module.name('...'): GLOBAL, argument tuple, REDUCE
    payload = f"c{module}\n{name}\n(S'1+1'\ntR.".encode()
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(DataError, match=f"test_batch.*{module}.{name}"):
        open_dataset(folder, cache_dir=tmp_path / "cache")


def test_python_batch_with_wrong_keys_or_shape_names_the_file(tmp_path):
    folder = tmp_path / "py"
    write_python(folder)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0] * 4}, f)
    with pytest.raises(DataError, match=r"data_batch_1 has keys .*CIFAR-100"):
        open_dataset(folder, cache_dir=tmp_path / "cache")
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4}, f)
    expected = r"data_batch_1: b'data' must be a uint8 array \[N, 3072\], got uint8 \(4, 1024\)"
    with pytest.raises(DataError, match=expected):
        open_dataset(folder, cache_dir=tmp_path / "cache")


# ---- archives -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["bin", "py"])
def test_archive_reads_like_the_folder(tmp_path, version):
    writer = write_binary if version == "bin" else write_python
    written = writer(tmp_path / "src")
    archive = make_tar(tmp_path / "src", tmp_path / "any-name.tgz", f"cifar-10-batches-{version}")
    ds = open_dataset(archive, cache_dir=tmp_path / "cache")
    assert ds.format == ("cifar10-binary" if version == "bin" else "cifar10-python") and ds.classes == NAMES
    assert_matches(ds.train, *written["train"])
    assert_matches(ds.val, *written["test"])
    # The official archive name inside a folder is found too.
    official = tmp_path / "dl" / ("cifar-10-binary.tar.gz" if version == "bin" else "cifar-10-python.tar.gz")
    official.parent.mkdir()
    official.write_bytes(archive.read_bytes())
    assert_matches(open_dataset(tmp_path / "dl", cache_dir=tmp_path / "cache").val, *written["test"])


@pytest.mark.parametrize("bad_name", ["../evil.txt", "/etc/evil.txt", "cifar/../../evil.txt"])
def test_archive_with_unsafe_member_path_is_refused(tmp_path, bad_name):
    write_binary(tmp_path / "src")
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src", arcname="cifar-10-batches-bin")
        info = tarfile.TarInfo(bad_name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DataError, match="unsafe member path"):
        open_dataset(archive, cache_dir=tmp_path / "cache")


def test_archive_without_cifar_and_truncated_archive_are_clear_errors(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("hi")
    archive = make_tar(tmp_path / "src", tmp_path / "other.tar.gz", "stuff")
    with pytest.raises(DataError, match=r"holds no CIFAR-10 batches.*stuff/readme\.txt"):
        open_dataset(archive, cache_dir=tmp_path / "cache")
    write_binary(tmp_path / "c")
    good = make_tar(tmp_path / "c", tmp_path / "c.tar.gz", "cifar-10-batches-bin")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.tar\.gz.*truncated"):
        open_dataset(cut, cache_dir=tmp_path / "cache")


# ---- ImageFolder ----------------------------------------------------------------------------


def write_folder(
    root: Path, counts: dict[str, int], size=(8, 12), suffix=".png", seed=0
) -> dict[str, list[np.ndarray]]:
    """Write ``counts[class]`` random RGB images per class under ``root``; returns them by class."""
    rng = np.random.default_rng(seed)
    out = {}
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        out[cls] = []
        for i in range(n):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / cls / f"img{i:03d}{suffix}")
            out[cls].append(img)
    return out


@pytest.mark.parametrize("val_name", ["val", "test"])
def test_imagefolder_with_val_split_round_trips(tmp_path, val_name):
    train = write_folder(tmp_path / "d" / "train", {"dog": 3, "cat": 2}, seed=1)
    val = write_folder(tmp_path / "d" / val_name, {"dog": 1, "cat": 2}, seed=2)
    ds = open_dataset(tmp_path / "d", cache_dir=tmp_path / "cache")
    assert ds.format == "imagefolder" and ds.classes == ("cat", "dog") and not ds.val_is_carved
    assert isinstance(ds.train, ArraySplit) and ds.image_size == (8, 12)
    # Order: class by class in sorted class order, files sorted by name.
    np.testing.assert_array_equal(ds.train.images, np.stack(train["cat"] + train["dog"]))
    np.testing.assert_array_equal(ds.train.labels, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds.val.images, np.stack(val["cat"] + val["dog"]))
    np.testing.assert_array_equal(ds.val.labels, [0, 0, 1])


def test_imagefolder_without_val_carves_a_seeded_stratified_split(tmp_path):
    write_folder(tmp_path / "d", {"a": 20, "b": 10, "c": 30}, size=(4, 4))
    opened = [open_dataset(tmp_path / "d", val_fraction=0.2, seed=s, cache_dir=tmp_path / "cache") for s in (5, 5, 6)]
    ds = opened[0]
    assert ds.val_is_carved and ds.classes == ("a", "b", "c")
    assert np.bincount(ds.val.labels).tolist() == [4, 2, 6]  # 20% of every class
    assert len(ds.train) + len(ds.val) == 60
    key = lambda split: sorted(map(bytes, split.images.reshape(len(split), -1)))  # noqa: E731
    assert not set(key(ds.train)) & set(key(ds.val))
    np.testing.assert_array_equal(ds.val.images, opened[1].val.images)  # same seed, same split
    assert key(opened[2].val) != key(ds.val)  # another seed, another split


def test_imagefolder_mixed_sizes_use_most_common_size_with_bilinear_resize(tmp_path):
    imgs = write_folder(tmp_path / "d" / "train", {"x": 3, "y": 2}, size=(10, 10))
    odd = np.random.default_rng(9).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(odd).convert("L").save(tmp_path / "d" / "train" / "y" / "zz_gray.jpg")
    write_folder(tmp_path / "d" / "val", {"x": 1, "y": 1}, size=(10, 10))
    ds = open_dataset(tmp_path / "d", cache_dir=tmp_path / "cache")
    assert ds.image_size == (10, 10) and ds.train.images.shape == (6, 10, 10, 3)
    np.testing.assert_array_equal(ds.train.images[0], imgs["x"][0])  # right size: untouched
    with Image.open(tmp_path / "d" / "train" / "y" / "zz_gray.jpg") as im:
        expected = np.asarray(im.convert("RGB").resize((10, 10), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(ds.train.images[5], expected)
    resized = open_dataset(tmp_path / "d", image_size=(6, 5), cache_dir=tmp_path / "cache")
    assert resized.image_size == (6, 5) and resized.train.images.shape == (6, 6, 5, 3)


def test_imagefolder_with_large_images_streams_file_paths(tmp_path):
    write_folder(tmp_path / "d", {"p": 4, "q": 4}, size=(65, 40), suffix=".jpg")
    ds = open_dataset(tmp_path / "d", val_fraction=0.25, cache_dir=tmp_path / "cache")
    assert isinstance(ds.train, FileSplit) and isinstance(ds.val, FileSplit) and ds.image_size == (224, 224)
    assert ds.val_is_carved and len(ds.train) == 6 and np.bincount(ds.val.labels).tolist() == [1, 1]
    for path, label in zip(ds.train.paths + ds.val.paths, np.concatenate([ds.train.labels, ds.val.labels])):
        assert Path(path).is_absolute() and Path(path).parent.name == ds.classes[label]
    assert open_dataset(tmp_path / "d", image_size=(96, 64)).image_size == (96, 64)


def test_imagefolder_errors_name_the_problem(tmp_path):
    write_folder(tmp_path / "m" / "train", {"a": 1, "b": 1})
    write_folder(tmp_path / "m" / "val", {"a": 1, "c": 1})
    with pytest.raises(DataError, match=r"missing \['b'\], extra \['c'\]"):
        open_dataset(tmp_path / "m")
    write_folder(tmp_path / "e", {"a": 2})
    (tmp_path / "e" / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images.*\['empty'\]"):
        open_dataset(tmp_path / "e")
    write_folder(tmp_path / "c", {"a": 2, "b": 2})
    (tmp_path / "c" / "b" / "broken.png").write_bytes(b"not really a png")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        open_dataset(tmp_path / "c")
    write_folder(tmp_path / "v" / "val", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="no train/ split"):
        open_dataset(tmp_path / "v")


def test_unknown_layout_says_what_was_found_and_lists_supported_layouts(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path / "junk")
    msg = str(err.value)
    assert "notes.txt" in msg and "CIFAR-10 binary" in msg and "ImageFolder" in msg and "download=True" in msg
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")


@pytest.mark.parametrize("kwargs,match", [
    ({"val_fraction": 1.0}, "val_fraction"), ({"val_fraction": 0}, "val_fraction"),
    ({"image_size": (32,)}, "image_size"), ({"image_size": (0, 8)}, "image_size"), ({"seed": 1.5}, "seed"),
])
def test_bad_options_are_data_errors(kwargs, match):
    with pytest.raises(DataError, match=match):
        open_dataset("synthetic", **kwargs)


# ---- inference images -----------------------------------------------------------------------


def test_load_images_for_inference_file_and_folder(tmp_path):
    imgs = write_folder(tmp_path, {"f": 2}, size=(16, 16))
    Image.fromarray(imgs["f"][0]).convert("L").save(tmp_path / "f" / "a_gray.png")
    (tmp_path / "f" / "notes.txt").write_text("ignored")
    one = load_images_for_inference(tmp_path / "f" / "img001.png", (16, 16))
    np.testing.assert_array_equal(one, imgs["f"][1][None])
    many = load_images_for_inference(tmp_path / "f", (8, 4))
    assert many.shape == (3, 8, 4, 3) and many.dtype == np.uint8  # sorted: a_gray, img000, img001
    assert (many[0, ..., 0] == many[0, ..., 1]).all()  # grey converted to RGB
    expected = np.asarray(Image.fromarray(imgs["f"][0]).resize((4, 8), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(many[1], expected)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_images_for_inference(tmp_path / "empty", (8, 8))


def test_carving_needs_two_images_in_some_class(tmp_path):
    write_folder(tmp_path / "one", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="cannot carve a validation split"):
        open_dataset(tmp_path / "one")


@pytest.mark.parametrize("fmt,mode,kw", [("PNG", "RGB", {}), ("PNG", "P", {}), ("BMP", "RGB", {}), ("BMP", "L", {}),
                                         ("JPEG", "RGB", {}), ("JPEG", "L", {"progressive": True}),
                                         ("JPEG", "RGB", {"exif": b"Exif\x00\x00" + b"\x00" * 64})])
def test_header_size_matches_pil(fmt, mode, kw):
    from trainer.data.imagefolder import probe_size
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    assert probe_size(buf.getvalue(), "x") == (37, 53)
