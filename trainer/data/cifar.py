"""CIFAR-10 readers: the binary version (``*.bin``) and the python version (pickles).

Both are decoded from bytes already in memory, so the same code serves an
extracted folder and a ``.tar.gz`` read member by member. Python batches are
unpickled with :class:`RestrictedUnpickler`, which admits only the globals a
numpy array needs: a pickle can run any callable it names, and these files
come from users.
"""

from __future__ import annotations

import codecs
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from edgesmith.errors import DataError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
RECORD_BYTES = 3073  # 1 label byte + 3 * 32 * 32 pixel bytes, channel-major (CHW)
PIXEL_BYTES = 3072
IMAGE_SIZE = (32, 32)

_BINARY_TRAIN = re.compile(r"^data_batch_(\d+)\.bin$")
_PYTHON_TRAIN = re.compile(r"^data_batch_(\d+)$")
_FILES = {
    "cifar10-binary": (_BINARY_TRAIN, "test_batch.bin", "batches.meta.txt"),
    "cifar10-python": (_PYTHON_TRAIN, "test_batch", "batches.meta"),
}


def is_cifar_file_name(name: str) -> bool:
    """True when the base name of ``name`` is one of the CIFAR-10 batch or meta files."""
    base = PurePosixPath(name).name
    return any(train.match(base) or base in (test, meta) for train, test, meta in _FILES.values())


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR-10 version's files are, as relative paths in one folder."""

    format: str
    train: tuple[str, ...]  # data_batch_* in numeric order
    test: str | None
    meta: str | None

    @property
    def files(self) -> tuple[str, ...]:
        return self.train + tuple(f for f in (self.test, self.meta) if f is not None)


def find_layout(names: list[str]) -> CifarLayout | None:
    """Find CIFAR-10 files among relative paths ``names``; binary beats python, shallower beats deeper."""
    by_dir: dict[str, list[str]] = {}
    for name in names:
        by_dir.setdefault(str(PurePosixPath(name).parent), []).append(name)
    for fmt, (train_re, test_name, meta_name) in _FILES.items():
        for folder in sorted(by_dir, key=lambda d: (d.count("/"), d)):
            bases = {PurePosixPath(n).name: n for n in by_dir[folder]}
            train = sorted((int(m.group(1)), n) for b, n in bases.items() if (m := train_re.match(b)))
            if train:
                return CifarLayout(fmt, tuple(n for _, n in train), bases.get(test_name), bases.get(meta_name))
    return None


# ---- binary version -----------------------------------------------------------------------


