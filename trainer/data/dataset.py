"""``open_dataset``: detect the format at a path, then read it through the uint8 cache.

Detection order for a folder: CIFAR-10 binary files, CIFAR-10 python files
(each directly or in ``cifar-10-batches-{bin,py}/``), a CIFAR-10 archive by
its official name, then an ImageFolder. A path ending in .tar.gz/.tgz is a
CIFAR-10 archive. Decoded array datasets are cached by content hash, so only
the first open of a given source decodes anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from edgesmith.errors import DataError

from . import cache, cifar, imagefolder
from .archive import is_archive_name, read_members
from .download import download_cifar10
from .split import check_val_fraction, stratified_carve
from .synthetic import DEFAULT_SIZE, make_synthetic
from .types import ArraySplit, Dataset, FileSplit

CIFAR_ARCHIVE_NAMES = ("cifar-10-binary.tar.gz", "cifar-10-python.tar.gz")
CIFAR_SUBDIRS = ("", "cifar-10-batches-bin", "cifar-10-batches-py")
SUPPORTED_LAYOUTS = """supported layouts:
  - CIFAR-10 binary: data_batch_1.bin..data_batch_5.bin + test_batch.bin (+ batches.meta.txt), directly in the
    folder or in cifar-10-batches-bin/, or the archive cifar-10-binary.tar.gz
  - CIFAR-10 python: data_batch_1..data_batch_5 + test_batch (+ batches.meta), directly in the folder or in
    cifar-10-batches-py/, or the archive cifar-10-python.tar.gz
  - ImageFolder: <root>/train/<class>/*.jpg|jpeg|png|bmp with an optional <root>/val/ or <root>/test/ of the
    same classes, or <root>/<class>/*.jpg (a validation split is then carved from train)
  - 'synthetic' (or no path): the built-in synthetic 10-class set"""


def open_dataset(path: str | os.PathLike | None, *, val_fraction: float = 0.1, seed: int = 0,
                 download: bool = False, cache_dir: str | os.PathLike | None = None,
                 image_size: tuple[int, int] | None = None) -> Dataset:
    """Open the dataset at ``path`` (see :data:`SUPPORTED_LAYOUTS`); ``None`` or 'synthetic' gives the synthetic set.

    ``val_fraction`` and ``seed`` shape the stratified validation carve-out used
    when the dataset has no test/val split of its own. ``download=True`` fetches
    CIFAR-10 into ``path`` when nothing is found there. ``image_size`` (H, W)
    resizes array datasets and sets the size large images are streamed at
    (default: the most common size for small images, 224x224 for large ones).
    Decoded arrays are cached under ``cache_dir`` (default ``$EDGESMITH_CACHE``
    or ``~/.cache/edgesmith/datasets``).
    """
    val_fraction = check_val_fraction(val_fraction)
    size = imagefolder.check_image_size(image_size) if image_size is not None else None
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise DataError(f"seed must be an integer, got {seed!r}")
    if path is None or (isinstance(path, str) and path == "synthetic"):
        return make_synthetic(seed=int(seed), image_size=size or DEFAULT_SIZE)

    root = Path(path).expanduser()
    found = _detect(root)
    if found is None and download:
        download_cifar10(root)
        found = _detect(root)
    if found is None:
        raise DataError(_describe(root, download))

    store = Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()
    ctx = _Context(os.fspath(path), store, val_fraction, int(seed), size)
    kind, where = found
    if kind == "cifar-dir":
        return _open_cifar_dir(root, where, ctx)
    if kind == "cifar-archive":
        return _open_cifar_archive(where, ctx)
    return _open_imagefolder(where, ctx)


@dataclass(frozen=True)
class _Context:
    """What every reader needs besides the source: the user's path, the cache and the options."""

    source: str
    cache_dir: Path
    val_fraction: float
    seed: int
    image_size: tuple[int, int] | None

    def options(self, carves: bool = True) -> dict:
        """The options that change the decoded result, for the cache key.

        ``val_fraction`` and ``seed`` only matter when val is carved, so a
        dataset with its own test split is not decoded again when they change.
        """
        opts = {"image_size": list(self.image_size) if self.image_size else None}
        if carves:
            opts.update(val_fraction=self.val_fraction, seed=self.seed)
        return opts


# ---- detection --------------------------------------------------------------------------------


def _detect(root: Path):
    """(kind, detail) for what is at ``root``, or None when nothing recognisable is there."""
    if root.is_file():
        return ("cifar-archive", root) if is_archive_name(root) else None
    if not root.is_dir():
        return None
    names = []
    for sub in CIFAR_SUBDIRS:
        folder = root / sub
        if folder.is_dir():
            names += [PurePosixPath(sub, e.name).as_posix() for e in os.scandir(folder)
                      if e.is_file() and cifar.is_cifar_file_name(e.name)]
    layout = cifar.find_layout(names)
    if layout is not None:
        return "cifar-dir", layout
    for name in CIFAR_ARCHIVE_NAMES:
        if (root / name).is_file():
            return "cifar-archive", root / name
    folder = imagefolder.find_layout(root)
    return ("imagefolder", folder) if folder is not None else None


def _describe(root: Path, download: bool) -> str:
    hint = "" if download else "\nTo fetch CIFAR-10 into this folder, pass download=True."
    if not root.exists():
        return f"dataset path {root} does not exist; {SUPPORTED_LAYOUTS}{hint}"
    if root.is_file():
        return f"dataset path {root} is a file but not a .tar.gz/.tgz archive; {SUPPORTED_LAYOUTS}"
    entries = sorted(os.listdir(root))
    dirs = [e + "/" for e in entries if (root / e).is_dir()]
    files = [e for e in entries if not (root / e).is_dir()]
    shown = ", ".join((dirs + files)[:10]) + (", ..." if len(entries) > 10 else "")
    return (f"no dataset found in {root}: it holds {len(files)} file(s) and {len(dirs)} folder(s) "
            f"({shown or 'empty'}); {SUPPORTED_LAYOUTS}{hint}")


# ---- CIFAR-10 -------------------------------------------------------------------------------


def _open_cifar_dir(root: Path, layout: cifar.CifarLayout, ctx: _Context) -> Dataset:
    files = {}
    for name in layout.files:
        try:
            files[name] = (root / name).read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read CIFAR-10 file {root / name}: {exc.strerror or exc}") from None
    # Hash by base name, so the same files hash alike directly in root or in cifar-10-batches-*/.
    key = cache.content_hash(layout.format, [(PurePosixPath(n).name, d) for n, d in files.items()],
                             ctx.options(carves=layout.test is None))
    hit = cache.load(ctx.cache_dir, key, ctx.source)
    if hit is not None:
        return hit
    return _finish_cifar(layout, files, root, key, ctx)


