"""The uint8 dataset cache: decode once, reload as plain ``.npy`` files.

An entry lives in ``<cache_dir>/<content_hash>/`` and holds ``meta.json`` plus
four ``.npy`` arrays (no pickle anywhere). ``content_hash`` covers the bytes
and relative paths of every source file and the options that change the
decoded result, so a changed file or option can never reuse a stale entry.
Entries are written to a temporary folder and renamed into place, so a
crash leaves either a whole entry or none; an entry that fails any check on
load is deleted and rebuilt rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .types import ArraySplit, Dataset

CACHE_VERSION = 1  # bump when the decoded result of any reader changes
_ARRAYS = ("train_images", "train_labels", "val_images", "val_labels")


def default_cache_dir() -> Path:
    """``$EDGESMITH_CACHE`` when set, else ``~/.cache/edgesmith/datasets``."""
    env = os.environ.get("EDGESMITH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgesmith" / "datasets"


class ContentHasher:
    """sha256 over (relative path, length, bytes) of each file, then the options.

    Paths are length-prefixed so two different file sets can never produce the
    same byte stream. Callers add files in sorted relative-path order.
    """

    def __init__(self, kind: str) -> None:
        self._h = hashlib.sha256(f"edgesmith-dataset-cache/{CACHE_VERSION}/{kind}\0".encode())

    def add_bytes(self, relpath: str, data: bytes) -> None:
        self._add_header(relpath, len(data))
        self._h.update(data)

    def _add_header(self, relpath: str, size: int) -> None:
        name = relpath.encode("utf-8", "surrogateescape")
        self._h.update(len(name).to_bytes(8, "little") + name + size.to_bytes(8, "little"))

    def hexdigest(self, options: dict) -> str:
        """The digest after mixing in ``options`` (JSON, sorted keys)."""
        h = self._h.copy()
        h.update(b"\0options\0" + json.dumps(options, sort_keys=True).encode())
        return h.hexdigest()


def content_hash(kind: str, files: Iterable[tuple[str, bytes]], options: dict) -> str:
    """sha256 hex of ``files`` ((relative path, bytes), taken in sorted path order) plus ``options``."""
    hasher = ContentHasher(kind)
    for relpath, data in sorted(files, key=lambda item: item[0]):
        hasher.add_bytes(relpath, data)
    return hasher.hexdigest(options)


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest()


def load(cache_dir: Path, key: str, source: str) -> Dataset | None:
    """The cached dataset for ``key``, or None on a miss. A damaged entry is removed and None returned."""
    entry = Path(cache_dir) / key
    if not entry.is_dir():
        return None
    try:
        return _read_entry(entry, key, source)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"discarding damaged dataset cache entry {entry}: {exc}; it will be rebuilt", stacklevel=3)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def _read_entry(entry: Path, key: str, source: str) -> Dataset:
    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    if meta.get("cache_version") != CACHE_VERSION or meta.get("content_hash") != key:
        raise ValueError("meta.json is from another cache version or another source")
    if not isinstance(meta["classes"], list) or not all(isinstance(c, str) for c in meta["classes"]):
        raise ValueError("meta.json classes must be a list of names")
    if not isinstance(meta["val_is_carved"], bool):
        raise ValueError("meta.json val_is_carved must be true or false")
    classes = tuple(meta["classes"])
    h, w = (int(v) for v in meta["image_size"])
    arrays = {name: np.load(entry / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
    for name, arr in arrays.items():
        # Shapes can look right over flipped or stale bytes; the digest catches that.
        if _digest(arr) != meta["sha256"][name]:
            raise ValueError(f"{name}.npy does not match its sha256 in meta.json")
    splits = []
    for split in ("train", "val"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.shape[1:] != (h, w, 3) or images.shape[0] != meta[f"{split}_count"]:
            expected = f"{meta[f'{split}_count']}x{h}x{w}x3"
            raise ValueError(f"{split}_images.npy has {images.dtype} {images.shape}, meta.json says {expected}")
        if labels.dtype != np.int64 or labels.shape != (images.shape[0],):
            raise ValueError(f"{split}_labels.npy has {labels.dtype} {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"{split}_labels.npy has labels outside 0..{len(classes) - 1}")
        splits.append(ArraySplit(np.ascontiguousarray(images), labels))
    return Dataset(
        format=meta["format"], classes=classes, train=splits[0], val=splits[1], image_size=(h, w),
        source=source, content_hash=key, val_is_carved=meta["val_is_carved"],
    )


def store(cache_dir: Path, dataset: Dataset) -> None:
    """Write ``dataset`` (two ArraySplits) under its content hash, atomically.

    A cache that cannot be written (read-only disk, disk full) only warns:
    the dataset in memory is still good.
    """
    cache_dir = Path(cache_dir)
    final = cache_dir / dataset.content_hash
    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dataset.content_hash[:16]}-", dir=cache_dir))
        for split_name in ("train", "val"):
            split = getattr(dataset, split_name)
            np.save(tmp / f"{split_name}_images.npy", split.images, allow_pickle=False)
            np.save(tmp / f"{split_name}_labels.npy", split.labels, allow_pickle=False)
        meta = {
            "cache_version": CACHE_VERSION, "content_hash": dataset.content_hash, "format": dataset.format,
            "classes": list(dataset.classes), "image_size": list(dataset.image_size),
            "val_is_carved": dataset.val_is_carved, "source": dataset.source,
            "train_count": len(dataset.train), "val_count": len(dataset.val),
            "sha256": {f"{s}_{part}": _digest(getattr(getattr(dataset, s), part))
                       for s in ("train", "val") for part in ("images", "labels")},
        }
        # meta.json is written last: an entry without it is incomplete and will be rebuilt.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(tmp, final)  # fails when final exists and is not empty
        tmp = None
    except OSError as exc:
        if (final / "meta.json").is_file():
            return  # another process (say, another DDP rank) stored this entry first; theirs is as good
        warnings.warn(
            f"could not write dataset cache {final}: {exc}; the dataset will be decoded again next time", stacklevel=3
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