def decode_binary_batch(data: bytes, name: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Decode 3073-byte records into (uint8 [N,32,32,3] HWC images, int64 [N] labels)."""
    size = len(data)
    if size == 0:
        raise DataError(f"CIFAR-10 file {name} is empty (0 bytes); re-download CIFAR-10")
    if size % RECORD_BYTES:
        n_full = size // RECORD_BYTES
        raise DataError(
            f"CIFAR-10 file {name} is truncated or corrupt: its size {size} bytes is not a multiple of the "
            f"{RECORD_BYTES}-byte record (1 label + {PIXEL_BYTES} pixels); record {n_full} at byte offset "
            f"{n_full * RECORD_BYTES} is incomplete ({size % RECORD_BYTES} of {RECORD_BYTES} bytes). "
            "Re-download CIFAR-10"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, name, num_classes)
    # Pixels are stored channel-major (all R, then G, then B); the toolkit works in NHWC.
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def parse_binary_meta(data: bytes, name: str) -> tuple[str, ...]:
    """Class names from ``batches.meta.txt``: one per line, blank lines ignored."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"CIFAR-10 class-name file {name} is not UTF-8 text; re-download CIFAR-10") from None
    return _check_classes([line.strip() for line in text.splitlines() if line.strip()], name)


# ---- python version -----------------------------------------------------------------------

# The globals a pickled uint8 ndarray needs, resolved from numpy itself so the
# same table works on numpy 1.x (numpy.core) and 2.x (numpy._core).
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1, np.uint8).__reduce_ex__(5)[0]
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles store bytes
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside :data:`SAFE_GLOBALS`."""

    def __init__(self, file: io.BytesIO, name: str) -> None:
        super().__init__(file, encoding="bytes")
        self._name = name

    def find_class(self, module: str, name: str) -> object:
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {self._name}: it references the global {module}.{name}, which a "
                "CIFAR-10 batch never needs (only numpy array reconstruction is allowed). The file may be "
                "malicious; re-download CIFAR-10 from its official source"
            ) from None


def unpickle_restricted(data: bytes, name: str) -> object:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; DataError naming ``name`` on any failure."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), name).load()
    except DataError:
        raise
    except Exception as exc:  # a corrupt pickle can raise nearly anything; all mean the same to the user
        raise DataError(
            f"cannot unpickle CIFAR-10 file {name}: {type(exc).__name__}: {exc}; the file is truncated or "
            "corrupt. Re-download CIFAR-10"
        ) from None


def _str_keys(obj: object, name: str) -> dict[str, object]:
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10 python file {name} holds a {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def decode_python_batch(data: bytes, name: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Decode a pickled batch dict (b'data' uint8 [N,3072], b'labels') into HWC images and labels."""
    batch = _str_keys(unpickle_restricted(data, name), name)
    if "data" not in batch or "labels" not in batch:
        hint = " (b'fine_labels' suggests CIFAR-100, which is not supported)" if "fine_labels" in batch else ""
        raise DataError(
            f"CIFAR-10 python file {name} has keys {sorted(batch)}, expected b'data' and b'labels'{hint}"
        )
    pixels = batch["data"]
    is_array = isinstance(pixels, np.ndarray)
    if not is_array or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != PIXEL_BYTES:
        got = f"{pixels.dtype} {pixels.shape}" if is_array else type(pixels).__name__
        raise DataError(f"CIFAR-10 python file {name}: b'data' must be a uint8 array [N, {PIXEL_BYTES}], got {got}")
    try:
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"CIFAR-10 python file {name}: b'labels' must be a list of integers") from None
    if labels.shape != (pixels.shape[0],):
        raise DataError(
            f"CIFAR-10 python file {name}: b'labels' has shape {labels.shape}, expected ({pixels.shape[0]},) "
            "to match b'data'"
        )
    _check_labels(labels, name, num_classes)
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def parse_python_meta(data: bytes, name: str) -> tuple[str, ...]:
    """Class names from the pickled ``batches.meta`` (b'label_names')."""
    meta = _str_keys(unpickle_restricted(data, name), name)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)):
        raise DataError(f"CIFAR-10 python file {name} has no b'label_names' list (keys: {sorted(meta)})")
    return _check_classes([n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names], name)


# ---- shared --------------------------------------------------------------------------------


def _check_labels(labels: np.ndarray, name: str, num_classes: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"CIFAR-10 file {name}: record {i} has label {int(labels[i])}, expected 0..{num_classes - 1} "
            f"({len(bad)} bad record(s) in all); the file is corrupt. Re-download CIFAR-10"
        )


def _check_classes(names: list[str], name: str) -> tuple[str, ...]:
    if len(names) != 10 or len(set(names)) != 10:
        raise DataError(
            f"CIFAR-10 class-name file {name} lists {len(names)} names {names[:12]}, expected 10 distinct names"
        )
    return tuple(names)


def decode_layout(
    layout: CifarLayout, files: dict[str, bytes], where: Path
) -> tuple[tuple[str, ...], tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Decode every file of ``layout`` from ``files``; errors name files as ``where/<relative path>``.

    Returns (classes, (train_images, train_labels), (test_images, test_labels) or None).
    """
    if layout.format == "cifar10-binary":
        decode, parse_meta = decode_binary_batch, parse_binary_meta
    else:
        decode, parse_meta = decode_python_batch, parse_python_meta
    classes = parse_meta(files[layout.meta], str(where / layout.meta)) if layout.meta else CIFAR10_CLASSES
    parts = [decode(files[n], str(where / n)) for n in layout.train]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = decode(files[layout.test], str(where / layout.test)) if layout.test else None
    return classes, train, test
