"""The dataset value types every reader returns.

``ArraySplit`` holds a fully decoded split (CIFAR-scale images that fit in
memory); ``FileSplit`` holds paths that DataLoader workers decode later. The
dataclasses compare by identity (``eq=False``): they hold numpy arrays, whose
``==`` is element-wise and cannot be used as a truth value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMATS = ("cifar10-binary", "cifar10-python", "imagefolder", "synthetic")


@dataclass(frozen=True, eq=False)
class ArraySplit:
    """A decoded split: ``images`` uint8 [N, H, W, 3] RGB (C-contiguous), ``labels`` int64 [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        # Readers build these; a mismatch here is a reader bug, not bad user input.
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] != 3:
            raise ValueError(f"ArraySplit.images must be uint8 [N,H,W,3], got {self.images.dtype} {self.images.shape}")
        if not self.images.flags.c_contiguous:
            raise ValueError("ArraySplit.images must be C-contiguous")
        if self.labels.dtype != np.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ArraySplit.labels must be int64 [{self.images.shape[0]}], got {self.labels.dtype} {self.labels.shape}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class FileSplit:
    """A split of image files decoded later: ``paths`` (absolute) and ``labels`` int64 [N]."""

    paths: tuple[str, ...]
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.labels.dtype != np.int64 or self.labels.shape != (len(self.paths),):
            raise ValueError(
                f"FileSplit.labels must be int64 [{len(self.paths)}], got {self.labels.dtype} {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True, eq=False)
class Dataset:
    """An opened dataset: class names, train and val splits and where they came from.

    ``val`` is the dataset's own test/val split, or a seeded stratified carve-out
    of train when ``val_is_carved``. ``image_size`` is (H, W) of the arrays, or
    for a ``FileSplit`` the size images are resized to. ``content_hash`` is the
    sha256 the uint8 cache is keyed by (source content plus the options that
    change the result).
    """

    format: str
    classes: tuple[str, ...]
    train: ArraySplit | FileSplit
    val: ArraySplit | FileSplit
    image_size: tuple[int, int]
    source: str
    content_hash: str
    val_is_carved: bool

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown dataset format {self.format!r}; expected one of {FORMATS}")