def _open_cifar_archive(archive: Path, ctx: _Context) -> Dataset:
    try:
        data = archive.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read archive {archive}: {exc.strerror or exc}") from None
    # The archive's bytes are the source; its file name is not, so a renamed copy still hits the cache.
    # Whether it has a test batch is unknown until it is decompressed, so the carve options always count.
    key = cache.content_hash("cifar10-archive", [("", data)], ctx.options())
    hit = cache.load(ctx.cache_dir, key, ctx.source)
    if hit is not None:
        return hit
    members, all_names = read_members(data, str(archive), cifar.is_cifar_file_name)
    layout = cifar.find_layout(list(members))
    if layout is None:
        shown = ", ".join(all_names[:8]) + (", ..." if len(all_names) > 8 else "")
        raise DataError(
            f"archive {archive} holds no CIFAR-10 batches (data_batch_N.bin or data_batch_N); it contains "
            f"{len(all_names)} file(s): {shown or 'none'}. Pass the official cifar-10-binary.tar.gz or "
            "cifar-10-python.tar.gz"
        )
    return _finish_cifar(layout, members, archive, key, ctx)


def _finish_cifar(layout: cifar.CifarLayout, files: dict[str, bytes], where: Path, key: str, ctx: _Context) -> Dataset:
    classes, train, test = cifar.decode_layout(layout, files, where)
    size = ctx.image_size or cifar.IMAGE_SIZE
    train_split = ArraySplit(imagefolder.resize_images(train[0], size), train[1])
    if test is not None:
        val_split, carved = ArraySplit(imagefolder.resize_images(test[0], size), test[1]), False
    else:
        (train_split, val_split), carved = _carve_arrays(train_split, len(classes), ctx), True
    return _store(Dataset(layout.format, tuple(classes), train_split, val_split, size, ctx.source, key, carved), ctx)


# ---- ImageFolder ------------------------------------------------------------------------------


def _open_imagefolder(layout: imagefolder.FolderLayout, ctx: _Context) -> Dataset:
    entries = layout.train + (layout.val or ())
    relpaths = [rel for rel, _ in entries]
    small = imagefolder.read_small_images(layout.root, relpaths)
    if small is None:
        return _imagefolder_files(layout, ctx)
    blobs, sizes = small
    key = cache.content_hash("imagefolder", zip(relpaths, blobs), ctx.options(carves=layout.val is None))
    hit = cache.load(ctx.cache_dir, key, ctx.source)
    if hit is not None:
        return hit
    size = ctx.image_size or imagefolder.most_common_size(sizes)
    images = imagefolder.decode_images(blobs, [str(layout.root / r) for r in relpaths], size)
    labels = np.array([label for _, label in entries], dtype=np.int64)
    n_train = len(layout.train)
    train = ArraySplit(np.ascontiguousarray(images[:n_train]), labels[:n_train])
    if layout.val is not None:
        val, carved = ArraySplit(np.ascontiguousarray(images[n_train:]), labels[n_train:]), False
    else:
        (train, val), carved = _carve_arrays(train, len(layout.classes), ctx), True
    return _store(Dataset("imagefolder", layout.classes, train, val, size, ctx.source, key, carved), ctx)


def _imagefolder_files(layout: imagefolder.FolderLayout, ctx: _Context) -> Dataset:
    """Large images: paths only. Hashing every byte of an ImageNet-size tree on each open would take
    minutes, so the hash covers each file's relative path, size and modification time instead."""
    hasher = cache.ContentHasher("imagefolder-files")
    entries = layout.train + (layout.val or ())
    for rel, _ in sorted(entries):
        try:
            st = os.stat(layout.root / rel)
        except OSError as exc:
            raise DataError(f"cannot read image {layout.root / rel}: {exc.strerror or exc}") from None
        hasher.add_bytes(rel, f"{st.st_size}:{st.st_mtime_ns}".encode())
    key = hasher.hexdigest(ctx.options(carves=layout.val is None))

    root = os.path.abspath(layout.root)

    def split(items) -> FileSplit:
        return FileSplit(tuple(os.path.join(root, rel) for rel, _ in items),
                         np.array([label for _, label in items], dtype=np.int64))

    train = split(layout.train)
    if layout.val is not None:
        val, carved = split(layout.val), False
    else:
        train_idx, val_idx = stratified_carve(train.labels, ctx.val_fraction, ctx.seed, len(layout.classes))
        paths = np.array(train.paths, dtype=object)
        val = FileSplit(tuple(paths[val_idx]), train.labels[val_idx])
        train, carved = FileSplit(tuple(paths[train_idx]), train.labels[train_idx]), True
    size = ctx.image_size or imagefolder.DEFAULT_LARGE_SIZE
    return Dataset("imagefolder", layout.classes, train, val, size, ctx.source, key, carved)


# ---- shared ----------------------------------------------------------------------------------


def _carve_arrays(train: ArraySplit, num_classes: int, ctx: _Context) -> tuple[ArraySplit, ArraySplit]:
    train_idx, val_idx = stratified_carve(train.labels, ctx.val_fraction, ctx.seed, num_classes)
    return (ArraySplit(train.images[train_idx], train.labels[train_idx]),
            ArraySplit(train.images[val_idx], train.labels[val_idx]))


def _store(dataset: Dataset, ctx: _Context) -> Dataset:
    cache.store(ctx.cache_dir, dataset)
    return dataset
